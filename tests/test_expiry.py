"""Expiry on 1 May 00:00 Europe/Paris: the closed school year's balances move to the expired-funds
account, once, never before; a purchase racing with it is either before it or declined; a
reversal after 1 May does not bring spendable money back."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import subprocess
import sys

import asyncpg
import pytest

from ledger.clock import pin_clock
from ledger.demo_region import card_uid
from ledger.expiry import ExpiryRefused, expire_school_year, last_closed_school_year

from conftest import ACTIVE_TERMINAL, CROWD_TERMINALS, PARIS, TEST_SCHOOL_YEAR, balance_of, paris, set_balance
from systemd_units import calendar_elapses, oneshot_timer_calendar

YEAR = TEST_SCHOOL_YEAR
CARD = card_uid(5)
ACTOR = "cli:test"
LAST_SECOND = paris(YEAR + 1, 4, 30, 23, 59, 59)
CLOSING = paris(YEAR + 1, 5, 1, 0, 0, 0)
LOCK_WAIT_POLLS = 2_000
EARLY_SALES = 20
COMMAND_TIMEOUT_S = 120
PURCHASE_SQL = "SELECT authorize_purchase($1, $2, '\\x00'::bytea, 1, $3, $4, NULL, false, NULL, NULL)"


async def _expired_funds(conn) -> int:
    return await conn.fetchval(
        "SELECT coalesce(sum(CASE WHEN credit_account_id = a.id THEN amount_cents ELSE -amount_cents END), 0)"
        " FROM transfers t JOIN accounts a ON a.kind = 'EXPIRED_FUNDS'"
        " WHERE a.id IN (t.credit_account_id, t.debit_account_id)")


async def _positive_wallets(conn, year: int = YEAR) -> tuple[int, int]:
    row = await conn.fetchrow(
        "SELECT count(*), coalesce(sum(a.credits_posted - a.debits_posted), 0) FROM wallets w"
        " JOIN accounts a ON a.id = w.account_id WHERE w.school_year = $1"
        " AND a.credits_posted > a.debits_posted", year)
    return row[0], row[1]


async def _wait_blocked(conn, waiting_pids: list[int], holder_pid: int) -> None:
    """Until every waiting backend waits on a lock, holder_pid's or (queued behind the first)
    another waiter's (a condition, polled)."""
    for _ in range(LOCK_WAIT_POLLS):
        if await conn.fetchval(
                "SELECT bool_and(pg_blocking_pids(pid) <@ ($1::integer[] || $2::integer))"
                " AND bool_and(cardinality(pg_blocking_pids(pid)) > 0)"
                " AND bool_or($2 = ANY (pg_blocking_pids(pid)))"
                " FROM unnest($1::integer[]) AS pid", waiting_pids, holder_pid):
            return
        await asyncio.sleep(0.005)
    pytest.fail("the expected lock wait never happened")


async def _expiry_transfer(conn, card: bytes):
    return await conn.fetchrow(
        "SELECT t.id, t.amount_cents FROM transfers t JOIN wallets w ON w.account_id = t.debit_account_id"
        " JOIN cards c ON c.beneficiary_id = w.beneficiary_id WHERE c.uid = $1 AND t.code = 'EXPIRY'"
        " AND t.reference = $2", card, f"expiry:{YEAR}")


@pytest.mark.parametrize("when", [paris(YEAR + 1, 4, 30, 23, 59, 59, 999_000), paris(YEAR, 11, 26, 10, 0)])
async def test_expiry_is_refused_while_the_wallets_are_open(conn, when):
    await pin_clock(conn, when)
    before = await _positive_wallets(conn)
    with pytest.raises(ExpiryRefused, match=f"open until 1 May {YEAR + 1} 00:00"):
        await expire_school_year(conn, YEAR, actor=ACTOR)
    assert await _positive_wallets(conn) == before
    assert await conn.fetchval("SELECT count(*) FROM audit_log WHERE action = 'expiry.run'") == 0


async def test_expiry_at_1_may_midnight_paris_moves_every_balance_once(conn):
    next_year = await conn.fetchrow("SELECT * FROM reload_wallet(5, $1, 4200, 'next-year')", YEAR + 1)
    wallets, cents = await _positive_wallets(conn)
    assert wallets > 200
    expired_before = await _expired_funds(conn)
    await pin_clock(conn, CLOSING)
    result = await expire_school_year(conn, YEAR, actor=ACTOR)
    assert (result.wallets_expired, result.expired_cents) == (wallets, cents)
    assert await _positive_wallets(conn) == (0, 0)
    assert await _expired_funds(conn) == expired_before + cents
    assert await conn.fetchval("SELECT count(*) FROM transfers WHERE code = 'EXPIRY' AND reference = $1",
                               f"expiry:{YEAR}") == wallets
    assert await balance_of(conn, CARD, YEAR + 1) == next_year["balance_cents"]   # not that year's
    again = await expire_school_year(conn, YEAR, actor=ACTOR)
    assert (again.wallets_expired, again.expired_cents) == (0, 0)
    assert await _expired_funds(conn) == expired_before + cents
    audits = await conn.fetch("SELECT actor, subject, after FROM audit_log"
                              " WHERE action = 'expiry.run' ORDER BY id")
    assert [(a["actor"], a["subject"], json.loads(a["after"])) for a in audits] == [
        (ACTOR, f"school_year:{YEAR}", {"wallets_expired": wallets, "expired_cents": cents}),
        (ACTOR, f"school_year:{YEAR}", {"wallets_expired": 0, "expired_cents": 0})]


@pytest.mark.parametrize("when, year", [
    (paris(YEAR, 11, 26, 10, 0), YEAR - 1),
    (LAST_SECOND, YEAR - 1),
    (CLOSING, YEAR),
    (paris(YEAR + 1, 7, 1, 0, 0), YEAR),
])
async def test_the_default_school_year_is_the_last_one_closed(conn, when, year):
    await pin_clock(conn, when)
    assert await last_closed_school_year(conn) == year


async def test_a_purchase_holding_the_wallet_stays_before_the_expiry(conn, dsn):
    """The purchase debits first (30 April 23:59:59) and holds the wallet: the expiry waits for
    it and expires only what the purchase left."""
    await set_balance(conn, CARD, 30_00)
    await pin_clock(conn, LAST_SECOND)
    buyer, expirer = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
    try:
        sale = buyer.transaction()
        await sale.start()
        answer = json.loads(await buyer.fetchval(PURCHASE_SQL, ACTIVE_TERMINAL, "race-1", CARD, 12_00))
        assert answer["rc"] == "00"
        await pin_clock(conn, CLOSING)
        expiry = asyncio.create_task(expire_school_year(expirer, YEAR, actor=ACTOR))
        await _wait_blocked(conn, [expirer.get_server_pid()], buyer.get_server_pid())
        await sale.commit()
        await expiry
    finally:
        await buyer.close()
        await expirer.close()
    expired = await _expiry_transfer(conn, CARD)
    purchase_id = await conn.fetchval("SELECT id FROM transfers WHERE code = 'PURCHASE'"
                                      " AND amount_cents = 1200 ORDER BY id DESC LIMIT 1")
    assert expired["amount_cents"] == 18_00 and purchase_id < expired["id"]
    assert await balance_of(conn, CARD) == 0


async def test_purchases_waiting_on_the_expiry_are_declined(conn, dsn):
    """The expiry (its transaction at 1 May 00:00) holds the wallet; purchases still at 30 April
    23:59:59 pass the window check, wait, then find nothing left: 51, nothing debited."""
    await set_balance(conn, CARD, 30_00)
    await pin_clock(conn, LAST_SECOND)
    expirer = await asyncpg.connect(dsn)
    buyers = [await asyncpg.connect(dsn) for _ in range(3)]
    try:
        expiry = expirer.transaction()
        await expiry.start()
        await pin_clock(expirer, CLOSING)             # seen by the expiry's transaction only
        await expire_school_year(expirer, YEAR, actor=ACTOR)
        sales = [asyncio.create_task(b.fetchval(PURCHASE_SQL, ACTIVE_TERMINAL, f"wait-{i}", CARD, 5_00))
                 for i, b in enumerate(buyers)]
        await _wait_blocked(conn, [b.get_server_pid() for b in buyers], expirer.get_server_pid())
        await expiry.commit()
        answers = [json.loads(a) for a in await asyncio.gather(*sales)]
    finally:
        for c in [expirer, *buyers]:
            await c.close()
    assert [(a["rc"], a["approved_cents"]) for a in answers] == [("51", 0)] * 3
    assert (await _expiry_transfer(conn, CARD))["amount_cents"] == 30_00
    assert await balance_of(conn, CARD) == 0


async def test_purchases_in_flight_while_the_expiry_runs(terminal, conn, dsn):
    """Many sales on 40 wallets of 10 € while the expiry runs: each is approved before it or
    declined; every wallet ends at 0 with approved + expired = 10 €."""
    cards = [card_uid(n) for n in range(10, 200) if n % 50 and n % 97 not in (1, 2, 3)][:40]
    for card in cards:
        await set_balance(conn, card, 10_00)
    await pin_clock(conn, LAST_SECOND)
    expirer = await asyncpg.connect(dsn)

    async def expire():
        """Once some sales went through, so that others are still in flight."""
        for _ in range(LOCK_WAIT_POLLS):
            if await expirer.fetchval("SELECT count(*) FROM authorizations WHERE created_at = $1"
                                      " AND response_code = '00'", LAST_SECOND) >= EARLY_SALES:
                break
            await asyncio.sleep(0.001)
        else:
            raise AssertionError("the sales never started")
        async with expirer.transaction():
            await pin_clock(expirer, CLOSING)
            return await expire_school_year(expirer, YEAR, actor=ACTOR)

    try:
        async with contextlib.AsyncExitStack() as stack:
            clients = [await stack.enter_async_context(terminal(t)) for t in CROWD_TERMINALS[:160]]
            results = await asyncio.gather(
                *(c.purchase(cards[i % len(cards)], 3_00, partial_ok=False)
                  for i, c in enumerate(clients)), expire())
    finally:
        await expirer.close()
    answers = results[:-1]
    assert {a.rc for a in answers} <= {"00", "51", "54"}
    assert [a.rc for a in answers].count("00") >= EARLY_SALES
    approved_after = await conn.fetchval(
        "SELECT count(*) FROM authorizations WHERE message_type = 'PURCHASE' AND amount_approved_cents > 0"
        " AND created_at >= $1", CLOSING)
    assert approved_after == 0
    for card in cards:
        expired = await _expiry_transfer(conn, card)
        sold = await conn.fetch(
            "SELECT t.id, t.amount_cents FROM transfers t JOIN wallets w ON w.account_id = t.debit_account_id"
            " JOIN cards c ON c.beneficiary_id = w.beneficiary_id WHERE c.uid = $1 AND t.code = 'PURCHASE'"
            " AND w.school_year = $2", card, YEAR)
        assert all(s["id"] < expired["id"] for s in sold), "a purchase approved after the expiry"
        assert sum(s["amount_cents"] for s in sold) + expired["amount_cents"] == 10_00
        assert await balance_of(conn, card) == 0
    assert sum(a.approved_cents for a in answers) == await conn.fetchval(
        "SELECT coalesce(sum(amount_cents), 0) FROM transfers WHERE code = 'PURCHASE' AND created_at >= $1",
        paris(YEAR + 1, 4, 30))


async def test_a_reversal_after_1_may_credits_the_expired_funds_not_the_wallet(client, conn):
    await set_balance(conn, CARD, 30_00)
    await pin_clock(conn, LAST_SECOND)
    sale = client.purchase_request(CARD, 12_00)
    assert (await client.send(sale)).rc == "00"
    await pin_clock(conn, CLOSING)
    await expire_school_year(conn, YEAR, actor=ACTOR)
    expired_before = await _expired_funds(conn)
    reversal = await client.reversal(sale.request_id)
    assert (reversal.rc, reversal.approved_cents, reversal.balance_cents) == ("00", 12_00, None)
    assert await balance_of(conn, CARD) == 0
    assert await _expired_funds(conn) == expired_before + 12_00
    assert (await client.reversal(sale.request_id)).approved_cents == 0     # once only
    assert (await expire_school_year(conn, YEAR, actor=ACTOR)).expired_cents == 0


async def test_a_reversal_after_1_may_before_the_expiry_run_is_not_spendable_either(client, conn):
    await set_balance(conn, CARD, 30_00)
    await pin_clock(conn, LAST_SECOND)
    sale = client.purchase_request(CARD, 12_00)
    await client.send(sale)
    await pin_clock(conn, CLOSING)
    assert (await client.reversal(sale.request_id)).approved_cents == 12_00
    assert await balance_of(conn, CARD) == 18_00
    expired_before = await _expired_funds(conn)
    result = await expire_school_year(conn, YEAR, actor=ACTOR)
    assert (await _expiry_transfer(conn, CARD))["amount_cents"] == 18_00
    assert await _expired_funds(conn) == expired_before + result.expired_cents


async def test_a_reversal_on_the_last_second_still_credits_the_wallet(client, conn):
    await set_balance(conn, CARD, 30_00)
    await pin_clock(conn, LAST_SECOND)
    sale = client.purchase_request(CARD, 12_00)
    await client.send(sale)
    await pin_clock(conn, paris(YEAR + 1, 4, 30, 23, 59, 59, 999_999))
    reversal = await client.reversal(sale.request_id)
    assert (reversal.approved_cents, reversal.balance_cents) == (12_00, 30_00)


def test_the_timer_runs_hdfpay_expire_daily_paris_time():
    calendar = oneshot_timer_calendar("hdfpay-expiry", ["expire"])
    assert calendar.endswith("Europe/Paris")
    # Whatever the machine's date: every elapse is 00:05 Paris time, one day after the other.
    paris = [e.replace(tzinfo=dt.timezone.utc).astimezone(PARIS)
             for e in calendar_elapses(calendar)]
    assert all((e.hour, e.minute) == (0, 5) for e in paris), paris
    assert [(b.date() - a.date()).days for a, b in zip(paris, paris[1:])] == [1, 1]


def _hdfpay(dsn: str, *args: str):
    return subprocess.run([sys.executable, "-m", "hdfpay.cli", *args], capture_output=True,
                          text=True, timeout=COMMAND_TIMEOUT_S, stdin=subprocess.DEVNULL,
                          env={**os.environ, "DATABASE_URL": dsn})


async def test_hdfpay_expire_by_hand(conn, dsn):
    await pin_clock(conn, LAST_SECOND)
    early = _hdfpay(dsn, "expire", "--school-year", str(YEAR))
    assert early.returncode == 2 and "no expiry before" in early.stderr and "Traceback" not in early.stderr
    wallets, _ = await _positive_wallets(conn)
    await pin_clock(conn, CLOSING)
    done = _hdfpay(dsn, "expire")                       # the last school year closed: YEAR
    assert done.returncode == 0 and f"school year {YEAR}-{YEAR + 1}: {wallets} wallet(s) expired" in done.stdout
    again = _hdfpay(dsn, "expire")
    assert again.returncode == 0 and "0 wallet(s) expired" in again.stdout
