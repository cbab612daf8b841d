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
