"""The ledger's invariants, checked by the database (ledger/sql/functions/ledger_violations.sql)."""

from __future__ import annotations

import asyncpg


async def ledger_violations(conn: asyncpg.Connection) -> list[tuple[str, str]]:
    """Empty when balanced: Σ debits = Σ credits, wallet totals match the journal, no wallet
    negative, every approved amount has its transfers."""
    rows = await conn.fetch("SELECT rule, detail FROM ledger_violations() LIMIT 100")
    return [(r["rule"], r["detail"]) for r in rows]
