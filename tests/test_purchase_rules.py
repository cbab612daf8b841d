"""Every card rule of a purchase, end to end over HTTP against the real server and database."""

from __future__ import annotations

import pytest

from ledger.clock import pin_clock
from ledger.demo_region import PARTNERS, card_uid, terminal_id
from ledger.rules import current_rules
from terminal_protocol.client import TerminalClient

from conftest import TEST_SCHOOL_YEAR, balance_of, paris, set_balance

ORDINARY = card_uid(5)
LOST, STOLEN, DAMAGED = card_uid(1), card_uid(2), card_uid(3)
NO_RIGHTS = card_uid(50)
UNKNOWN = bytes.fromhex("04FFFFFFFFFF01")


async def test_approved_purchase_debits_the_wallet_and_credits_the_merchant(client, conn):
    before = await balance_of(conn, ORDINARY)
    response = await client.purchase(ORDINARY, 12_34)
    assert (response.rc, response.approved_cents) == ("00", 12_34)
    assert response.balance_cents == before - 12_34 == await balance_of(conn, ORDINARY)
    assert len(response.auth_code) == 6 and len(response.rrn) == 12
    merchant_credit = await conn.fetchval(
        "SELECT sum(t.amount_cents) FROM transfers t JOIN partners p"
        " ON p.merchant_account_id = t.credit_account_id WHERE t.code = 'PURCHASE' AND p.id = 1")
    assert merchant_credit == 12_34


@pytest.mark.parametrize("uid, rc", [
    (UNKNOWN, "14"), (LOST, "41"), (STOLEN, "43"), (DAMAGED, "62"), (NO_RIGHTS, "57"),
])
async def test_card_declines(client, conn, uid, rc):
    response = await client.purchase(uid, 10_00)
    assert (response.rc, response.approved_cents) == (rc, 0)
    assert await conn.fetchval("SELECT count(*) FROM transfers WHERE code = 'PURCHASE'") == 0


@pytest.mark.parametrize("terminal_name", [
    terminal_id(1, 2),                    # revoked terminal
    terminal_id(len(PARTNERS), 1),        # active terminal of a suspended partner
])
async def test_terminal_and_partner_must_be_active(terminal, conn, terminal_name):
    async with terminal(terminal_name) as other:
        response = await other.purchase(ORDINARY, 10_00)
    assert response.rc == "58"
    assert await conn.fetchval("SELECT count(*) FROM transfers WHERE code = 'PURCHASE'") == 0


async def test_unknown_terminal(server, keys_for, conn):
    """A genuine MAC (another terminal's key) under a terminal id the region does not know: the
    key is not the named terminal's, a security violation (63) as PROTOCOL.md says."""
    async with TerminalClient(server.url, "TERM-9999-1", keys_for(terminal_id(2, 1))) as unknown:
        response = await unknown.purchase(ORDINARY, 10_00)
    assert response.rc == "63"
    assert await conn.fetchval("SELECT count(*) FROM transfers WHERE code = 'PURCHASE'") == 0


async def test_over_the_per_transaction_limit(client, conn):
    limit_cents = (await current_rules(conn)).max_purchase_amount_cents
    response = await client.purchase(ORDINARY, limit_cents + 1)
    assert response.rc == "61"
    at_limit = await client.purchase(card_uid(6), limit_cents, partial_ok=True)
    assert at_limit.rc in ("00", "10")


async def test_insufficient_funds_without_partial_approval(client, conn):
    await set_balance(conn, ORDINARY, 7_00)
    response = await client.purchase(ORDINARY, 7_01, partial_ok=False)
    assert (response.rc, response.approved_cents, response.balance_cents) == ("51", 0, 7_00)
    assert await balance_of(conn, ORDINARY) == 7_00


async def test_partial_approval_takes_what_is_left(client, conn):
    await set_balance(conn, ORDINARY, 7_00)
    response = await client.purchase(ORDINARY, 10_00, partial_ok=True)
    assert (response.rc, response.requested_cents, response.approved_cents) == ("10", 10_00, 7_00)
    assert response.balance_cents == 0 == await balance_of(conn, ORDINARY)


async def test_empty_wallet_is_declined_even_with_partial_approval(client, conn):
    await set_balance(conn, ORDINARY, 0)
    response = await client.purchase(ORDINARY, 1_00, partial_ok=True)
    assert (response.rc, response.approved_cents) == ("51", 0)


async def test_rights_without_a_wallet_is_insufficient_funds(client, conn):
    beneficiary = await conn.fetchval("SELECT beneficiary_id FROM cards WHERE uid = $1", ORDINARY)
    await conn.execute("INSERT INTO rights (beneficiary_id, school_year, renewed_by)"
                       " VALUES ($1, $2, 'test')", beneficiary, TEST_SCHOOL_YEAR + 1)
    await pin_clock(conn, paris(TEST_SCHOOL_YEAR + 1, 9, 2, 10, 0))
    response = await client.purchase(ORDINARY, 1_00)
    assert response.rc == "51"


@pytest.mark.parametrize("uid, when, rc", [
    # The card is checked before the window, the window before the rights.
    (LOST, paris(2027, 5, 15, 12, 0), "41"),
    (NO_RIGHTS, paris(2027, 5, 15, 12, 0), "54"),
    (DAMAGED, paris(2026, 11, 26, 12, 0), "62"),
])
async def test_rules_are_checked_in_order(client, conn, uid, when, rc):
    await pin_clock(conn, when)
    assert (await client.purchase(uid, 1_00)).rc == rc


async def test_limit_is_checked_before_funds(client, conn):
    await set_balance(conn, ORDINARY, 0)
    limit_cents = (await current_rules(conn)).max_purchase_amount_cents
    assert (await client.purchase(ORDINARY, limit_cents + 1)).rc == "61"
