"""Expiry when the wallets close (1 May, wallet_closes_at()): what is left in a closed school year's wallets moves to the expired-funds
account (sql/functions/expire_school_year.sql), audited in the same transaction.

Run by a systemd timer every day (deploy/systemd/hdfpay-expiry.timer) and by hand. `hdfpay expire`
takes the last school year whose wallets have closed, so before a 1 May it re-runs the previous
year's expiry, and any run after the first finds nothing left (it moves only what a late reversal
credited since): a daily timer, a missed boot or a repeated start never expire anything early or
twice. Each run is audited, with what it moved (zero included).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import json

import asyncpg

from ledger.audit import append_audit


class ExpiryRefused(ValueError):
    """The school year's wallets are still open (before 1 May 00:00 Europe/Paris)."""


@dataclass(frozen=True)
class ExpiryRun:
    at: object
    actor: str
    wallets_expired: int
    expired_cents: int


@dataclass(frozen=True)
class ExpiryResult:
    school_year: int
    wallets_expired: int
    expired_cents: int


async def last_closed_school_year(conn: asyncpg.Connection) -> int:
    """The most recent school year whose wallets have closed (business time, Europe/Paris)."""
    return await conn.fetchval(
        "SELECT CASE WHEN business_now() >= wallet_closes_at(y) THEN y ELSE y - 1 END"
        " FROM (SELECT school_year_of(business_now()) AS y) now")


async def expire_school_year(conn: asyncpg.Connection, school_year: int, *, actor: str) -> ExpiryResult:
    """Move every remaining balance of `school_year` to expired funds; refused before 1 May."""
    try:
        async with conn.transaction():
            row = await conn.fetchrow("SELECT * FROM expire_school_year($1)", school_year)
            await append_audit(conn, actor=actor, action="expiry.run",
                               subject=f"school_year:{school_year}",
                               after={"wallets_expired": row["wallets_expired"],
                                      "expired_cents": row["expired_cents"]})
    except asyncpg.CheckViolationError as exc:
        raise ExpiryRefused(str(exc)) from None
    return ExpiryResult(school_year, row["wallets_expired"], row["expired_cents"])


async def expiry_runs(conn: asyncpg.Connection, school_year: int) -> list[ExpiryRun]:
    """The school year's expiry runs, from the audit trail (where each one is recorded)."""
    rows = await conn.fetch("SELECT occurred_at, actor, after FROM audit_log WHERE action = 'expiry.run'"
                            " AND subject = $1 ORDER BY id", f"school_year:{school_year}")
    return [ExpiryRun(r["occurred_at"], r["actor"], **json.loads(r["after"])) for r in rows]


async def wallet_close(conn: asyncpg.Connection, school_year: int) -> tuple[dt.datetime, bool]:
    """When the year's wallets close, and whether the business clock has passed that instant."""
    row = await conn.fetchrow(
        "SELECT wallet_closes_at($1) AS closes_at, business_now() >= wallet_closes_at($1) AS closed",
        school_year)
    return row["closes_at"], row["closed"]
