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



async def business_local_now(conn: asyncpg.Connection) -> dt.datetime:
    """The business clock's instant as a naive wall-clock time of the business time zone."""
    return await conn.fetchval("SELECT business_now() AT TIME ZONE business_time_zone()")


async def business_today(conn: asyncpg.Connection) -> dt.date:
    """Today's business date by the business clock."""
    return await conn.fetchval("SELECT business_day_of(business_now())")
