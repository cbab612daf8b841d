"""Batch close: the terminal's day totals against what the ledger approved for it."""

from __future__ import annotations

from ledger.demo_region import card_uid

from conftest import CROWD_TERMINALS, set_balance
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
