"""The school-year calendar, asked of the database, where it is defined once (ledger/sql/functions:
business_time_zone, school_year_starts_at, school_year_of, wallet_opens_at, wallet_closes_at,
rights_renewal_opens_at, in_wallet_window, reload_school_year). The demo, the bench and the
operator tools ask here instead of spelling 1 July, 1 May or Europe/Paris themselves.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from zoneinfo import ZoneInfo

import asyncpg


@dataclass(frozen=True)
class SchoolYearCalendar:
    """School year `school_year` (2026 = 2026-2027): its instants, aware datetimes."""

    school_year: int
    starts_at: dt.datetime                 # 1 July, 00:00 business time
    wallet_opens_at: dt.datetime
    wallet_closes_at: dt.datetime          # 1 May of the next calendar year: expiry from then
    rights_renewal_opens_at: dt.datetime   # 20 June of the year it starts in
    ends_at: dt.datetime                   # the next school year's start


async def business_time_zone(conn: asyncpg.Connection) -> ZoneInfo:
    return ZoneInfo(await conn.fetchval("SELECT business_time_zone()"))


async def school_year_of(conn: asyncpg.Connection, at: dt.datetime) -> int:
    return await conn.fetchval("SELECT school_year_of($1)", _aware(at))


async def in_wallet_window(conn: asyncpg.Connection, at: dt.datetime) -> bool:
    return await conn.fetchval("SELECT in_wallet_window($1)", _aware(at))


async def current_school_year(conn: asyncpg.Connection) -> int:
    """The school year of business time (the pinned clock, else now)."""
    return await conn.fetchval("SELECT school_year_of(business_now())")


async def reload_school_year(conn: asyncpg.Connection) -> int:
    """The school year a reload or a seed is for: the current one, or once its wallets have
    closed (May, June) the next one."""
    return await conn.fetchval("SELECT reload_school_year()")


async def calendar(conn: asyncpg.Connection, school_year: int) -> SchoolYearCalendar:
    row = await conn.fetchrow(
        "SELECT school_year_starts_at($1) AS starts_at, wallet_opens_at($1) AS wallet_opens_at,"
        " wallet_closes_at($1) AS wallet_closes_at,"
        " rights_renewal_opens_at($1) AS rights_renewal_opens_at,"
        " school_year_starts_at($1 + 1) AS ends_at, business_time_zone() AS zone", school_year)
    zone = ZoneInfo(row["zone"])
    return SchoolYearCalendar(school_year, **{k: row[k].astimezone(zone) for k in (
        "starts_at", "wallet_opens_at", "wallet_closes_at", "rights_renewal_opens_at", "ends_at")})


def _aware(at: dt.datetime) -> dt.datetime:
    if at.tzinfo is None:
        raise ValueError("an instant is an aware datetime")
    return at
