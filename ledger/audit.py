"""The audit trail: every operator action appended, hash-chained, in the same transaction as
the change it describes (migrations/0002_audit.sql holds the table, sql/functions/append_audit.sql
the function).

verify_audit() recomputes the whole chain in Python, independently of the database function, so
a row edited, inserted or deleted (triggers disabled by a superuser, a restored dump) is found.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from dataclasses import dataclass
from typing import Any

import asyncpg

GENESIS_HASH = bytes(32)
VERIFY_BATCH_ROWS = 10_000


@dataclass(frozen=True)
class AuditReport:
    rows: int
    head_id: int
    head_hash: str
    problems: tuple[str, ...]

    @property
    def intact(self) -> bool:
        return not self.problems


async def append_audit(conn: asyncpg.Connection, *, actor: str, action: str, subject: str,
                       before: Any = None, after: Any = None) -> int:
    """Record one action; call it inside the transaction that makes the change."""
    return await conn.fetchval(
        "SELECT append_audit($1, $2, $3, $4::jsonb, $5::jsonb)", actor, action, subject,
        None if before is None else json.dumps(before, default=str),
        None if after is None else json.dumps(after, default=str))


def row_bytes(row: asyncpg.Record) -> bytes:
    """Same bytes as audit_row_bytes() in SQL: fields joined by the unit separator (0x1F)."""
    micros = _epoch_micros(row["occurred_at"])
    fields = [str(row["id"]), str(micros), row["actor"], row["action"], row["subject"],
              row["before_text"] or "null", row["after_text"] or "null"]
    return "\x1f".join(fields).encode()


def _epoch_micros(moment: dt.datetime) -> int:
    delta = moment - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


async def verify_audit(conn: asyncpg.Connection, expect_hash: bytes | None = None) -> AuditReport:
    """Recompute the chain. `expect_hash` is a head hash written down earlier (printed by a
    previous verify): it must still be in the chain, or rows were removed or rewritten since."""
    problems: list[str] = []
    expected_seen = expect_hash is None
    expected_previous, expected_id, count = GENESIS_HASH, 1, 0
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        cursor = conn.cursor(
            "SELECT id, occurred_at, actor, action, subject, before::text AS before_text,"
            " after::text AS after_text, previous_hash, row_hash FROM audit_log ORDER BY id",
            prefetch=VERIFY_BATCH_ROWS)
        async for row in cursor:
            count += 1
            if row["id"] != expected_id:
                problems.append(f"row {row['id']}: expected row {expected_id} (rows missing or inserted)")
            if bytes(row["previous_hash"]) != expected_previous:
                problems.append(f"row {row['id']}: does not follow the previous row (chain broken)")
            computed = hashlib.sha256(bytes(row["previous_hash"]) + row_bytes(row)).digest()
            if computed != bytes(row["row_hash"]):
                problems.append(f"row {row['id']}: content altered (hash mismatch)")
            expected_previous, expected_id = bytes(row["row_hash"]), row["id"] + 1
            expected_seen = expected_seen or expected_previous == expect_hash
            if len(problems) >= 100:
                break
        head = await conn.fetchrow("SELECT last_id, last_hash FROM audit_head")
    if head["last_id"] != expected_id - 1 or bytes(head["last_hash"]) != expected_previous:
        problems.append(f"the head says row {head['last_id']} ends the chain, the table ends at"
                        f" row {expected_id - 1} (rows deleted at the end, or head altered)")
    if not expected_seen:
        problems.append(f"the head recorded earlier ({expect_hash.hex()}) is no longer in the"
                        " trail: rows were removed or rewritten since")
    return AuditReport(count, head["last_id"], bytes(head["last_hash"]).hex(), tuple(problems))


# The back office's pages read the trail a page at a time, newest first.
AUDIT_PAGE_ROWS = 50
AUDIT_FILTER_MAX_CHARS = 200


@dataclass(frozen=True)
class AuditEntry:
    id: int
    occurred_local: dt.datetime      # wall-clock time of the business time zone
    actor: str
    action: str
    subject: str
    before_text: str | None
    after_text: str | None


@dataclass(frozen=True)
class AuditPage:
    entries: tuple[AuditEntry, ...]
    older_than_id: int | None        # the next page's bound; None: this is the last page


async def audit_page(conn: asyncpg.Connection, *, actor: str | None = None,
                     action: str | None = None, from_day: dt.date | None = None,
                     to_day: dt.date | None = None, before_id: int | None = None,
                     limit_rows: int = AUDIT_PAGE_ROWS) -> AuditPage:
    """Rows newest first, below `before_id` (keyset paging), filtered by exact actor, action
    (exact, or every action under a prefix ending in '.', e.g. 'card.'), and business days
    from_day..to_day inclusive, in the business time zone."""
    limit_rows = max(1, min(limit_rows, AUDIT_PAGE_ROWS))
    action_prefix = action if action and action.endswith(".") else None
    rows = await conn.fetch(
        "SELECT id, occurred_at AT TIME ZONE business_time_zone() AS occurred_local, actor,"
        " action, subject, before::text AS before_text, after::text AS after_text"
        "  FROM audit_log"
        " WHERE ($1::bigint IS NULL OR id < $1)"
        "   AND ($2::text IS NULL OR actor = $2)"
        "   AND ($3::text IS NULL OR action = $3)"
        "   AND ($4::text IS NULL OR left(action, length($4)) = $4)"
        "   AND ($5::date IS NULL OR occurred_at >= business_day_starts_at($5))"
        "   AND ($6::date IS NULL OR occurred_at < business_day_starts_at($6 + 1))"
        " ORDER BY id DESC LIMIT $7",
        before_id, actor or None, None if action_prefix else (action or None), action_prefix,
        from_day, to_day, limit_rows + 1)
    entries = tuple(AuditEntry(**dict(r)) for r in rows[:limit_rows])
    return AuditPage(entries, entries[-1].id if len(rows) > limit_rows else None)
