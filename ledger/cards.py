"""Card opposition and replacement (the rules are SQL functions, one file each:
ledger/sql/functions/oppose_card.sql, replace_card.sql).

New cards: the UID is always given by the operator, read from the new card's chip (or the card
manufacturer's personalisation file): a chip's UID is fixed by its maker, so hdfpay cannot choose
it. The 16-digit card number printed on the card is given too when the manufacturer assigned it,
otherwise hdfpay generates one ('6331', a sequence, a Luhn check digit).

The refusals the SQL functions raise (SQLSTATE HD404 / HD409 / HD422 / HD403) become the typed
errors below, shared by card requests and partners, so that the CLI and the API can answer them.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from dataclasses import dataclass
from typing import Iterator

import asyncpg

# The opposition reasons of the card_statuses table (the definition, with each one's decline code
# and whether its replacement is charged), spelled here for the CLI's choices and the OpenAPI
# document, which are built before any database is reached; tests check they agree. The
# replacement fee is in the database only (rules, ledger.rules).
OPPOSITION_REASONS = ("LOST", "STOLEN", "DAMAGED", "DEFECTIVE")
CARD_NUMBER_DIGITS = 16
UID_LENGTHS_BYTES = (4, 7, 10)


class Refused(Exception):
    """An operation the ledger refused, with the reason in plain words."""


class NotFound(Refused):
    pass


class Conflict(Refused):
    """The current state forbids it (already opposed, rights not renewed, illegal transition…)."""


class Invalid(Refused):
    pass


class OutOfScope(Refused):
    """The caller may not act on this (establishment staff and another establishment's student)."""


_BY_SQLSTATE = {"HD404": NotFound, "HD409": Conflict, "HD422": Invalid, "HD403": OutOfScope,
                "23505": Conflict}


@contextlib.contextmanager
def refusals() -> Iterator[None]:
    """Turn the ledger's refusals into typed errors; other database errors pass through."""
    try:
        yield
    except asyncpg.PostgresError as exc:
        kind = _BY_SQLSTATE.get(exc.sqlstate)
        if kind is None:
            raise
        message = exc.args[0] if exc.args else str(exc)
        if exc.sqlstate == "23505":
            message = f"already exists: {getattr(exc, 'constraint_name', None) or message}"
        raise kind(message) from None


@dataclass(frozen=True)
class Card:
    id: int
    card_number: str
    uid_hex: str
    beneficiary_id: int
    dossier_number: str
    status: str
    opposed_at: dt.datetime | None
    issued_at: dt.datetime
    replaced_by_card_id: int | None
    replaces_card_id: int | None


@dataclass(frozen=True)
class Replacement:
    old_card_id: int
    new_card_id: int
    new_card_number: str
    reason: str
    school_year: int
    fee_cents: int
    fee_taken_cents: int
    fee_pending_cents: int


def parse_uid(text: str) -> bytes:
    """A UID as hex (spaces and colons allowed), 4, 7 or 10 bytes."""
    cleaned = text.replace(":", "").replace(" ", "")
    try:
        uid = bytes.fromhex(cleaned)
    except ValueError:
        raise Invalid(f"a card UID is hexadecimal (got {text!r})") from None
    if len(uid) not in UID_LENGTHS_BYTES:
        raise Invalid(f"a card UID is 4, 7 or 10 bytes (got {len(uid)})")
    return uid


def parse_reason(text: str | None) -> str | None:
    if text is None:
        return None
    reason = text.strip().upper()
    if reason not in OPPOSITION_REASONS:
        raise Invalid(f"a reason is one of {', '.join(r.lower() for r in OPPOSITION_REASONS)}"
                      f" (got {text!r})")
    return reason


_CARD_SQL = """
    SELECT c.id, c.card_number, upper(encode(c.uid, 'hex')) AS uid_hex, c.beneficiary_id,
           b.dossier_number, c.status, c.opposed_at, c.issued_at,
           (SELECT new_card_id FROM card_replacements WHERE old_card_id = c.id) AS replaced_by_card_id,
           (SELECT old_card_id FROM card_replacements WHERE new_card_id = c.id) AS replaces_card_id
      FROM cards c JOIN beneficiaries b ON b.id = c.beneficiary_id
"""


async def find_card(conn: asyncpg.Connection, reference: str) -> Card:
    """A card by its 16-digit number, or a beneficiary's current card by dossier number: the
    active one, else the newest one not yet replaced."""
    reference = reference.strip().upper()
    if reference.isdigit() and len(reference) == CARD_NUMBER_DIGITS:
        row = await conn.fetchrow(_CARD_SQL + " WHERE c.card_number = $1", reference)
        if row is not None:
            return Card(**dict(row))
    row = await conn.fetchrow(
        _CARD_SQL + " WHERE b.dossier_number = $1 AND NOT EXISTS (SELECT 1 FROM card_replacements r"
        " WHERE r.old_card_id = c.id) ORDER BY c.status = 'ACTIVE' DESC, c.id DESC LIMIT 1", reference)
    if row is None:
        raise NotFound(f"no card with number or dossier number {reference}")
    return Card(**dict(row))


async def card_by_id(conn: asyncpg.Connection, card_id: int) -> Card:
    row = await conn.fetchrow(_CARD_SQL + " WHERE c.id = $1", card_id)
    if row is None:
        raise NotFound(f"no card {card_id}")
    return Card(**dict(row))


async def oppose_card(conn: asyncpg.Connection, card_id: int, reason: str, *, actor: str) -> Card:
    """Irreversible: the terminal answers 41 (lost), 43 (stolen) or 62 (damaged, defective)."""
    with refusals():
        await conn.execute("SELECT oppose_card($1, $2, $3)", card_id, parse_reason(reason), actor)
    return await card_by_id(conn, card_id)


async def replace_card(conn: asyncpg.Connection, card_id: int, new_uid: bytes, *, actor: str,
                       reason: str | None = None, new_card_number: str | None = None) -> Replacement:
    """A new card for the same beneficiary and wallet; the old one stays opposed. The region's
    fee (rules) is taken from the balance, the rest pending until the next reload; defective
    cards are free."""
    with refusals():
        row = await conn.fetchrow("SELECT * FROM replace_card($1, $2, $3, $4, $5)", card_id,
                                  parse_reason(reason), new_uid, new_card_number, actor)
    # A separate statement: the one that called replace_card() cannot see the card it inserted.
    number = await conn.fetchval("SELECT card_number FROM cards WHERE id = $1", row["new_card_id"])
    return Replacement(old_card_id=row["old_card_id"], new_card_id=row["new_card_id"],
                       new_card_number=number, reason=row["reason"],
                       school_year=row["school_year"], fee_cents=row["fee_cents"],
                       fee_taken_cents=row["fee_taken_cents"],
                       fee_pending_cents=row["fee_pending_cents"])


@dataclass(frozen=True)
class ReplacementRequest:
    id: int
    card_id: int
    reason: str
    requested_by: str
    requested_at: dt.datetime
    dossier_number: str


OPEN_REQUESTS_MAX_ROWS = 1_000


async def request_replacement(conn: asyncpg.Connection, card_id: int, reason: str, *,
                              actor: str) -> int:
    """A student's request for a new card (request_card_replacement.sql says when it is
    refused); returns the request's id."""
    with refusals():
        return await conn.fetchval("SELECT (request_card_replacement($1, $2, $3)).id", card_id,
                                   parse_reason(reason), actor)


async def open_replacement_requests(conn: asyncpg.Connection) -> list[ReplacementRequest]:
    """What operators have to fulfil (replace_card closes each), oldest first."""
    rows = await conn.fetch(
        "SELECT r.id, r.card_id, r.reason, r.requested_by, r.requested_at, b.dossier_number"
        " FROM card_replacement_requests r JOIN cards c ON c.id = r.card_id"
        " JOIN beneficiaries b ON b.id = c.beneficiary_id WHERE r.done_at IS NULL"
        " ORDER BY r.id LIMIT $1", OPEN_REQUESTS_MAX_ROWS)
    return [ReplacementRequest(**dict(r)) for r in rows]
