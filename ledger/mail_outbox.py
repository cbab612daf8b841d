"""The durable e-mail outbox (table mail_outbox, migrations/0012_mail_outbox.sql).

Why a table: a mail that belongs to an account (its identifier and provisional password) or to a
reset request (its single-use link) is queued with `enqueue` in the same transaction, so it exists
exactly when the account or the link does. portal/mail_sender.py then claims due messages, sends
them and records the outcome here; a failed send is postponed with exponential backoff and tried
again, never dropped (attempts and last_error let an operator see mail that is stuck).

Two senders never hold the same message: `claim_due` takes rows with FOR UPDATE SKIP LOCKED and
leases them to one sender until `leased_until`; after that, another sender may take the message
over (its holder is taken to have crashed), so a lease must outlast a batch's SMTP timeouts.

Retention rule (personal data):
- the body is erased when the message is marked sent: it may hold a provisional password or a
  reset link, and nobody needs it once it left;
- the recipient's address is erased MAIL_KEEP_SENT_DAYS after sending, by `purge_sent` (run it
  daily), long enough to answer "did my mail go out?"; the row (kind, subject, Message-ID,
  attempts, times) stays as a record;
- a message not yet sent keeps both: it is still to be delivered.
Subjects are fixed texts per kind and must hold no personal data; last_error holds an error class
and an SMTP code, never the body or the address (postpone withholds an error naming the address).

Every time here is business time (business_now()): tests pin it, and a retry is due when the
business clock passes next_attempt_at.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from dataclasses import dataclass

import asyncpg

# Bounds mirrored by the CHECK constraints of migrations/0012_mail_outbox.sql.
MAIL_RECIPIENT_MAX_CHARS = 254          # RFC 5321's longest forward path, less the brackets
MAIL_SUBJECT_MAX_CHARS = 200
MAIL_BODY_MAX_CHARS = 20_000
MAIL_KIND_MAX_CHARS = 40
MAIL_LAST_ERROR_MAX_CHARS = 300
MAIL_SENDER_ID_MAX_CHARS = 100
# Retries: the first after a minute, doubling, at most every hour; never given up.
MAIL_FIRST_RETRY_MS = 60_000
MAIL_MAX_RETRY_MS = 3_600_000
# How long a sent message keeps its recipient's address.
MAIL_KEEP_SENT_DAYS = 30
# Most messages one claim takes.
MAIL_CLAIM_MAX_ROWS = 100

KIND_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,39}")
RECIPIENT_PATTERN = re.compile(r"[^@\s<>,;]+@[^@\s<>,;]+")
ERROR_WITHHELD = "error text withheld: it named the recipient"


@dataclass(frozen=True)
class OutgoingMail:
    """A claimed message, as the sender needs it."""
    id: int
    kind: str
    recipient: str
    subject: str
    body: str
    message_id: uuid.UUID
    created_at: dt.datetime
    attempts: int


def _check_mail(recipient: str, subject: str, body: str, kind: str) -> None:
    """The table's CHECKs, said in Python first so that a caller gets a clear ValueError."""
    if not KIND_PATTERN.fullmatch(kind):
        raise ValueError(f"mail kind must be lower-case snake_case of at most "
                         f"{MAIL_KIND_MAX_CHARS} characters, got {kind!r}")
    if not 3 <= len(recipient) <= MAIL_RECIPIENT_MAX_CHARS or not RECIPIENT_PATTERN.fullmatch(recipient):
        raise ValueError(f"the recipient must be one e-mail address of at most "
                         f"{MAIL_RECIPIENT_MAX_CHARS} characters")   # never echo the address
    if not 1 <= len(subject) <= MAIL_SUBJECT_MAX_CHARS or any(ord(c) < 32 or ord(c) == 127 for c in subject):
        raise ValueError(f"the subject must be one line of 1 to {MAIL_SUBJECT_MAX_CHARS} characters")
    if not 1 <= len(body) <= MAIL_BODY_MAX_CHARS:
        raise ValueError(f"the body must have 1 to {MAIL_BODY_MAX_CHARS} characters")


async def enqueue(conn: asyncpg.Connection, recipient: str, subject: str, body: str, kind: str) -> int:
    """Queue a message, due now; returns its id. Call it inside the caller's transaction so that
    the mail is queued, or not, with what it announces."""
    _check_mail(recipient, subject, body, kind)
    return await conn.fetchval(
        "INSERT INTO mail_outbox (kind, recipient, subject, body, created_at, next_attempt_at)"
        " VALUES ($1, $2, $3, $4, business_now(), business_now()) RETURNING id",
        kind, recipient, subject, body)


async def claim_due(conn: asyncpg.Connection, sender_id: str, limit: int,
                    lease_ms: int) -> list[OutgoingMail]:
    """Lease up to `limit` due messages to `sender_id` for `lease_ms`, oldest due first. Rows
    another sender is claiming are skipped, not waited for; a message whose lease ran out is
    due again."""
    if not 1 <= len(sender_id) <= MAIL_SENDER_ID_MAX_CHARS:
        raise ValueError(f"sender_id must have 1 to {MAIL_SENDER_ID_MAX_CHARS} characters")
    if not 1 <= limit <= MAIL_CLAIM_MAX_ROWS:
        raise ValueError(f"limit must be between 1 and {MAIL_CLAIM_MAX_ROWS}")
    if lease_ms < 1:
        raise ValueError("lease_ms must be positive")
    rows = await conn.fetch("""
        WITH due AS (
            SELECT id FROM mail_outbox
             WHERE sent_at IS NULL AND next_attempt_at <= business_now()
               AND (leased_until IS NULL OR leased_until <= business_now())
             ORDER BY next_attempt_at, id
             LIMIT $2
               FOR UPDATE SKIP LOCKED)
        UPDATE mail_outbox m
           SET leased_by = $1, leased_until = business_now() + $3 * interval '1 millisecond'
          FROM due WHERE m.id = due.id
        RETURNING m.id, m.kind, m.recipient, m.subject, m.body, m.message_id, m.created_at,
                  m.attempts""", sender_id, limit, lease_ms)
    return sorted((OutgoingMail(**dict(r)) for r in rows), key=lambda m: m.id)


async def mark_sent(conn: asyncpg.Connection, mail_id: int) -> bool:
    """The SMTP server accepted the message: record it and erase the body. False when it was
    already marked sent (another sender took it over after this one's lease ran out)."""
    updated = await conn.fetchval("""
        UPDATE mail_outbox
           SET sent_at = business_now(), body = NULL, attempts = attempts + 1,
               leased_by = NULL, leased_until = NULL
         WHERE id = $1 AND sent_at IS NULL
        RETURNING id""", mail_id)
    return updated is not None


async def postpone(conn: asyncpg.Connection, mail_id: int, sender_id: str, error: str) -> bool:
    """The send failed: count the attempt, keep a bounded error text, and make the message due
    again after MAIL_FIRST_RETRY_MS doubled per earlier attempt, capped at MAIL_MAX_RETRY_MS.
    Only the lease holder postpones; False when this sender no longer holds it."""
    text = " ".join(error.split())[:MAIL_LAST_ERROR_MAX_CHARS] or "unknown error"
    updated = await conn.fetchval("""
        UPDATE mail_outbox
           SET attempts = attempts + 1,
               last_error = CASE WHEN strpos(lower($3), lower(recipient)) > 0 THEN $6 ELSE $3 END,
               next_attempt_at = business_now()
                   + least($4::double precision * power(2, least(attempts, 40)), $5)
                     * interval '1 millisecond',
               leased_by = NULL, leased_until = NULL
         WHERE id = $1 AND sent_at IS NULL AND leased_by = $2
        RETURNING id""", mail_id, sender_id, text, MAIL_FIRST_RETRY_MS, MAIL_MAX_RETRY_MS,
        ERROR_WITHHELD)
    return updated is not None


async def purge_sent(conn: asyncpg.Connection) -> int:
    """Erase the recipient of messages sent more than MAIL_KEEP_SENT_DAYS ago; returns how many."""
    result = await conn.execute("""
        UPDATE mail_outbox SET recipient = NULL
         WHERE sent_at IS NOT NULL AND recipient IS NOT NULL
           AND sent_at < business_now() - $1 * interval '1 day'""", MAIL_KEEP_SENT_DAYS)
    return int(result.split()[-1])


@dataclass(frozen=True)
class MailState:
    """What an operator (or a test) sees of a message: never its body or address."""
    id: int
    kind: str
    attempts: int
    next_attempt_at: dt.datetime
    last_error: str | None
    sent_at: dt.datetime | None
    has_body: bool
    has_recipient: bool
    message_id: uuid.UUID


async def mail_state(conn: asyncpg.Connection, mail_id: int) -> MailState | None:
    row = await conn.fetchrow("""
        SELECT id, kind, attempts, next_attempt_at, last_error, sent_at,
               body IS NOT NULL AS has_body, recipient IS NOT NULL AS has_recipient, message_id
          FROM mail_outbox WHERE id = $1""", mail_id)
    return MailState(**dict(row)) if row else None
