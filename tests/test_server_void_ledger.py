"""server_void_purchase.sql on its own: once with the terminal's own reversal whichever lands
first or at the same time, never a purchase its transmission did not commit, and a void after
the wallet closed gives back where the balance went (as a reversal's)."""

from __future__ import annotations

import asyncio
import datetime as dt

import asyncpg

from ledger import reports, shop_activity
from ledger.clock import pin_clock
from ledger.demo_region import card_uid
from ledger.invariants import ledger_violations
from terminal_protocol.codec import decode_response, encode_request, request_fingerprint
from terminal_protocol.messages import BatchTotals

from terminal_protocol.response_codes import APPROVED_CODES

from conftest import ACTIVE_TERMINAL, PARIS, SCHOOL_DAY, balance_of, set_balance

CARD = card_uid(6)
CONCURRENT_VOIDS = 3
AFTER_THE_WALLET_CLOSED = dt.datetime(2027, 5, 1, 0, 0, 1, tzinfo=PARIS)


async def server_void(conn, request, may_have_committed: bool = True,
                      terminal: str = ACTIVE_TERMINAL) -> str:
    return await conn.fetchval("SELECT server_void_purchase($1, $2, $3, $4)", terminal,
                               request.request_id, request_fingerprint(request),
                               may_have_committed)


async def test_a_void_landing_after_the_terminals_reversal_moves_nothing_more(client, conn):
    """The terminal reversed first (its outbox was faster than a database coming back): the
    void gives nothing more, and the retry of the purchase is no longer 00. The batch counts
    the purchase and its reversal as the terminal saw them."""
    await set_balance(conn, CARD, 50_00)
    request = client.purchase_request(CARD, 20_00)
    assert (await client.send(request)).rc == "00"
    reversal = await client.reversal(request.request_id)
    assert (reversal.rc, reversal.approved_cents) == ("00", 20_00)
    assert await server_void(conn, request) == "was_reversed"
    assert await server_void(conn, request) == "repeated"
    assert await balance_of(conn, CARD) == 50_00
    assert decode_response(await client.send_raw(encode_request(request))).rc == "94"
    closed = await client.batch_close(BatchTotals(purchases_count=1, purchases_cents=20_00,
                                                  reversals_count=1, reversals_cents=20_00))
    assert (closed.rc, closed.differences) == ("00", ())
    assert await conn.fetchval("SELECT sum(amount_cents) FROM transfers WHERE code = 'REVERSAL'"
                               ) == 20_00


async def test_voids_and_the_terminals_reversal_at_once_credit_once(client, conn, dsn):
    await set_balance(conn, CARD, 50_00)
    request = client.purchase_request(CARD, 20_00)
    assert (await client.send(request)).rc == "00"
    servers = [await asyncpg.connect(dsn) for _ in range(CONCURRENT_VOIDS)]
    try:
        *effects, reversal = await asyncio.gather(
            *(server_void(s, request) for s in servers), client.reversal(request.request_id))
    finally:
        for s in servers:
            await s.close()
    assert sorted(effects).count("repeated") == CONCURRENT_VOIDS - 1
    first = [e for e in effects if e != "repeated"]
    assert (first, reversal.rc, reversal.approved_cents) in (
        (["credited"], "25", 0), (["was_reversed"], "00", 20_00))
    assert await balance_of(conn, CARD) == 50_00
    assert await conn.fetchval("SELECT sum(amount_cents) FROM transfers WHERE code = 'REVERSAL'"
                               ) == 20_00
    assert await ledger_violations(conn) == []


async def test_a_transmission_that_committed_nothing_never_voids_a_purchase(client, conn):
    """A void of a transmission the database never ran (or rolled back) leaves the purchase
    another transmission committed under that id as it is; so does a void of other content."""
    await set_balance(conn, CARD, 50_00)
    request = client.purchase_request(CARD, 20_00)
    approved = await client.send_raw(encode_request(request))
    assert await server_void(conn, request, may_have_committed=False) == "not_ours"
    other = client.purchase_request(CARD, 21_00, request_id=request.request_id)
    assert await server_void(conn, other) == "not_ours"
    assert await balance_of(conn, CARD) == 30_00
    assert await client.send_raw(encode_request(request)) == approved


async def test_a_void_once_the_wallet_closed_gives_back_to_expired_funds(client, conn):
    await set_balance(conn, CARD, 50_00)
    request = client.purchase_request(CARD, 20_00)
    assert (await client.send(request)).rc == "00"
    await pin_clock(conn, AFTER_THE_WALLET_CLOSED)
    assert await server_void(conn, request) == "credited"
    assert await balance_of(conn, CARD) == 30_00
    assert await conn.fetchval(
        "SELECT a.kind FROM transfers t JOIN accounts a ON a.id = t.credit_account_id"
        " WHERE t.code = 'REVERSAL'") == "EXPIRED_FUNDS"
    assert await ledger_violations(conn) == []


async def test_a_void_of_an_unknown_terminal_records_nothing(client, conn):
    request = client.purchase_request(CARD, 20_00)
    assert await server_void(conn, request, terminal="NO-SUCH-TERMINAL") == "unknown_terminal"
    assert await conn.fetchval("SELECT count(*) FROM authorizations") == 0


async def test_operators_see_the_void_as_money_given_back(client, conn):
    """The volumes report and the shop's day list the server's void with the reversals: their
    net is what the funds report and the settlement see (the sale's money went back)."""
    await set_balance(conn, CARD, 50_00)
    kept = await client.purchase(CARD, 5_00)
    request = client.purchase_request(CARD, 20_00)
    assert (kept.rc, (await client.send(request)).rc) == ("00", "00")
    assert await server_void(conn, request) == "credited"
    day = SCHOOL_DAY.date()
    total = [r for r in await reports.volumes(conn, reports.Period(day, day))
             if r["business_day"] is None][0]
    assert (total["purchases_cents"], total["reversals_count"], total["reversals_cents"],
            total["net_cents"]) == (25_00, 1, 20_00, 5_00)
    partner = await shop_activity.terminal_partner(conn, ACTIVE_TERMINAL)
    totals = await shop_activity.day_totals(conn, partner, day, sorted(APPROVED_CODES))
    assert (totals.reversals_cents, totals.net_cents) == (20_00, 5_00)
    listed, _ = await shop_activity.day_messages(conn, partner, day)
    assert [m.message_type for m in listed] == ["SERVER_VOID", "PURCHASE", "PURCHASE"]
