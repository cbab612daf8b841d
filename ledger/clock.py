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

