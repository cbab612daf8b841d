"""Races between the hot path and the region's own work on the same rows: an opposition
committed while a purchase waits on the wallet, operator work on a terminal, a wallet row held
for long. Each waits on a real lock of the real database, observed in pg_stat_activity."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from backoffice.provisioning import rotate_terminal_key
from ledger.demo_region import card_uid

from conftest import ACTIVE_TERMINAL, balance_of

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


async def test_a_key_rotation_waiting_on_the_audit_trail_does_not_stall_the_till(client, conn, dsn,
                                                                                  hsm):
    """Another operator transaction holds the audit trail's head; a key rotation of the till's
    terminal waits on it. The till keeps selling meanwhile (before: its insert's foreign-key
    lock waited behind the rotation's FOR UPDATE on the terminal row until it timed out, 91)."""
    auditor = await asyncpg.connect(dsn)
    rotator = await asyncpg.connect(dsn)
    try:
        audit = auditor.transaction()
        await audit.start()
        await auditor.execute("SELECT append_audit('test', 'test.hold', 'test', NULL, NULL)")
        rotation = asyncio.ensure_future(rotate_terminal_key(rotator, hsm, ACTIVE_TERMINAL))
        await _wait_until_blocked(conn, auditor)
        response = await client.purchase(CARD, 1_00)
        await audit.rollback()
        await rotation
    finally:
        await auditor.close()
        await rotator.close()
    assert response.rc == "00"
