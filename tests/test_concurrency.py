"""Many taps at once on one card: the balance condition inside the UPDATE never lets two debits
overspend, and a reversal racing its original restores the wallet exactly once."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses

import asyncpg
import pytest

from ledger.demo_region import card_uid

from conftest import CROWD_TERMINALS, balance_of, set_balance

HOT = card_uid(5)
UNGATED_IN_FLIGHT_PER_CARD = 1_000    # more than any crowd these tests send
CONCURRENT_PURCHASES = 200
AFFORDABLE = 57
AMOUNT_CENTS = 1_75


@pytest.fixture
def settings(settings):
    """The ledger's own guarantees under a crowd on one card, without the server's per-card gate
    (authorizer/card_gate.py) in front of it: they must hold without it."""
    return dataclasses.replace(settings, max_in_flight_per_card=UNGATED_IN_FLIGHT_PER_CARD)


async def _crowd(terminal, count: int, send):
    """`count` terminals each sending one message at the same time."""
    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(terminal(t)) for t in CROWD_TERMINALS[:count]]
        return await asyncio.gather(*(send(c) for c in clients))


async def test_200_concurrent_purchases_on_a_card_that_covers_57(terminal, conn):
    await set_balance(conn, HOT, AFFORDABLE * AMOUNT_CENTS)
    answers = await _crowd(terminal, CONCURRENT_PURCHASES,
                           lambda c: c.purchase(HOT, AMOUNT_CENTS, partial_ok=False))
    codes = [a.rc for a in answers]
    assert codes.count("00") == AFFORDABLE
    assert codes.count("51") == CONCURRENT_PURCHASES - AFFORDABLE
    assert await balance_of(conn, HOT) == 0
    assert await conn.fetchval("SELECT count(*) FROM transfers WHERE code = 'PURCHASE'") == AFFORDABLE


async def test_concurrent_partial_approvals_never_overspend(terminal, conn):
    await set_balance(conn, HOT, 10_00)
    answers = await _crowd(terminal, 20, lambda c: c.purchase(HOT, 3_00, partial_ok=True))
    assert sum(a.approved_cents for a in answers) == 10_00
    assert sorted(a.rc for a in answers if a.rc != "51") == ["00", "00", "00", "10"]
    assert await balance_of(conn, HOT) == 0


async def test_reversal_sent_with_its_original_restores_once(client, conn):
    before = await balance_of(conn, HOT)
    outcomes = []
    for _ in range(25):
        purchase = client.purchase_request(HOT, 2_00)
        original, reversal = await asyncio.gather(
            client.send(purchase), client.reversal(purchase.request_id))
        outcomes.append((original.rc, reversal.rc))
        # Either the reversal found the purchase and undid it, or it came first and the
        # purchase was then refused as a duplicate of a reversed id, or its lower KSN counter
        # was overtaken by the reversal's (63): in every case nothing stays debited.
        assert (original.rc, reversal.rc) in (("00", "00"), ("94", "25"), ("63", "25"))
        if reversal.rc == "00":
            assert reversal.approved_cents == 2_00
    assert await balance_of(conn, HOT) == before


async def _blocked_on_a_lock(dsn: str) -> None:
    """Wait, bounded, until some session of the database waits on a row lock."""
    watcher = await asyncpg.connect(dsn)
    try:
        async with asyncio.timeout(10):
            while not await watcher.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND datname = current_database()"):
                await asyncio.sleep(0.01)
    finally:
        await watcher.close()


async def test_a_credit_landing_during_a_short_purchase_never_approves_more_than_asked(
        client, conn, dsn):
    """The purchase finds 5 € in its snapshot while a 100 € reload is committing: it must take
    10 € (the amount asked) from the new balance, not everything."""
    await set_balance(conn, HOT, 5_00)
    beneficiary = await conn.fetchval("SELECT beneficiary_id FROM cards WHERE uid = $1", HOT)
    reload = conn.transaction()
    await reload.start()
    await conn.execute("SELECT reload_wallet($1, 2026, 10000, 'racing-reload')", beneficiary)
    purchase = asyncio.ensure_future(client.purchase(HOT, 10_00, partial_ok=True))
    await _blocked_on_a_lock(dsn)
    await reload.commit()
    response = await purchase
    assert (response.rc, response.approved_cents, response.balance_cents) == ("00", 10_00, 95_00)
    assert await balance_of(conn, HOT) == 95_00
