"""Settlement per partner and Paris business day: purchases − reversals − refunds, paid by
SETTLEMENT transfers out of the merchant payable account, once per day, closed days only, a
negative day carried as a debt. LedgerTill is shared with the payout and report tests."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from ledger.clock import pin_clock
from ledger.demo_region import card_uid, terminal_id
from ledger.settlement import SettlementRefused, get_run, run_lines, settle

from conftest import paris

ACTOR = "cli:test"
BENCH_TIMEOUT_S = 120
_request_numbers = itertools.count(1)


class LedgerTill:
    """Terminal messages straight into the ledger's functions (no KSN, no HTTP): the settlement
    reads what they leave, so their exact path to the database does not matter here. Each call
    first pins the business clock to the moment given."""

    def __init__(self, conn: asyncpg.Connection, terminal: str) -> None:
        self.conn, self.terminal = conn, terminal

    async def _call(self, at: dt.datetime, sql: str, *args) -> dict:
        await pin_clock(self.conn, at)
        request_id = f"settle-{next(_request_numbers)}"
        answer = await self.conn.fetchval(sql, self.terminal, request_id, os.urandom(32),
                                          next(_request_numbers) % 999_999, *args)
        return {**json.loads(answer), "request_id": request_id}

    async def purchase(self, card: int, cents: int, at: dt.datetime, expect: str = "00") -> dict:
        answer = await self._call(
            at, "SELECT authorize_purchase($1, $2, $3, $4, $5, $6, NULL, false, NULL, NULL)",
            card_uid(card), cents)
        assert answer["rc"] == expect, answer
        return {**answer, "card": card_uid(card)}     # a refund goes back to this card

    async def reversal(self, original: dict, at: dt.datetime) -> dict:
        return await self._call(at, "SELECT authorize_reversal($1, $2, $3, $4, $5, NULL, NULL)",
                                original["request_id"])

    async def refund(self, original: dict, cents: int, at: dt.datetime, expect: str = "00") -> dict:
        answer = await self._call(
            at, "SELECT authorize_refund($1, $2, $3, $4, $5, $6, $7, NULL, NULL)", original["rrn"],
            cents, original["card"])
        assert answer["rc"] == expect, answer
        return answer


async def merchant_balance(conn, partner_id: int) -> int:
    """credits − debits of the partner's merchant account, from the journal."""
    return await conn.fetchval(
        "SELECT coalesce(sum(CASE WHEN t.credit_account_id = p.merchant_account_id"
        " THEN t.amount_cents ELSE -t.amount_cents END), 0) FROM partners p JOIN transfers t"
        " ON p.merchant_account_id IN (t.credit_account_id, t.debit_account_id) WHERE p.id = $1",
        partner_id)


async def a_day_with_a_refund_and_a_reversal(conn) -> None:
    """Partner 1 on 24 Nov 2026: sales of 30 €, 20 € and 12.50 € (the last at 23:59:59), the
    20 € voided, 5 € of the 30 € refunded; partner 2: 7 €; partner 1 on the 25th: 4 €."""
    shop, other = LedgerTill(conn, terminal_id(1, 1)), LedgerTill(conn, terminal_id(2, 1))
    books = await shop.purchase(5, 30_00, paris(2026, 11, 24, 9, 0))
    voided = await shop.purchase(6, 20_00, paris(2026, 11, 24, 9, 5))
    assert (await shop.reversal(voided, paris(2026, 11, 24, 9, 6)))["approved_cents"] == 20_00
    await shop.refund(books, 5_00, paris(2026, 11, 24, 16, 0))
    await shop.purchase(7, 12_50, paris(2026, 11, 24, 23, 59, 59))
    await other.purchase(8, 7_00, paris(2026, 11, 24, 11, 0))
    await shop.purchase(9, 4_00, paris(2026, 11, 25, 0, 0, 0))
    await pin_clock(conn, paris(2026, 11, 26, 10, 0))


async def test_a_day_with_a_refund_and_a_reversal_settles_its_exact_net(conn):
    await a_day_with_a_refund_and_a_reversal(conn)
    await conn.execute("UPDATE partners SET status = 'SUSPENDED' WHERE id = 2")  # still paid
    outcome = await settle(conn, actor=ACTOR, through_day=dt.date(2026, 11, 24))
    assert outcome.created and outcome.run.through_day == dt.date(2026, 11, 24)
    lines = {line.partner_id: line for line in await run_lines(conn, outcome.run.run_id)}
    assert set(lines) == {1, 2}
    shop = lines[1]
    assert (shop.purchases_count, shop.purchases_cents) == (3, 62_50)
    assert (shop.reversals_count, shop.reversals_cents) == (1, 20_00)
    assert (shop.refunds_count, shop.refunds_cents) == (1, 5_00)
    assert (shop.net_cents, shop.paid_cents, shop.debt_after_cents) == (37_50, 37_50, 0)
    assert (lines[2].net_cents, lines[2].paid_cents) == (7_00, 7_00)
    assert (outcome.run.paid_cents, outcome.run.payments, outcome.run.transactions) == (44_50, 2, 6)

    transfers = await conn.fetch(
        "SELECT t.debit_account_id, t.credit_account_id, t.amount_cents, a.kind"
        " FROM transfers t JOIN accounts a ON a.id = t.credit_account_id"
        " WHERE t.code = 'SETTLEMENT' ORDER BY t.amount_cents DESC")
    merchant_1 = await conn.fetchval("SELECT merchant_account_id FROM partners WHERE id = 1")
    assert [(t["debit_account_id"], t["amount_cents"], t["kind"]) for t in transfers] == [
        (merchant_1, 37_50, "SETTLEMENT_BANK"), (transfers[1]["debit_account_id"], 7_00, "SETTLEMENT_BANK")]
    # The 25th is not in the run: what the merchant account still holds is exactly that day.
    assert await merchant_balance(conn, 1) == 4_00
    assert await merchant_balance(conn, 2) == 0
    audit = await conn.fetchrow("SELECT actor, subject, after FROM audit_log WHERE action = 'settlement.run'")
    assert (audit["actor"], audit["subject"]) == (ACTOR, f"settlement_run:{outcome.run.run_id}")
    assert json.loads(audit["after"])["paid_cents"] == 44_50


async def test_the_business_day_is_the_paris_date_across_a_dst_change(conn):
    """00:30 in Paris on 25 Oct 2026 (the night clocks go back) is still 24 Oct in UTC."""
    shop = LedgerTill(conn, terminal_id(3, 1))
    await shop.purchase(5, 3_00, paris(2026, 10, 24, 23, 59, 59))
    await shop.purchase(6, 5_00, paris(2026, 10, 25, 0, 30))
    await shop.purchase(7, 8_00, paris(2026, 10, 25, 23, 30))   # 22:30 UTC, after the change
    await pin_clock(conn, paris(2026, 10, 27, 9, 0))
    run = (await settle(conn, actor=ACTOR)).run
    assert run.through_day == dt.date(2026, 10, 26)                # default: yesterday
    days = {line.business_day: line.net_cents for line in await run_lines(conn, run.run_id)}
    assert days == {dt.date(2026, 10, 24): 3_00, dt.date(2026, 10, 25): 13_00}


async def test_settling_a_day_twice_moves_nothing_more(conn):
    await a_day_with_a_refund_and_a_reversal(conn)
    first = await settle(conn, actor=ACTOR, through_day=dt.date(2026, 11, 24))
    again = await settle(conn, actor="cli:someone-else", through_day=dt.date(2026, 11, 24))
    earlier = await settle(conn, actor=ACTOR, through_day=dt.date(2026, 11, 20))
    assert not again.created and not earlier.created
    assert again.run == first.run and earlier.run == first.run
    assert await conn.fetchval("SELECT count(*) FROM transfers WHERE code = 'SETTLEMENT'") == 2
    assert await conn.fetchval("SELECT count(*) FROM audit_log WHERE action = 'settlement.run'") == 1
    # The next day is a new run that starts where the first one stopped.
    nxt = await settle(conn, actor=ACTOR, through_day=dt.date(2026, 11, 25))
    assert nxt.created and nxt.run.first_day == dt.date(2026, 11, 25)
    assert [(l.partner_id, l.paid_cents) for l in await run_lines(conn, nxt.run.run_id)] == [(1, 4_00)]
    assert await merchant_balance(conn, 1) == 0


async def test_concurrent_runs_settle_a_day_once(dsn, conn):
    await a_day_with_a_refund_and_a_reversal(conn)
    others = [await asyncpg.connect(dsn) for _ in range(4)]
    try:
        outcomes = await asyncio.gather(*(settle(c, actor=f"cli:op{n}", through_day=dt.date(2026, 11, 24))
                                          for n, c in enumerate(others)))
    finally:
        for c in others:
            await c.close()
    assert sum(o.created for o in outcomes) == 1
    assert len({o.run.run_id for o in outcomes}) == 1
    assert await conn.fetchval("SELECT sum(amount_cents) FROM transfers WHERE code = 'SETTLEMENT'") == 44_50


async def test_a_day_not_yet_closed_is_refused(conn):
    await a_day_with_a_refund_and_a_reversal(conn)
    for day in (dt.date(2026, 11, 26), dt.date(2026, 11, 27)):           # today, tomorrow
        with pytest.raises(SettlementRefused, match="not closed yet"):
            await settle(conn, actor=ACTOR, through_day=day)
    await pin_clock(conn, paris(2026, 11, 26, 23, 59, 59))
    with pytest.raises(SettlementRefused, match="not closed yet"):
        await settle(conn, actor=ACTOR, through_day=dt.date(2026, 11, 26))
    assert await conn.fetchval("SELECT count(*) FROM settlement_runs") == 0
    await pin_clock(conn, paris(2026, 11, 27, 0, 4, 59))     # a purchase may still be committing
    with pytest.raises(SettlementRefused, match="from 00:05:00 after its midnight"):
        await settle(conn, actor=ACTOR, through_day=dt.date(2026, 11, 26))
    assert (await settle(conn, actor=ACTOR)).run.through_day == dt.date(2026, 11, 25)
    await pin_clock(conn, paris(2026, 11, 27, 0, 5))                     # the 26th is closed
    assert (await settle(conn, actor=ACTOR)).run.through_day == dt.date(2026, 11, 26)


async def test_a_partner_with_only_refunds_carries_a_debt_to_its_next_days(conn):
    shop = LedgerTill(conn, terminal_id(3, 1))
    sale = await shop.purchase(5, 50_00, paris(2026, 11, 20, 10, 0))
    await pin_clock(conn, paris(2026, 11, 21, 8, 0))
    assert (await settle(conn, actor=ACTOR)).run.paid_cents == 50_00

    await shop.refund(sale, 20_00, paris(2026, 11, 22, 10, 0))          # only a refund: −20 €
    await shop.purchase(6, 15_00, paris(2026, 11, 23, 10, 0))           # +15 €: still 5 € owed
    await pin_clock(conn, paris(2026, 11, 24, 8, 0))
    run = (await settle(conn, actor=ACTOR)).run
    lines = await run_lines(conn, run.run_id)
    assert [(l.business_day.day, l.net_cents, l.debt_before_cents, l.paid_cents, l.debt_after_cents,
             l.transfer_id) for l in lines] == [(22, -20_00, 0, 0, 20_00, None),
                                                (23, 15_00, 20_00, 0, 5_00, None)]
    assert (run.paid_cents, run.payments, run.debt_carried_cents) == (0, 0, 5_00)
    assert await merchant_balance(conn, 3) == -5_00

    await shop.purchase(7, 30_00, paris(2026, 11, 24, 10, 0))           # the debt is deducted
    await pin_clock(conn, paris(2026, 11, 25, 8, 0))
    run = (await settle(conn, actor=ACTOR)).run
    [line] = await run_lines(conn, run.run_id)
    assert (line.net_cents, line.debt_before_cents, line.paid_cents, line.debt_after_cents) == (
        30_00, 5_00, 25_00, 0)
    assert await merchant_balance(conn, 3) == 0


async def test_one_run_over_many_days_pays_as_day_by_day_runs_would(conn):
    shop = LedgerTill(conn, terminal_id(4, 1))
    sale = await shop.purchase(5, 40_00, paris(2026, 11, 20, 10, 0))
    await shop.refund(sale, 40_00, paris(2026, 11, 21, 10, 0))
    await shop.purchase(6, 10_00, paris(2026, 11, 22, 10, 0))
    await shop.purchase(7, 60_00, paris(2026, 11, 23, 10, 0))
    await pin_clock(conn, paris(2026, 11, 24, 8, 0))
    run = (await settle(conn, actor=ACTOR, through_day=dt.date(2026, 11, 23))).run
    assert [(l.business_day.day, l.paid_cents, l.debt_after_cents)
            for l in await run_lines(conn, run.run_id)] == [(20, 40_00, 0), (21, 0, 40_00),
                                                            (22, 0, 30_00), (23, 30_00, 0)]
    assert await merchant_balance(conn, 4) == 0


async def test_settlement_rows_and_transfers_are_immutable_and_unique(conn):
    await a_day_with_a_refund_and_a_reversal(conn)
    run = (await settle(conn, actor=ACTOR, through_day=dt.date(2026, 11, 24))).run
    for statement in ("UPDATE settlement_lines SET paid_cents = 0",
                      "DELETE FROM settlement_runs", "UPDATE settlement_runs SET through_day = '2026-11-01'"):
        with pytest.raises(asyncpg.IntegrityConstraintViolationError, match="immutable"):
            await conn.execute(statement)
    with pytest.raises(asyncpg.UniqueViolationError):
        await conn.execute(
            "INSERT INTO transfers (code, debit_account_id, credit_account_id, amount_cents, reference)"
            " SELECT 'SETTLEMENT', debit_account_id, credit_account_id, amount_cents, reference"
            " FROM transfers WHERE code = 'SETTLEMENT' LIMIT 1")
    assert (await get_run(conn, run.run_id)).paid_cents == 44_50


async def test_an_empty_run_is_recorded_and_moves_nothing(conn):
    run = (await settle(conn, actor=ACTOR)).run
    assert (run.lines, run.paid_cents, run.first_day) == (0, 0, None)
    assert run.through_day == dt.date(2026, 11, 25)
    assert await conn.fetchval("SELECT count(*) FROM transfers WHERE code = 'SETTLEMENT'") == 0


def test_the_benchmark_runs_and_checks_itself(pg_cluster, tmp_path):
    """loadtest/bench_settlement.py at a small size, on a database of its own on the test
    cluster: it must settle every transaction it seeded and find nothing wrong."""
    output = tmp_path / "settlement-results.json"
    result = subprocess.run(
        [sys.executable, "loadtest/bench_settlement.py", "--transactions", "3000", "--partners", "7",
         "--days", "2", "--wallets", "300", "--output", str(output)],
        capture_output=True, text=True, timeout=BENCH_TIMEOUT_S, stdin=subprocess.DEVNULL,
        cwd=Path(__file__).parent.parent,
        env={**os.environ, "DATABASE_URL": pg_cluster.dsn_for("postgres")})
    assert result.returncode == 0, result.stdout + result.stderr
    figures = json.loads(output.read_text())
    assert figures["settled_transactions"] == figures["transactions"] > 2_900
    assert (figures["lines"], figures["problems"], figures["second_run_moved_nothing"]) == (14, [], True)
    assert result.stdout.splitlines()[-1].endswith(" ok")
