"""Establishments (lycées, LP, CFA) by their UAI, the national establishment code."""

from __future__ import annotations

import asyncpg


async def establishment_id(conn: asyncpg.Connection, uai: str) -> int | None:
    """The establishment's id; None when no establishment has this UAI (case-insensitive)."""
    return await conn.fetchval("SELECT id FROM establishments WHERE uai = $1", uai.upper())
