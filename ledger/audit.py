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
