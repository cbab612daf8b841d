"""First-card requests: submitted → pre-validated by the establishment → photo checked → printed →
mailed → active, or rejected with a reason from any state before active. The states, their French
labels and the legal moves are data in migrations/0006_cards.sql; each move is kept in the request's history
(what the beneficiary follows) and in the audit trail.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import asyncpg

from ledger.cards import NotFound, refusals

STATES = ("SUBMITTED", "PREVALIDATED", "PHOTO_CHECKED", "PRINTED", "MAILED", "ACTIVE", "REJECTED")
LIST_LIMIT_ROWS = 500


@dataclass(frozen=True)
class Step:
    from_state: str | None
    to_state: str
    label_fr: str
    actor: str
    reason: str | None
    occurred_at: dt.datetime


@dataclass(frozen=True)
class CardRequest:
    id: int
    beneficiary_id: int
    dossier_number: str
    establishment_id: int
    state: str
    label_fr: str
    rejection_reason: str | None
    card_number: str | None
    card_id: int | None
    submitted_at: dt.datetime
    updated_at: dt.datetime
    history: tuple[Step, ...] = ()


_REQUEST_SQL = """
    SELECT r.id, r.beneficiary_id, b.dossier_number, b.establishment_id, r.state,
           card_request_label(r.state, r.rejection_reason) AS label_fr, r.rejection_reason,
           r.card_number, r.card_id, r.submitted_at, r.updated_at
      FROM card_requests r JOIN beneficiaries b ON b.id = r.beneficiary_id
"""


def parse_state(text: str) -> str:
    """'photo-checked' → PHOTO_CHECKED; the ledger refuses an unknown state, listing the known."""
    return text.strip().upper().replace("-", "_")


async def beneficiary_id(conn: asyncpg.Connection, dossier_number: str) -> int:
    found = await conn.fetchval("SELECT id FROM beneficiaries WHERE dossier_number = $1",
                                dossier_number.strip().upper())
    if found is None:
        raise NotFound(f"no beneficiary with dossier number {dossier_number}")
    return found


async def submit(conn: asyncpg.Connection, dossier_number: str, *, actor: str) -> CardRequest:
    """A new request in SUBMITTED; refused while one is in progress or a card is active."""
    ben_id = await beneficiary_id(conn, dossier_number)
    with refusals():
        request_id = await conn.fetchval("SELECT (submit_card_request($1, $2)).id", ben_id, actor)
    return await get(conn, request_id)


async def advance(conn: asyncpg.Connection, request_id: int, to_state: str, *, actor: str,
                  reason: str | None = None, card_uid: bytes | None = None,
                  card_number: str | None = None,
                  establishment_id: int | None = None) -> CardRequest:
    """Move the request; an illegal move is refused (Conflict) with the moves allowed from here.
    establishment_id: the caller is that establishment's staff (own students, pre-validation)."""
    with refusals():
        await conn.execute("SELECT advance_card_request($1, $2, $3, $4, $5, $6, $7)",
                           request_id, parse_state(to_state), actor, reason, card_uid,
                           card_number, establishment_id)
    return await get(conn, request_id)


async def get(conn: asyncpg.Connection, request_id: int) -> CardRequest:
    """The request with its history, oldest step first, each with its French label."""
    row = await conn.fetchrow(_REQUEST_SQL + " WHERE r.id = $1", request_id)
    if row is None:
        raise NotFound(f"no card request {request_id}")
    steps = await conn.fetch(
        "SELECT h.from_state, h.to_state,"
        " card_request_label(h.to_state, CASE WHEN h.to_state = 'REJECTED' THEN h.reason END) AS label_fr,"
        " h.actor, h.reason, h.occurred_at FROM card_request_history h"
        " WHERE h.request_id = $1 ORDER BY h.id", request_id)
    return CardRequest(**dict(row), history=tuple(Step(**dict(s)) for s in steps))


async def list_requests(conn: asyncpg.Connection, *, state: str | None = None,
                        establishment_id: int | None = None, dossier_number: str | None = None,
                        limit_rows: int = LIST_LIMIT_ROWS) -> list[CardRequest]:
    """Newest first, without history; filters combine."""
    rows = await conn.fetch(
        _REQUEST_SQL + " WHERE ($1::text IS NULL OR r.state = $1)"
        " AND ($2::integer IS NULL OR b.establishment_id = $2)"
        " AND ($3::text IS NULL OR b.dossier_number = $3) ORDER BY r.id DESC LIMIT $4",
        None if state is None else parse_state(state), establishment_id,
        None if dossier_number is None else dossier_number.strip().upper(),
        min(limit_rows, LIST_LIMIT_ROWS))
    return [CardRequest(**dict(r)) for r in rows]


# The back office's queue: a bounded page of requests at a time, newest first.
REQUEST_PAGE_ROWS = 50


@dataclass(frozen=True)
class QueueEntry:
    id: int
    dossier_number: str
    last_name: str
    first_name: str
    establishment_name: str
    state: str
    label_fr: str
    submitted_local: dt.datetime       # wall-clock times of the business time zone
    updated_local: dt.datetime
    has_photo: bool


@dataclass(frozen=True)
class StateCount:
    state: str
    label_fr: str
    final: bool
    requests: int


async def queue(conn: asyncpg.Connection, *, state: str | None, establishment_id: int | None,
                before_id: int | None = None, limit_rows: int = REQUEST_PAGE_ROWS
                ) -> tuple[list[QueueEntry], int | None]:
    """Requests in `state` (None: all), of one establishment's students (None: all), below
    `before_id`, newest first; and the next page's bound (None: this is the last page)."""
    limit_rows = max(1, min(limit_rows, REQUEST_PAGE_ROWS))
    rows = await conn.fetch(
        "SELECT r.id, b.dossier_number, b.last_name, b.first_name, e.name AS establishment_name,"
        " r.state, card_request_label(r.state, r.rejection_reason) AS label_fr,"
        " r.submitted_at AT TIME ZONE business_time_zone() AS submitted_local,"
        " r.updated_at AT TIME ZONE business_time_zone() AS updated_local,"
        " EXISTS (SELECT 1 FROM card_applications a WHERE a.beneficiary_id = r.beneficiary_id"
        "          AND a.photo_file IS NOT NULL) AS has_photo"
        "  FROM card_requests r JOIN beneficiaries b ON b.id = r.beneficiary_id"
        "  JOIN establishments e ON e.id = b.establishment_id"
        " WHERE ($1::text IS NULL OR r.state = $1) AND ($2::integer IS NULL OR b.establishment_id = $2)"
        "   AND ($3::bigint IS NULL OR r.id < $3)"
        " ORDER BY r.id DESC LIMIT $4",
        state, establishment_id, before_id, limit_rows + 1)
    entries = [QueueEntry(**dict(r)) for r in rows[:limit_rows]]
    return entries, entries[-1].id if len(rows) > limit_rows else None


async def state_counts(conn: asyncpg.Connection, *,
                       establishment_id: int | None) -> list[StateCount]:
    """Every state in the order of the steps, with how many requests are in it."""
    rows = await conn.fetch(
        "SELECT s.state, s.label_fr, s.final, count(r.id)::integer AS requests"
        "  FROM card_request_states s"
        "  LEFT JOIN (card_requests r JOIN beneficiaries b ON b.id = r.beneficiary_id"
        "             AND ($1::integer IS NULL OR b.establishment_id = $1)) ON r.state = s.state"
        " GROUP BY s.state, s.label_fr, s.final, s.step ORDER BY s.step", establishment_id)
    return [StateCount(**dict(r)) for r in rows]


async def moves_from(conn: asyncpg.Connection, state: str) -> list[str]:
    """The states a request in `state` may go to (the ledger's table of legal moves)."""
    rows = await conn.fetch(
        "SELECT t.to_state FROM card_request_transitions t"
        " JOIN card_request_states s ON s.state = t.to_state WHERE t.from_state = $1"
        " ORDER BY s.step", state)
    return [r["to_state"] for r in rows]
