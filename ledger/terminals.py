"""Terminals and their initial keys as rows: what provisioning, the terminal listener's metrics
and the CLI read and write. Key material never reaches the database (key ids only)."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg


@dataclass(frozen=True)
class TerminalRow:
    terminal_id: str
    status: str
    partner_name: str
    # "initial key id (hex):status:last counter" of each key, empty when none was delivered yet.
    keys: tuple[str, ...]


async def partner_exists(conn: asyncpg.Connection, partner_id: int) -> bool:
    return await conn.fetchval("SELECT EXISTS (SELECT 1 FROM partners WHERE id = $1)", partner_id)


async def insert_terminal(conn: asyncpg.Connection, terminal_id: str, partner_id: int) -> bool:
    """A PENDING terminal; False when the id is taken."""
    return await conn.fetchval(
        "INSERT INTO terminals (id, partner_id) VALUES ($1, $2) ON CONFLICT DO NOTHING"
        " RETURNING true", terminal_id, partner_id) is not None


async def lock_terminal_status(conn: asyncpg.Connection, terminal_id: str) -> str | None:
    """The terminal's status, its row locked until the transaction ends; None when unknown.

    NO KEY UPDATE, not UPDATE: every authorization's insert takes KEY SHARE on its terminal row
    (the foreign key), which UPDATE would make wait behind this operator transaction."""
    return await conn.fetchval("SELECT status FROM terminals WHERE id = $1 FOR NO KEY UPDATE",
                               terminal_id)


async def set_terminal_status(conn: asyncpg.Connection, terminal_id: str, status: str) -> None:
    await conn.execute("UPDATE terminals SET status = $2 WHERE id = $1", terminal_id, status)


async def unkeyed_terminal_ids(conn: asyncpg.Connection) -> list[str]:
    return [row["id"] for row in await conn.fetch(
        "SELECT id FROM terminals t WHERE NOT EXISTS"
        " (SELECT 1 FROM terminal_keys k WHERE k.terminal_id = t.id) ORDER BY id")]


async def next_key_derivation_id(conn: asyncpg.Connection) -> int:
    """The 4 low bytes of the next initial key id: never reused, whatever the BDK."""
    return await conn.fetchval("SELECT nextval('terminal_key_derivation_id')")


async def record_initial_key(conn: asyncpg.Connection, initial_key_id: bytes,
                             terminal_id: str) -> None:
    await conn.execute("INSERT INTO terminal_keys (initial_key_id, terminal_id) VALUES ($1, $2)",
                       initial_key_id, terminal_id)


async def list_terminals(conn: asyncpg.Connection) -> list[TerminalRow]:
    rows = await conn.fetch(
        "SELECT t.id, t.status, p.name, array_remove(array_agg(encode(k.initial_key_id, 'hex')"
        " || ':' || k.status || ':' || k.last_counter ORDER BY k.initial_key_id), NULL) AS keys"
        " FROM terminals t JOIN partners p ON p.id = t.partner_id"
        " LEFT JOIN terminal_keys k ON k.terminal_id = t.id GROUP BY 1, 2, 3 ORDER BY 1")
    return [TerminalRow(r["id"], r["status"], r["name"], tuple(r["keys"])) for r in rows]


async def partner_category_of(pool: asyncpg.Pool, terminal_id: str) -> str | None:
    """BOOKSHOP or EQUIPMENT of the terminal's partner (the approved-amount metric's label)."""
    return await pool.fetchval(
        "SELECT p.category FROM terminals t JOIN partners p ON p.id = t.partner_id"
        " WHERE t.id = $1", terminal_id)
