"""Races between the hot path and the region's own work on the same rows: an opposition
committed while a purchase waits on the wallet, operator work on a terminal, a wallet row held
for long. Each waits on a real lock of the real database, observed in pg_stat_activity."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from ledger.demo_region import card_uid

from conftest import balance_of

CARD = card_uid(5)
NEW_UID = bytes.fromhex("04EE0000000015")
LOCK_WAIT_POLLS = 2_000


async def _wait_until_blocked(conn: asyncpg.Connection, holder: asyncpg.Connection) -> None:
    """Until some session of this database waits on a lock that `holder` holds (polled)."""
    for _ in range(LOCK_WAIT_POLLS):
        if await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE datname = current_database()"
                " AND $1 = ANY (pg_blocking_pids(pid)))", holder.get_server_pid()):
            return
        await asyncio.sleep(0.005)
    pytest.fail("the expected lock wait never happened")


async def test_a_purchase_waiting_on_a_replacement_sees_the_card_stolen(client, conn, dsn):
    """replace_card locks the wallet, then opposes the card. A purchase that read the card
    ACTIVE and then waited on that wallet must not debit a card committed as STOLEN."""
    card_id = await conn.fetchval("SELECT id FROM cards WHERE uid = $1", CARD)
    operator = await asyncpg.connect(dsn)
    try:
        replacement = operator.transaction()
        await replacement.start()
        await operator.execute("SELECT replace_card($1, 'STOLEN', $2, NULL, 'test')", card_id, NEW_UID)
        after_fee = await operator.fetchval(
            "SELECT a.credits_posted - a.debits_posted FROM cards c JOIN wallets w"
            " ON w.beneficiary_id = c.beneficiary_id AND w.school_year = 2026"
            " JOIN accounts a ON a.id = w.account_id WHERE c.uid = $1", CARD)
        sale = asyncio.ensure_future(client.purchase(CARD, 2_00))
        await _wait_until_blocked(conn, operator)
        await replacement.commit()
        response = await sale
    finally:
        await operator.close()
    assert (response.rc, response.approved_cents) == ("43", 0)
    assert await balance_of(conn, CARD) == after_fee
