"""What the journal costs on disk per message: the sizing figure behind partitioning it by month
(ARCHITECTURE.md, 'Beyond one region'). The journal is the authorizations (every terminal
message and its stored answer) and the transfers (the money), each with its indexes."""

from __future__ import annotations

import asyncpg

JOURNAL_TABLES = ("authorizations", "transfers")


async def journal_footprint(conn: asyncpg.Connection) -> dict:
    """Rows and bytes (heap, TOAST and indexes) of each journal table, and bytes per terminal
    message. Row counts are exact (count(*)): run it on a bench's or a copy's database."""
    tables = {}
    for table in JOURNAL_TABLES:
        row = await conn.fetchrow(
            f"SELECT count(*) AS n, pg_total_relation_size('{table}') AS bytes,"
            f" pg_indexes_size('{table}') AS index_bytes FROM {table}")
        tables[table] = dict(row)
    messages = tables["authorizations"]["n"]
    total = sum(t["bytes"] for t in tables.values())
    return {"tables": tables, "bytes": total,
            "bytes_per_message": round(total / messages) if messages else 0}
