"""Batch close: the terminal's day totals against what the ledger approved for it."""

from __future__ import annotations

import asyncio
import json

import asyncpg
import pytest

from ledger.demo_region import card_uid

from conftest import ACTIVE_TERMINAL, CROWD_TERMINALS, set_balance
from terminal_protocol.messages import BatchTotals

CARD = card_uid(7)


async def _day_of_sales(client, conn) -> BatchTotals:
    """Two sales (one partial), a void of the second, a refund of part of the first."""
    await set_balance(conn, CARD, 50_00)
    first = await client.purchase(CARD, 30_00)
    second = await client.purchase(CARD, 40_00)           # partial: 20.00 € left
    assert (first.approved_cents, second.approved_cents, second.rc) == (30_00, 20_00, "10")
    second_request_id = second.request_id
    voided = await client.reversal(second_request_id)
    refunded = await client.refund(first.rrn, 5_00, CARD)
    assert (voided.approved_cents, refunded.approved_cents) == (20_00, 5_00)
    return BatchTotals(purchases_count=2, purchases_cents=50_00, reversals_count=1,
                       reversals_cents=20_00, refunds_count=1, refunds_cents=5_00)


async def test_a_batch_that_matches_the_ledger_is_in_balance(client, conn):
    totals = await _day_of_sales(client, conn)
    closed = await client.batch_close(totals)
    assert (closed.rc, closed.batch_number, closed.differences) == ("00", 1, ())
    assert closed.ledger_totals == totals
    row = await conn.fetchrow("SELECT in_balance, terminal_totals, ledger_totals FROM terminal_batches")
    assert row["in_balance"] and row["terminal_totals"] == row["ledger_totals"]


async def test_the_next_batch_starts_after_the_close(client, conn):
    await client.batch_close(await _day_of_sales(client, conn))
    sale = await client.purchase(CARD, 1_00)
    closed = await client.batch_close(BatchTotals(purchases_count=1, purchases_cents=1_00))
    assert sale.approved and (closed.rc, closed.batch_number) == ("00", 2)


async def test_an_out_of_balance_batch_lists_its_differences_and_still_closes(client, conn):
    totals = await _day_of_sales(client, conn)
    claimed = BatchTotals(purchases_count=2, purchases_cents=70_00, reversals_count=0,
                          reversals_cents=0, refunds_count=1, refunds_cents=5_00)
    closed = await client.batch_close(claimed)
    assert closed.rc == "95" and closed.ledger_totals == totals
    assert {(d.field, d.terminal, d.ledger) for d in closed.differences} == {
        ("purchases_cents", 70_00, 50_00), ("reversals_count", 0, 1),
        ("reversals_cents", 0, 20_00)}
    again = await client.batch_close(BatchTotals())
    assert (again.rc, again.batch_number, again.ledger_totals) == ("00", 2, BatchTotals())


async def test_a_retried_close_replays_and_other_terminals_do_not_count(client, terminal, conn):
    await _day_of_sales(client, conn)
    async with terminal(CROWD_TERMINALS[0]) as neighbour:
        await neighbour.purchase(CARD, 1_00)
        neighbour_close = await neighbour.batch_close(BatchTotals(purchases_count=1, purchases_cents=1_00))
    assert neighbour_close.rc == "00"
    request = client.batch_close_request(BatchTotals())
    first, second = await client.send(request), await client.send(request)
    assert first == second and first.rc == "95"
    assert await conn.fetchval("SELECT count(*) FROM terminal_batches") == 2


HELD_REQUEST_ID = "held-by-the-test"
HOLD_LOCK_KEY = 15_006
LOCK_WAIT_POLLS = 2_000


async def _wait_until_blocked(conn, holder) -> None:
    """Until some session of this database waits on a lock that `holder` holds (polled)."""
    for _ in range(LOCK_WAIT_POLLS):
        if await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE datname = current_database()"
                " AND $1 = ANY (pg_blocking_pids(pid)))", holder.get_server_pid()):
            return
        await asyncio.sleep(0.005)
    pytest.fail("the expected lock wait never happened")


async def test_a_sale_with_a_lower_id_committing_after_the_close_is_in_the_next_batch(client, conn,
                                                                                     dsn):
    """A sale's authorization id is drawn when its row is inserted, and its transaction commits
    a little later; a close can commit in between (nothing serialises the two when the server
    runs without authentication, or across a key rotation). Counting by id range then lost that
    sale for ever: it is below the close's id, and invisible to the close. Here the sale (the
    real authorize_purchase, authentication off) is held on a lock between drawing its id and
    committing, while the terminal closes its batch."""
    await set_balance(conn, CARD, 50_00)
    await conn.execute(f"""
        CREATE FUNCTION hold_test_insert() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.request_id = '{HELD_REQUEST_ID}' THEN
                PERFORM pg_advisory_xact_lock_shared({HOLD_LOCK_KEY});
            END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER hold_test_insert BEFORE INSERT ON authorizations
            FOR EACH ROW EXECUTE FUNCTION hold_test_insert();""")
    holder, seller = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
    try:
        await holder.execute("SELECT pg_advisory_lock($1)", HOLD_LOCK_KEY)
        sale = asyncio.ensure_future(seller.fetchval(
            "SELECT authorize_purchase($1, $2, $3, 1, $4, $5, NULL, false, NULL, NULL)",
            ACTIVE_TERMINAL, HELD_REQUEST_ID, b"held", CARD, 3_00))
        await _wait_until_blocked(conn, holder)
        first = await client.batch_close(BatchTotals())
        await holder.execute("SELECT pg_advisory_unlock($1)", HOLD_LOCK_KEY)
        assert json.loads(await sale)["rc"] == "00"
    finally:
        await holder.close()
        await seller.close()
    held_id, first_close_id = await conn.fetchval(
        "SELECT id FROM authorizations WHERE request_id = $1", HELD_REQUEST_ID), await conn.fetchval(
        "SELECT close_authorization_id FROM terminal_batches WHERE batch_number = 1")
    assert held_id < first_close_id            # the order that lost the sale
    second = await client.batch_close(BatchTotals(purchases_count=1, purchases_cents=3_00))
    assert (first.rc, first.ledger_totals) == ("00", BatchTotals())
    assert (second.rc, second.batch_number, second.ledger_totals) == (
        "00", 2, BatchTotals(purchases_count=1, purchases_cents=3_00))
