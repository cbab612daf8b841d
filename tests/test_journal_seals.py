"""The journal's seals (issue 14 §2): someone who can write the tables but cannot use the HSM's
key rewrites a sealed transfer or audit row, recomputes whatever is unkeyed (wallet totals, the
audit chain and head, even a seal's digest), and `hdfpay check` / `hdfpay audit verify` still
say where. Sealing never locks the transfers and waits for a lower id committed late."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import subprocess
import sys

import asyncpg
import pytest

from hdfpay.journal_sealing import SealingRefused, seal_journal, verify_seals
from hsm.interface import KeyUsage
from hsm.key_aliases import JOURNAL_SEAL_KEY_ALIAS
from hsm.software_backend import SoftwareHsm
from ledger import journal_seals
from ledger.audit import append_audit, verify_audit
from ledger.invariants import ledger_violations
from ledger.reload import reload_wallet

from conftest import TEST_SCHOOL_YEAR
from systemd_units import calendar_elapses, oneshot_timer_calendar

COMMAND_TIMEOUT_S = 120
SEALER = "test:sealer"
WAITING_SEAL_OBSERVED_S = 0.3
SEAL_PERIOD = dt.timedelta(minutes=5)


def hdfpay(dsn: str, keystore_env: dict, *args: str):
    return subprocess.run([sys.executable, "-m", "hdfpay.cli", *args], capture_output=True,
                          text=True, timeout=COMMAND_TIMEOUT_S, stdin=subprocess.DEVNULL,
                          env={**os.environ, **keystore_env, "DATABASE_URL": dsn})


async def _reload(conn, dossier: str, euros: int, reference: str) -> int:
    await reload_wallet(conn, dossier, TEST_SCHOOL_YEAR, euros * 100, reference)
    return await conn.fetchval("SELECT id FROM transfers WHERE code = 'RELOAD' AND reference = $1",
                               reference)


async def _as_table_owner(conn, table: str, trigger: str, *statements: str) -> None:
    """What the database's owner can do: switch a trigger off, write, switch it on again."""
    await conn.execute(f"ALTER TABLE {table} DISABLE TRIGGER {trigger}")
    for statement in statements:
        await conn.execute(statement)
    await conn.execute(f"ALTER TABLE {table} ENABLE TRIGGER {trigger}")


async def test_a_reload_rewritten_with_the_totals_adjusted_is_found(dsn, conn, hsm, keystore_env):
    transfer = await _reload(conn, "HDF0000005", 150, "seal-test-150")
    sealed = hdfpay(dsn, keystore_env, "ledger", "seal")
    assert sealed.returncode == 0, sealed.stderr
    published = sealed.stdout.split("transfers: last seal")[1].split("MAC ")[1].split()[0]
    assert "sealed transfers seal 1 (ids 1-" in sealed.stdout
    again = hdfpay(dsn, keystore_env, "ledger", "seal")
    assert again.returncode == 0 and "sealed " not in again.stdout and published in again.stdout
    checked = hdfpay(dsn, keystore_env, "check", "--expect-seal", published)
    assert checked.returncode == 0 and "transfers seals intact" in checked.stdout, checked.stdout
    wallet = await conn.fetchval("SELECT credit_account_id FROM transfers WHERE id = $1", transfer)
    await _as_table_owner(
        conn, "transfers", "transfers_are_immutable",
        f"UPDATE transfers SET amount_cents = 65000 WHERE id = {transfer}",
        f"UPDATE accounts SET credits_posted = credits_posted + 50000 WHERE id = {wallet}")
    assert await ledger_violations(conn) == []            # the totals agree with the rewrite
    found = hdfpay(dsn, keystore_env, "check")
    assert found.returncode == 1, found.stdout + found.stderr
    assert "ledger balanced" in found.stdout and "transfers seals NOT intact" in found.stdout
    assert ("SEAL PROBLEM transfers seal 1 (ids 1-" in found.stdout
            and "a row among ids 1-" in found.stdout and "was changed" in found.stdout)
    await _as_table_owner(                                # leave the ledger as the test found it
        conn, "transfers", "transfers_are_immutable",
        f"UPDATE transfers SET amount_cents = 15000 WHERE id = {transfer}",
        f"UPDATE accounts SET credits_posted = credits_posted - 50000 WHERE id = {wallet}")


_REWRITE_ACTOR_AND_CHAIN = """
DO $$
DECLARE r record; v_previous bytea;
BEGIN
    UPDATE audit_log SET actor = 'op:mallory' WHERE id = {row};
    SELECT row_hash INTO v_previous FROM audit_log WHERE id = {row} - 1;
    FOR r IN SELECT * FROM audit_log WHERE id >= {row} ORDER BY id LOOP
        UPDATE audit_log SET previous_hash = coalesce(v_previous, decode(repeat('00', 32), 'hex')),
               row_hash = sha256(coalesce(v_previous, decode(repeat('00', 32), 'hex'))
                                 || audit_row_bytes(r.id, r.occurred_at, r.actor, r.action,
                                                    r.subject, r.before, r.after))
         WHERE id = r.id RETURNING row_hash INTO v_previous;
    END LOOP;
    UPDATE audit_head SET last_hash = v_previous;
END $$"""


async def test_an_audit_row_rewritten_with_its_chain_recomputed_is_found(dsn, conn, hsm,
                                                                        keystore_env):
    for n in range(3):
        await append_audit(conn, actor="op:alice", action="card.oppose", subject=f"card:{n}",
                           before={"status": "ACTIVE"}, after={"status": "LOST"})
    run = await seal_journal(conn, hsm, actor=SEALER)
    assert run.last["audit"] is not None and not run.not_ready
    target = run.last["audit"].last_id - 1
    assert (await verify_audit(conn)).intact
    await conn.execute("ALTER TABLE audit_head DISABLE TRIGGER audit_head_follows_the_log")
    await _as_table_owner(conn, "audit_log", "audit_log_append_only",
                          _REWRITE_ACTOR_AND_CHAIN.format(row=target))
    await conn.execute("ALTER TABLE audit_head ENABLE TRIGGER audit_head_follows_the_log")
    assert await conn.fetchval("SELECT actor FROM audit_log WHERE id = $1", target) == "op:mallory"
    assert (await verify_audit(conn)).intact                # the unkeyed chain agrees
    verified = hdfpay(dsn, keystore_env, "audit", "verify")
    assert verified.returncode == 1, verified.stdout + verified.stderr
    assert "SEAL PROBLEM audit seal 1 (ids 1-" in verified.stdout and "was changed" in verified.stdout
    assert "audit trail NOT intact" in verified.stdout


async def _two_transfer_seals(conn, hsm):
    first = await _reload(conn, "HDF0000007", 20, "seal-first")
    await seal_journal(conn, hsm, actor=SEALER)
    second = await _reload(conn, "HDF0000008", 30, "seal-second")
    await seal_journal(conn, hsm, actor=SEALER)
    return first, second


async def test_seals_chain_and_cover_only_new_rows(conn, hsm):
    await _two_transfer_seals(conn, hsm)
    one, two = await journal_seals.seals(conn, "transfers")
    assert (two.seq, two.first_id, two.previous_mac, two.row_count) == (2, one.last_id + 1, one.mac, 1)
    assert (await seal_journal(conn, hsm, actor=SEALER)).made == ()      # nothing new
    for stream in journal_seals.STREAMS:
        report = await verify_seals(conn, hsm, stream)
        assert report.intact and report.unsealed_rows == 0, report.problems
    for statement in ("UPDATE journal_seals SET row_count = 1", "DELETE FROM journal_seals",
                      "TRUNCATE journal_seals"):
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute(statement)
    with pytest.raises(asyncpg.IntegrityConstraintViolationError):      # a fork of the stream
        await journal_seals.insert_seal(conn, one)


async def test_a_backlog_becomes_several_seals(conn, hsm):
    for n in range(5):
        await _reload(conn, f"HDF00000{20 + n}", 5, f"seal-backlog-{n}")
    run = await seal_journal(conn, hsm, actor=SEALER, max_rows=2)
    transfers = [seal for seal in run.made if seal.stream == "transfers"]
    assert len(transfers) >= 3 and all(seal.row_count <= 2 for seal in transfers)
    report = await verify_seals(conn, hsm, "transfers")
    assert report.intact and report.seals == len(transfers) and report.unsealed_rows == 0


async def test_a_seal_forged_or_deleted_is_found(conn, hsm):
    first, second = await _two_transfer_seals(conn, hsm)
    one, two = await journal_seals.seals(conn, "transfers")
    # The attacker rewrites a transfer and recomputes its seal's digest: only the MAC is keyed.
    digest = journal_seals.RowsDigest("transfers")
    for row in await journal_seals.rows_between(conn, "transfers", 0, one.last_id):
        digest.add(row if row["id"] != first else {**dict(row), "amount_cents": 9000})
    wallet = await conn.fetchval("SELECT credit_account_id FROM transfers WHERE id = $1", first)
    await _as_table_owner(conn, "transfers", "transfers_are_immutable",
                          f"UPDATE transfers SET amount_cents = 9000 WHERE id = {first}",
                          f"UPDATE accounts SET credits_posted = credits_posted + 7000 WHERE id = {wallet}")
    await _as_table_owner(conn, "journal_seals", "journal_seals_append_only",
                          f"UPDATE journal_seals SET digest = '\\x{digest.digest().hex()}'"
                          " WHERE stream = 'transfers' AND seq = 1")
    report = await verify_seals(conn, hsm, "transfers")
    assert report.problems == ("transfers seal 1 (ids 1-%d): its MAC does not verify under key"
                               " journal/seal: the seal was altered or forged" % one.last_id,)
    # The last seal removed: only the MAC published outside shows it.
    await _as_table_owner(conn, "journal_seals", "journal_seals_append_only",
                          "DELETE FROM journal_seals WHERE stream = 'transfers' AND seq = 2")
    report = await verify_seals(conn, hsm, "transfers", expect_mac=two.mac)
    assert report.unsealed_rows == 1 and any("no longer in the database" in p for p in report.problems)
    # A seal in the middle removed: the sequence shows it.
    await _as_table_owner(conn, "journal_seals", "journal_seals_append_only",
                          "DELETE FROM journal_seals WHERE stream = 'transfers' AND seq = 1")
    await conn.execute("ALTER TABLE journal_seals DISABLE TRIGGER journal_seal_follows")
    await journal_seals.insert_seal(conn, two)
    await conn.execute("ALTER TABLE journal_seals ENABLE TRIGGER journal_seal_follows")
    problems = (await verify_seals(conn, hsm, "transfers")).problems
    assert any("expected seal 1 (seals deleted or inserted)" in p for p in problems), problems
    assert any("lies in no seal's range" in p for p in problems), problems
    await _as_table_owner(conn, "transfers", "transfers_are_immutable",
                          f"UPDATE transfers SET amount_cents = 2000 WHERE id = {first}",
                          f"UPDATE accounts SET credits_posted = credits_posted - 7000 WHERE id = {wallet}")


async def test_a_lower_id_committed_late_is_waited_for(dsn, conn, hsm):
    late = await asyncpg.connect(dsn)
    try:
        transaction = late.transaction()
        await transaction.start()
        lower = await _reload(late, "HDF0000009", 10, "seal-late")
        higher = await _reload(conn, "HDF0000010", 10, "seal-early")
        assert lower < higher
        # Not waited for long enough: the transfers are not sealed, the audit trail is.
        run = await seal_journal(conn, hsm, actor=SEALER, wait_max_ms=100)
        assert run.last["transfers"] is None and run.not_ready[0].startswith("transfers: 1 transaction")
        sealing = asyncio.ensure_future(seal_journal(conn, hsm, actor=SEALER))
        await asyncio.sleep(WAITING_SEAL_OBSERVED_S)
        assert not sealing.done()                         # waiting for the open transaction
        await transaction.commit()
        run = await sealing
    finally:
        await late.close()
    assert not run.not_ready and run.last["transfers"].last_id >= higher
    report = await verify_seals(conn, hsm, "transfers")
    assert report.intact and report.unsealed_rows == 0, report.problems


async def test_the_seal_key_is_made_once_and_audited(conn, tmp_path, kek_file):
    fresh = SoftwareHsm(tmp_path / "keys.json", kek_file=kek_file, create=True)
    run = await seal_journal(conn, fresh, actor=SEALER)
    assert run.key_created is not None and run.key_created.usage is KeyUsage.HMAC
    row = await conn.fetchrow("SELECT actor, after FROM audit_log WHERE action = 'key.create'")
    assert row["actor"] == SEALER and run.key_created.kcv in row["after"]
    assert (await seal_journal(conn, fresh, actor=SEALER)).key_created is None
    other = SoftwareHsm(tmp_path / "other.json", kek_file=kek_file, create=True)
    with pytest.raises(SealingRefused, match="which this HSM does not hold"):
        await seal_journal(conn, other, actor=SEALER)
    assert other.list_keys() == []
    assert (await verify_seals(conn, other, "audit")).problems[0].endswith(
        f"made with key {JOURNAL_SEAL_KEY_ALIAS}, which this HSM does not hold (wrong HSM, or the"
        " seal was altered)")


def test_the_timer_seals_every_five_minutes():
    elapses = calendar_elapses(oneshot_timer_calendar("hdfpay-seal", ["ledger", "seal"]))
    assert [b - a for a, b in zip(elapses, elapses[1:])] == [SEAL_PERIOD] * 2, elapses


async def test_seals_made_and_checked_with_a_pkcs11_token(conn, pkcs11_hsm):
    transfer = await _reload(conn, "HDF0000030", 150, "seal-pkcs11")
    try:
        run = await seal_journal(conn, pkcs11_hsm, actor=SEALER)
        assert run.key_created is not None and run.key_created.usage is KeyUsage.HMAC
        assert (await verify_seals(conn, pkcs11_hsm, "transfers")).intact
        await _as_table_owner(conn, "transfers", "transfers_are_immutable",
                              f"UPDATE transfers SET reference = 'rewritten' WHERE id = {transfer}")
        problems = (await verify_seals(conn, pkcs11_hsm, "transfers")).problems
        assert len(problems) == 1 and "was changed" in problems[0], problems
    finally:
        for info in pkcs11_hsm.list_keys():
            pkcs11_hsm.destroy_key(info.alias)
