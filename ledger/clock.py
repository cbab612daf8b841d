"""Pinning the business clock (tests and the demo): the ledger reads it through business_now()."""

from __future__ import annotations

import datetime as dt

import asyncpg


async def pin_clock(conn: asyncpg.Connection, at: dt.datetime) -> None:
    if at.tzinfo is None:
        raise ValueError("pin the clock with an aware datetime (e.g. ZoneInfo('Europe/Paris'))")
    await conn.execute(
        "INSERT INTO clock_override (pinned_at) VALUES ($1) "
        "ON CONFLICT (only_row) DO UPDATE SET pinned_at = excluded.pinned_at", at)


async def unpin_clock(conn: asyncpg.Connection) -> None:
    await conn.execute("DELETE FROM clock_override")


async def business_now(conn: asyncpg.Connection) -> dt.datetime:
    return await conn.fetchval("SELECT business_now()")


async def business_local_now(conn: asyncpg.Connection) -> dt.datetime:
    """The business clock's instant as a naive Paris wall-clock time."""
    return await conn.fetchval("SELECT business_now() AT TIME ZONE 'Europe/Paris'")


async def business_today(conn: asyncpg.Connection) -> dt.date:
    """Today's Paris business date by the business clock."""
    return (await business_local_now(conn)).date()
