"""Opposition and replacement: the answer at the terminal, the 5 € fee taken from the balance
with the rest pending until the next reload, the free defective card, the rights rule, and a
purchase racing a replacement."""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import subprocess
import sys

import asyncpg
import pytest

from ledger.audit import verify_audit
from ledger.cards import Conflict, Invalid, NotFound, find_card, oppose_card, replace_card
from ledger.clock import pin_clock
from ledger.demo_region import card_uid
from ledger.reload import reload_wallet
from ledger.rules import current_rules

from conftest import TEST_SCHOOL_YEAR, balance_of, paris, set_balance

ACTOR = "region_operator:alice"
ORDINARY = 5                       # beneficiary numbers of the demo region
NO_RIGHTS = 50
SEEDED_LOST, SEEDED_DAMAGED = 1, 3
COMMAND_TIMEOUT_S = 120


def dossier(number: int) -> str:
    return f"HDF{number:07d}"


def new_uid(n: int) -> bytes:
    return bytes([0x04, 0xEE]) + n.to_bytes(5, "big")


def luhn_ok(number: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(number)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


async def fees(conn, number: int) -> tuple[int, int]:
    """(REPLACEMENT_FEE transferred, pending fees still open) for a beneficiary."""
    taken = await conn.fetchval(
        "SELECT coalesce(sum(t.amount_cents), 0) FROM transfers t JOIN wallets w"
        " ON w.account_id = t.debit_account_id JOIN beneficiaries b ON b.id = w.beneficiary_id"
        " WHERE t.code = 'REPLACEMENT_FEE' AND b.dossier_number = $1", dossier(number))
    pending = await conn.fetchval(
        "SELECT coalesce(sum(f.amount_cents - f.recovered_cents), 0) FROM pending_fees f"
        " JOIN beneficiaries b ON b.id = f.beneficiary_id WHERE b.dossier_number = $1", dossier(number))
    return taken, pending


async def replace(conn, number: int, uid_n: int, reason: str | None = "LOST", **kw):
    card = await find_card(conn, dossier(number))
    return await replace_card(conn, card.id, new_uid(uid_n), actor=ACTOR, reason=reason, **kw)


@pytest.mark.parametrize("reason, rc", [("lost", "41"), ("stolen", "43"), ("damaged", "62"),
                                        ("defective", "62")])
async def test_opposition_gives_its_answer_at_the_terminal(client, conn, reason, rc):
    card = await find_card(conn, dossier(ORDINARY))
    assert (await client.purchase(card_uid(ORDINARY), 1_00)).rc == "00"
    opposed = await oppose_card(conn, card.id, reason, actor=ACTOR)
    assert opposed.status == reason.upper() and opposed.opposed_at is not None
    response = await client.purchase(card_uid(ORDINARY), 1_00)
    assert (response.rc, response.approved_cents) == (rc, 0)
    row = await conn.fetchrow("SELECT actor, action, subject, after FROM audit_log ORDER BY id DESC LIMIT 1")
    assert (row["actor"], row["action"], row["subject"]) == (ACTOR, "card.oppose", f"card:{card.id}")


async def test_an_opposition_is_irreversible_and_checked(conn):
    card = await find_card(conn, dossier(ORDINARY))
    await oppose_card(conn, card.id, "LOST", actor=ACTOR)
    with pytest.raises(Conflict, match="already opposed .LOST.: an opposition is irreversible"):
        await oppose_card(conn, card.id, "STOLEN", actor=ACTOR)
    with pytest.raises(asyncpg.IntegrityConstraintViolationError):
        await conn.execute("UPDATE cards SET status = 'ACTIVE', opposed_at = NULL WHERE id = $1", card.id)
    with pytest.raises(Invalid, match="a reason is one of"):
        await oppose_card(conn, card.id, "forgotten", actor=ACTOR)
    with pytest.raises(NotFound):
        await oppose_card(conn, 10**9, "LOST", actor=ACTOR)


async def test_fee_larger_than_the_balance_is_taken_then_recovered_from_the_next_reload(conn):
    assert (await current_rules(conn)).replacement_fee_cents == 5_00
    await set_balance(conn, card_uid(ORDINARY), 3_00)
    done = await replace(conn, ORDINARY, 1, "LOST")
    assert (done.fee_cents, done.fee_taken_cents, done.fee_pending_cents) == (5_00, 3_00, 2_00)
    assert await balance_of(conn, card_uid(ORDINARY)) == 0
    assert await fees(conn, ORDINARY) == (3_00, 2_00)

    reloaded = await reload_wallet(conn, dossier(ORDINARY), TEST_SCHOOL_YEAR, 50_00, "test-next-reload")
    assert (reloaded.credited_cents, reloaded.fee_recovered_cents, reloaded.balance_cents) == (50_00, 2_00, 48_00)
    assert await fees(conn, ORDINARY) == (5_00, 0)
    reloaded = await reload_wallet(conn, dossier(ORDINARY), TEST_SCHOOL_YEAR, 10_00, "test-after")
    assert (reloaded.fee_recovered_cents, reloaded.balance_cents) == (0, 58_00)


@pytest.mark.parametrize("balance, taken, pending", [
    (10_00, 5_00, 0), (5_00, 5_00, 0), (4_99, 4_99, 1), (1, 1, 4_99), (0, 0, 5_00),
])
async def test_fee_split_between_balance_and_pending(conn, balance, taken, pending):
    await set_balance(conn, card_uid(ORDINARY), balance)
    done = await replace(conn, ORDINARY, 1, "STOLEN")
    assert (done.fee_taken_cents, done.fee_pending_cents) == (taken, pending)
    assert await balance_of(conn, card_uid(ORDINARY)) == balance - taken
    assert await fees(conn, ORDINARY) == (taken, pending)


async def test_a_defective_card_is_replaced_free(conn):
    await set_balance(conn, card_uid(ORDINARY), 3_00)
    done = await replace(conn, ORDINARY, 1, "DEFECTIVE")
    assert (done.reason, done.fee_cents, done.fee_taken_cents, done.fee_pending_cents) == ("DEFECTIVE", 0, 0, 0)
    assert await balance_of(conn, card_uid(ORDINARY)) == 3_00
    assert await fees(conn, ORDINARY) == (0, 0)


async def test_replacement_before_renewal_is_refused_and_changes_nothing(conn):
    card = await find_card(conn, dossier(NO_RIGHTS))
    audit_rows = await conn.fetchval("SELECT count(*) FROM audit_log")
    with pytest.raises(Conflict, match="rights for school year 2026-2027 are not renewed"):
        await replace_card(conn, card.id, new_uid(1), actor=ACTOR, reason="LOST")
    assert (await find_card(conn, dossier(NO_RIGHTS))).status == "ACTIVE"
    assert await conn.fetchval("SELECT count(*) FROM cards WHERE uid = $1", new_uid(1)) == 0
    assert await conn.fetchval("SELECT count(*) FROM audit_log") == audit_rows
    # Renewed: the same replacement goes through.
    await conn.execute("INSERT INTO rights (beneficiary_id, school_year, renewed_by) VALUES ($1, $2, 'test')",
                       card.beneficiary_id, TEST_SCHOOL_YEAR)
    assert (await replace_card(conn, card.id, new_uid(1), actor=ACTOR, reason="LOST")).fee_cents == 5_00


async def test_rights_of_the_current_school_year_at_its_edges(conn):
    """Until 30 June the ending year's rights count, its wallet closed on 1 May (the fee waits for
    the next reload); from 1 July 00:00 Paris only the new year's rights do."""
    await set_balance(conn, card_uid(ORDINARY), 10_00)
    await pin_clock(conn, paris(2027, 4, 30, 23, 59, 59))
    assert (await replace(conn, ORDINARY, 1, "LOST")).fee_taken_cents == 5_00
    await pin_clock(conn, paris(2027, 5, 1, 0, 0))
    done = await replace(conn, ORDINARY, 2, "LOST")
    assert (done.fee_taken_cents, done.fee_pending_cents) == (0, 5_00)
    await pin_clock(conn, paris(2027, 6, 30, 23, 59, 59))
    assert (await replace(conn, ORDINARY, 3, "LOST")).school_year == 2026
    await pin_clock(conn, paris(2027, 7, 1, 0, 0))
    with pytest.raises(Conflict, match="2027-2028 are not renewed"):
        await replace(conn, ORDINARY, 4, "LOST")
    assert await balance_of(conn, card_uid(ORDINARY)) == 5_00


async def test_old_card_declined_and_new_card_approved_on_the_same_wallet(client, conn):
    await set_balance(conn, card_uid(ORDINARY), 20_00)
    done = await replace(conn, ORDINARY, 1, "DAMAGED")
    old = await client.purchase(card_uid(ORDINARY), 1_00)
    assert (old.rc, old.approved_cents) == ("62", 0)
    new = await client.purchase(new_uid(1), 1_00)
    assert (new.rc, new.approved_cents, new.balance_cents) == ("00", 1_00, 20_00 - 5_00 - 1_00)
    card = await find_card(conn, dossier(ORDINARY))
    assert (card.id, card.replaces_card_id, card.status) == (done.new_card_id, done.old_card_id, "ACTIVE")


async def test_a_lost_card_stays_lost_after_its_replacement(client, conn):
    await replace(conn, ORDINARY, 1, "LOST")
    assert (await client.purchase(card_uid(ORDINARY), 1_00)).rc == "41"
    assert (await client.purchase(new_uid(1), 1_00)).rc == "00"


async def test_an_opposed_card_is_replaced_for_its_own_reason(conn):
    lost = await find_card(conn, dossier(SEEDED_LOST))
    with pytest.raises(Conflict, match="opposed as LOST, not DEFECTIVE"):
        await replace_card(conn, lost.id, new_uid(1), actor=ACTOR, reason="DEFECTIVE")
    done = await replace_card(conn, lost.id, new_uid(1), actor=ACTOR)
    assert (done.reason, done.fee_cents) == ("LOST", 5_00)
    damaged = await find_card(conn, dossier(SEEDED_DAMAGED))
    assert (await replace_card(conn, damaged.id, new_uid(2), actor=ACTOR, reason="damaged")).fee_cents == 5_00


async def test_refusals_leave_everything_as_it_was(conn):
    card = await find_card(conn, dossier(ORDINARY))
    with pytest.raises(Invalid, match="is active: say why"):
        await replace_card(conn, card.id, new_uid(1), actor=ACTOR)
    with pytest.raises(Conflict, match="already exists"):
        await replace_card(conn, card.id, card_uid(6), actor=ACTOR, reason="LOST")
    with pytest.raises(Conflict, match="already used"):
        await replace_card(conn, card.id, new_uid(1), actor=ACTOR, reason="LOST",
                           new_card_number="6330000000000006")
    assert (await find_card(conn, dossier(ORDINARY))).status == "ACTIVE"
    done = await replace_card(conn, card.id, new_uid(1), actor=ACTOR, reason="LOST")
    with pytest.raises(Conflict, match=f"already replaced .by card {done.new_card_id}"):
        await replace_card(conn, card.id, new_uid(2), actor=ACTOR)
    assert await fees(conn, ORDINARY) == (5_00, 0)


async def test_new_card_numbers_given_or_generated(conn):
    generated = await replace(conn, ORDINARY, 1, "LOST")
    assert generated.new_card_number.startswith("6331") and len(generated.new_card_number) == 16
    assert luhn_ok(generated.new_card_number)
    given = await replace(conn, ORDINARY + 1, 2, "LOST", new_card_number="6330999900000001")
    assert given.new_card_number == "6330999900000001"
    assert (await find_card(conn, "6330999900000001")).dossier_number == dossier(ORDINARY + 1)


async def test_replacement_is_audited_in_a_verifiable_trail(conn):
    done = await replace(conn, ORDINARY, 1, "STOLEN")
    rows = await conn.fetch("SELECT actor, action, subject FROM audit_log ORDER BY id")
    assert [tuple(r) for r in rows] == [(ACTOR, "card.oppose", f"card:{done.old_card_id}"),
                                        (ACTOR, "card.replace", f"card:{done.old_card_id}")]
    before, after = await conn.fetchrow("SELECT before, after FROM audit_log WHERE action = 'card.replace'")
    assert json.loads(before)["status"] == "ACTIVE"
    assert json.loads(after) == {"new_card_id": done.new_card_id, "reason": "STOLEN", "fee_cents": 5_00,
                                 "fee_taken_cents": done.fee_taken_cents,
                                 "fee_pending_cents": done.fee_pending_cents}
    assert (await verify_audit(conn)).intact


async def test_a_purchase_racing_a_replacement_never_overspends(client, dsn, conn):
    """Both lock the wallet row: whichever comes second sees the other's debit."""
    numbers = [5, 6, 7, 8, 9, 10, 11, 12]
    for number in numbers:
        await set_balance(conn, card_uid(number), 10_00)
    other = await asyncpg.connect(dsn)
    try:
        for n, number in enumerate(numbers):
            card = await find_card(conn, dossier(number))
            purchase, replacement = await asyncio.gather(
                client.purchase(card_uid(number), 8_00, partial_ok=True),
                replace_card(other, card.id, new_uid(n + 1), actor=ACTOR, reason="DAMAGED"))
            balance = await balance_of(conn, card_uid(number))
            assert balance == 10_00 - purchase.approved_cents - replacement.fee_taken_cents >= 0
            assert replacement.fee_taken_cents + replacement.fee_pending_cents == 5_00
            assert (replacement.fee_taken_cents == 5_00) == (purchase.approved_cents <= 5_00)
    finally:
        await other.close()


def hdfpay(dsn: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hdfpay.cli", *args], capture_output=True,
                          text=True, timeout=COMMAND_TIMEOUT_S, stdin=subprocess.DEVNULL,
                          env={**os.environ, "DATABASE_URL": dsn})


async def test_the_cli_opposes_and_replaces_with_plain_errors(dsn, conn):
    await set_balance(conn, card_uid(ORDINARY), 3_00)
    refused = hdfpay(dsn, "cards", "replace", dossier(ORDINARY), "--uid", "04:EE:00:00:00:00:09")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "is active: say why it is replaced" in refused.stderr
    done = hdfpay(dsn, "cards", "replace", dossier(ORDINARY), "--uid", "04:EE:00:00:00:00:09",
                  "--reason", "lost")
    assert done.returncode == 0, done.stderr
    assert "3,00\u00a0€ taken from the balance, 2,00\u00a0€ pending until the next reload" in done.stdout
    assert "UID 04EE0000000009" in done.stdout and "status ACTIVE" in done.stdout
    opposed = hdfpay(dsn, "cards", "oppose", "6330000000000006", "--reason", "stolen")
    assert opposed.returncode == 0 and "status STOLEN" in opposed.stdout
    again = hdfpay(dsn, "cards", "oppose", "6330000000000006", "--reason", "lost")
    assert again.returncode == 2 and "already opposed (STOLEN)" in again.stderr
    unknown = hdfpay(dsn, "cards", "show", "NOSUCH0001")
    assert unknown.returncode == 2 and "no card with number or dossier number NOSUCH0001" in unknown.stderr
    actors = {r["actor"] for r in await conn.fetch("SELECT actor FROM audit_log")}
    assert actors == {f"cli:{getpass.getuser()}"}
