"""Many taps at once on one card: the balance condition inside the UPDATE never lets two debits
overspend, and a reversal racing its original restores the wallet exactly once."""

from __future__ import annotations

import asyncio

from ledger.demo_region import card_uid, terminal_id
from terminal_protocol.client import TerminalClient

from conftest import balance_of, set_balance

HOT = card_uid(5)
CONCURRENT_PURCHASES = 200
AFFORDABLE = 57
AMOUNT_CENTS = 1_75


async def test_200_concurrent_purchases_on_a_card_that_covers_57(server, conn):
    await set_balance(conn, HOT, AFFORDABLE * AMOUNT_CENTS)
    terminals = [terminal_id(p, 1) for p in range(1, 10)]
    clients = [TerminalClient(server.url, t) for t in terminals]
    for c in clients:
        await c.__aenter__()
    try:
        answers = await asyncio.gather(*(
            clients[i % len(clients)].purchase(HOT, AMOUNT_CENTS, partial_ok=False)
            for i in range(CONCURRENT_PURCHASES)))
    finally:
        for c in clients:
            await c.__aexit__(None, None, None)
    codes = [a.rc for a in answers]
    assert codes.count("00") == AFFORDABLE
    assert codes.count("51") == CONCURRENT_PURCHASES - AFFORDABLE
    assert await balance_of(conn, HOT) == 0
    assert await conn.fetchval("SELECT count(*) FROM transfers WHERE code = 'PURCHASE'") == AFFORDABLE


async def test_concurrent_partial_approvals_never_overspend(client, conn):
    await set_balance(conn, HOT, 10_00)
    answers = await asyncio.gather(*(client.purchase(HOT, 3_00, partial_ok=True) for _ in range(20)))
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
        # purchase was then refused as a duplicate of a reversed id.
        assert (original.rc, reversal.rc) in (("00", "00"), ("94", "25"))
        if reversal.rc == "00":
            assert reversal.approved_cents == 2_00
    assert await balance_of(conn, HOT) == before
