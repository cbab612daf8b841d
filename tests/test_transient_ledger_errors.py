"""A database error that goes away by itself (deadlock, serialization failure, lost connection,
too many connections, a lock not granted in time) is 91: the terminal retries or reverses. Only
what will not go away is 96. And the RRN sequence coming back to a number already used is no
error at all."""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path

import asyncpg

from hdfpay.server import running_server
from ledger.authorization_store import IDEMPOTENCY_CONSTRAINT
from ledger.demo_region import card_uid
from terminal_protocol.client import TerminalClient

from conftest import ACTIVE_TERMINAL, balance_of

CARD = card_uid(5)
ROOT = Path(__file__).resolve().parent.parent
LOCK_WAIT_POLLS = 2_000


async def _wait_until_blocked(conn: asyncpg.Connection, holder: asyncpg.Connection) -> None:
    for _ in range(LOCK_WAIT_POLLS):
        if await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE datname = current_database()"
                " AND $1 = ANY (pg_blocking_pids(pid)))", holder.get_server_pid()):
            return
        await asyncio.sleep(0.005)
    raise AssertionError("the expected lock wait never happened")


async def test_a_purchase_chosen_as_deadlock_victim_answers_91(settings, dsn, hsm, keys_for, conn,
                                                              caplog):
    """The purchase holds its terminal key's row and waits for the wallet; another session holds
    the wallet and asks for the key's row. PostgreSQL aborts the purchase: its deadlock check
    comes first (this database's sessions check after 100 ms, before the hot path's
    lock_timeout; the other session only after an hour)."""
    database = await conn.fetchval("SELECT current_database()")
    await conn.execute(f'ALTER DATABASE "{database}" SET deadlock_timeout = \'100ms\'')
    wallet = await conn.fetchval(
        "SELECT w.account_id FROM cards c JOIN wallets w ON w.beneficiary_id = c.beneficiary_id"
        " AND w.school_year = 2026 WHERE c.uid = $1", CARD)
    before = await balance_of(conn, CARD)
    other = await asyncpg.connect(dsn)
    try:
        async with running_server(settings, dsn, hsm) as server, \
                TerminalClient(server.url, ACTIVE_TERMINAL, keys_for(ACTIVE_TERMINAL)) as client:
            held = other.transaction()
            await held.start()
            await other.execute("SET LOCAL deadlock_timeout = '1h'")
            await other.execute("SELECT 1 FROM accounts WHERE id = $1 FOR UPDATE", wallet)
            sale = asyncio.ensure_future(client.purchase(CARD, 1_00, partial_ok=False))
            await _wait_until_blocked(conn, other)
            await other.execute("SELECT 1 FROM terminal_keys WHERE terminal_id = $1 FOR UPDATE",
                                ACTIVE_TERMINAL)
            response = await sale
            await held.rollback()
    finally:
        await other.close()
    assert (response.type, response.rc) == ("error", "91")
    assert await balance_of(conn, CARD) == before
    assert "DeadlockDetectedError" in caplog.text, "the purchase was not the deadlock's victim"


async def test_an_rrn_already_used_is_skipped(client, conn):
    """The 8-digit sequence cycles; ten years on, a Julian date recurs. A number already in the
    ledger is skipped, not a unique violation answered 96."""
    first = await client.purchase(CARD, 1_00)
    await conn.execute("SELECT setval('rrn_sequence', $1, false)", int(first.rrn[4:]))
    second = await client.purchase(CARD, 1_00)
    assert second.rc == "00" and second.rrn != first.rrn and len(second.rrn) == 12


async def test_the_idempotency_constraint_is_named_by_the_schema(conn):
    """The store recognises the duplicate-retry by this name: it is declared, not generated."""
    migrations = "\n".join(f.read_text() for f in sorted((ROOT / "ledger" / "migrations").glob("*.sql")))
    assert IDEMPOTENCY_CONSTRAINT in migrations
    assert await conn.fetchval("SELECT contype FROM pg_constraint WHERE conname = $1",
                               IDEMPOTENCY_CONSTRAINT) == b"u"


def test_the_store_uses_no_private_asyncpg_module():
    tree = ast.parse((ROOT / "ledger" / "authorization_store.py").read_text())
    names = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    assert not any(name.startswith("_base") for name in names)
