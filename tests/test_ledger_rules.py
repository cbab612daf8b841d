"""Rules the database itself enforces, whatever code talks to it: irreversible oppositions,
immutable transfers, no overdraft; and reloads, exactly once, recovering pending fees first."""

from __future__ import annotations

import asyncpg
import pytest

from ledger.demo_region import card_uid
from ledger.clock import pin_clock
from ledger.reload import ReloadRefused, UnknownBeneficiary, reload_wallet

from conftest import TEST_SCHOOL_YEAR, balance_of, paris, set_balance

CARD = card_uid(5)
DOSSIER = "HDF0000005"


@pytest.mark.parametrize("change", [
    "status = 'ACTIVE', opposed_at = NULL",
    "status = 'STOLEN'",
    "opposed_at = now() - interval '1 day'",
])
async def test_an_opposition_can_never_be_lifted_or_changed(conn, change):
    lost = card_uid(1)
    with pytest.raises(asyncpg.IntegrityConstraintViolationError, match="cannot be lifted"):
        await conn.execute(f"UPDATE cards SET {change} WHERE uid = $1", lost)
    assert await conn.fetchval("SELECT status FROM cards WHERE uid = $1", lost) == "LOST"


async def test_an_active_card_can_be_opposed_once(conn):
    await conn.execute("UPDATE cards SET status = 'STOLEN', opposed_at = now() WHERE uid = $1", CARD)
    with pytest.raises(asyncpg.IntegrityConstraintViolationError):
        await conn.execute("UPDATE cards SET status = 'ACTIVE', opposed_at = NULL WHERE uid = $1", CARD)


async def test_cards_are_never_deleted(conn):
    with pytest.raises(asyncpg.IntegrityConstraintViolationError):
        await conn.execute("DELETE FROM cards WHERE uid = $1", card_uid(1))


@pytest.mark.parametrize("statement", [
    "UPDATE transfers SET amount_cents = amount_cents + 1",
    "DELETE FROM transfers",
    "TRUNCATE transfers",
])
async def test_transfers_are_immutable(conn, statement):
    count = await conn.fetchval("SELECT count(*) FROM transfers")
    assert count > 0
    with pytest.raises(asyncpg.IntegrityConstraintViolationError, match="immutable"):
        await conn.execute(statement)
    assert await conn.fetchval("SELECT count(*) FROM transfers") == count


async def test_accounts_are_never_deleted(conn):
    with pytest.raises(asyncpg.IntegrityConstraintViolationError):
        await conn.execute("DELETE FROM accounts WHERE kind = 'FEE_INCOME'")


async def test_the_database_refuses_an_overdraft(conn):
    account = await conn.fetchval(
        "SELECT w.account_id FROM wallets w JOIN cards c ON c.beneficiary_id = w.beneficiary_id"
        " WHERE c.uid = $1", CARD)
    with pytest.raises(asyncpg.CheckViolationError, match="wallet_never_overdrawn"):
        await conn.execute("UPDATE accounts SET debits_posted = credits_posted + 1 WHERE id = $1", account)


async def test_reload_credits_once_per_reference(conn):
    await set_balance(conn, CARD, 0)
    first = await reload_wallet(conn, DOSSIER, TEST_SCHOOL_YEAR, 40_00, reference="top-up-1")
    again = await reload_wallet(conn, DOSSIER, TEST_SCHOOL_YEAR, 40_00, reference="top-up-1")
    assert (first.credited_cents, first.already_done) == (40_00, False)
    assert (again.credited_cents, again.already_done, again.balance_cents) == (0, True, 40_00)
    assert await balance_of(conn, CARD) == 40_00


async def test_reload_opens_the_wallet_of_a_new_school_year(conn):
    result = await reload_wallet(conn, DOSSIER, TEST_SCHOOL_YEAR + 1, 100_00)
    assert result.balance_cents == 100_00
    assert await balance_of(conn, CARD, TEST_SCHOOL_YEAR + 1) == 100_00
    assert (await reload_wallet(conn, DOSSIER, TEST_SCHOOL_YEAR + 1, 100_00)).already_done


async def _pending_fee(conn, amount_cents: int) -> None:
    await conn.execute("INSERT INTO pending_fees (beneficiary_id, amount_cents, reason)"
                       " SELECT id, $2, 'replacement' FROM beneficiaries WHERE dossier_number = $1",
                       DOSSIER, amount_cents)


async def test_reload_recovers_a_pending_fee_first(conn):
    await set_balance(conn, CARD, 0)
    await _pending_fee(conn, 3_50)
    result = await reload_wallet(conn, DOSSIER, TEST_SCHOOL_YEAR, 100_00, reference="after-fee")
    assert (result.credited_cents, result.fee_recovered_cents, result.balance_cents) == (100_00, 3_50, 96_50)
    fee_income = await conn.fetchval(
        "SELECT sum(amount_cents) FROM transfers t JOIN accounts a ON a.id = t.credit_account_id"
        " WHERE a.kind = 'FEE_INCOME' AND t.code = 'REPLACEMENT_FEE'")
    assert fee_income == 3_50
    again = await reload_wallet(conn, DOSSIER, TEST_SCHOOL_YEAR, 10_00, reference="second")
    assert again.fee_recovered_cents == 0


async def test_a_fee_larger_than_the_reload_stays_pending_for_the_rest(conn):
    await _pending_fee(conn, 5_00)
    first = await reload_wallet(conn, DOSSIER, TEST_SCHOOL_YEAR, 2_00, reference="small-1")
    assert (first.fee_recovered_cents, first.credited_cents) == (2_00, 2_00)
    second = await reload_wallet(conn, DOSSIER, TEST_SCHOOL_YEAR, 10_00, reference="small-2")
    assert second.fee_recovered_cents == 3_00
    assert await conn.fetchval("SELECT bool_and(recovered_cents = amount_cents) FROM pending_fees")


async def test_reload_of_an_unknown_dossier(conn):
    with pytest.raises(UnknownBeneficiary):
        await reload_wallet(conn, "HDF9999999", TEST_SCHOOL_YEAR, 1_00)


async def test_reload_amount_must_be_positive(conn):
    with pytest.raises(ReloadRefused, match="positive"):
        await reload_wallet(conn, DOSSIER, TEST_SCHOOL_YEAR, 0, reference="zero")


async def test_a_reload_reference_cannot_serve_another_wallet_or_amount(conn):
    await reload_wallet(conn, DOSSIER, TEST_SCHOOL_YEAR, 50_00, reference="batch-1")
    with pytest.raises(ReloadRefused, match="already used"):
        await reload_wallet(conn, "HDF0000006", TEST_SCHOOL_YEAR, 50_00, reference="batch-1")
    with pytest.raises(ReloadRefused, match="already used"):
        await reload_wallet(conn, DOSSIER, TEST_SCHOOL_YEAR, 60_00, reference="batch-1")
    assert (await reload_wallet(conn, DOSSIER, TEST_SCHOOL_YEAR, 50_00, reference="batch-1")).already_done


async def test_no_reload_into_a_closed_school_year(conn):
    await pin_clock(conn, paris(2027, 5, 1, 0, 0, 0))
    with pytest.raises(ReloadRefused, match="closed on 1 May 2027"):
        await reload_wallet(conn, DOSSIER, TEST_SCHOOL_YEAR, 10_00, "correction-1")
    await pin_clock(conn, paris(2027, 4, 30, 23, 59, 59))
    assert (await reload_wallet(conn, DOSSIER, TEST_SCHOOL_YEAR, 10_00,
                                "correction-1")).credited_cents == 10_00


async def test_the_invariant_check_sees_a_tampered_wallet(conn):
    """ledger_violations() must be able to fail: bypass the journal and it reports it."""
    account = await conn.fetchval(
        "SELECT w.account_id FROM wallets w JOIN cards c ON c.beneficiary_id = w.beneficiary_id"
        " WHERE c.uid = $1", CARD)
    await conn.execute("UPDATE accounts SET credits_posted = credits_posted + 1 WHERE id = $1", account)
    violations = await conn.fetch("SELECT rule FROM ledger_violations()")
    assert [v["rule"] for v in violations] == ["wallet totals match the journal"]
    await conn.execute("UPDATE accounts SET credits_posted = credits_posted - 1 WHERE id = $1", account)
