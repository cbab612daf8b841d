"""What the back office shows of one partner's shop: its terminals and their keys (initial key
ids, statuses, counters: never key material, which the database never holds), one business day's
terminal messages a bounded page at a time with the day's totals (the same rows and rules as
reports.volumes and reports.declines: messages the ledger answered, tombstones left out, and the
server's own voids that gave money back, counted with the reversals)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Sequence

import asyncpg

AUTHORIZATION_PAGE_ROWS = 50
_MONEY_MESSAGES = ("(a.message_type IN ('PURCHASE', 'REVERSAL', 'REFUND') AND a.request_hash IS NOT NULL"
                   " OR a.message_type = 'SERVER_VOID' AND a.amount_approved_cents > 0)")
_PARTNER_DAY = ("t.partner_id = $1 AND a.created_at >= business_day_starts_at($2::date)"
                " AND a.created_at < business_day_starts_at($2::date + 1)")


@dataclass(frozen=True)
class TerminalKey:
    initial_key_id_hex: str      # an identifier (BDK id and derivation id), not a key
    status: str                  # ACTIVE or RETIRED
    last_counter: int            # the highest KSN counter accepted, -1 before the first message


@dataclass(frozen=True)
class ShopTerminal:
    terminal_id: str
    status: str
    keys: tuple[TerminalKey, ...]


@dataclass(frozen=True)
class ShopMessage:
    id: int
    at_local: dt.datetime        # wall-clock time of the business time zone
    terminal_id: str
    message_type: str
    card_end: str | None         # the card number's last 4 digits, never the UID
    amount_requested_cents: int | None
    amount_approved_cents: int
    response_code: str
    rrn: str | None


@dataclass(frozen=True)
class DayTotals:
    messages: int
    approved_purchases: int
    purchases_cents: int
    reversals_cents: int
    refunds_cents: int
    declined: int

    @property
    def net_cents(self) -> int:
        return self.purchases_cents - self.reversals_cents - self.refunds_cents


async def terminals_of(conn: asyncpg.Connection, partner_id: int) -> list[ShopTerminal]:
    rows = await conn.fetch(
        "SELECT t.id, t.status, coalesce(array_agg(ROW(upper(encode(k.initial_key_id, 'hex')),"
        " k.status, k.last_counter) ORDER BY k.created_at) FILTER (WHERE k.initial_key_id IS NOT NULL),"
        " '{}') AS keys FROM terminals t LEFT JOIN terminal_keys k ON k.terminal_id = t.id"
        " WHERE t.partner_id = $1 GROUP BY t.id, t.status ORDER BY t.id", partner_id)
    return [ShopTerminal(r["id"], r["status"], tuple(TerminalKey(*k) for k in r["keys"]))
            for r in rows]


async def terminal_partner(conn: asyncpg.Connection, terminal_id: str) -> int | None:
    return await conn.fetchval("SELECT partner_id FROM terminals WHERE id = $1", terminal_id)


async def day_messages(conn: asyncpg.Connection, partner_id: int, day: dt.date, *,
                       before_id: int | None = None, limit_rows: int = AUTHORIZATION_PAGE_ROWS
                       ) -> tuple[list[ShopMessage], int | None]:
    """The partner's terminal messages of one business day, newest first, below `before_id`;
    and the next page's bound (None: the last page)."""
    limit_rows = max(1, min(limit_rows, AUTHORIZATION_PAGE_ROWS))
    rows = await conn.fetch(
        "SELECT a.id, a.created_at AT TIME ZONE business_time_zone() AS at_local, a.terminal_id,"
        " a.message_type, right(c.card_number, 4) AS card_end, a.amount_requested_cents,"
        " a.amount_approved_cents, a.response_code, a.rrn"
        "  FROM authorizations a JOIN terminals t ON t.id = a.terminal_id"
        "  LEFT JOIN cards c ON c.id = a.card_id"
        f" WHERE {_MONEY_MESSAGES} AND {_PARTNER_DAY} AND ($3::bigint IS NULL OR a.id < $3)"
        " ORDER BY a.id DESC LIMIT $4", partner_id, day, before_id, limit_rows + 1)
    found = [ShopMessage(**dict(r)) for r in rows[:limit_rows]]
    return found, found[-1].id if len(rows) > limit_rows else None


async def day_totals(conn: asyncpg.Connection, partner_id: int, day: dt.date,
                     approved_codes: Sequence[str]) -> DayTotals:
    row = await conn.fetchrow(
        "SELECT count(*) AS messages,"
        " count(*) FILTER (WHERE a.message_type = 'PURCHASE' AND a.amount_approved_cents > 0) AS approved_purchases,"
        " coalesce(sum(a.amount_approved_cents) FILTER (WHERE a.message_type = 'PURCHASE'), 0)::bigint AS purchases_cents,"
        " coalesce(sum(a.amount_approved_cents) FILTER (WHERE a.message_type IN ('REVERSAL', 'SERVER_VOID')), 0)::bigint AS reversals_cents,"
        " coalesce(sum(a.amount_approved_cents) FILTER (WHERE a.message_type = 'REFUND'), 0)::bigint AS refunds_cents,"
        " count(*) FILTER (WHERE a.response_code <> ALL ($3::text[])) AS declined"
        "  FROM authorizations a JOIN terminals t ON t.id = a.terminal_id"
        f" WHERE {_MONEY_MESSAGES} AND {_PARTNER_DAY}", partner_id, day, list(approved_codes))
    return DayTotals(**dict(row))
