"""Finding a beneficiary for the back office: by dossier number, card number, e-mail, or the
start of a name; scoped to one establishment for its staff."""

from __future__ import annotations

import re
from dataclasses import dataclass

import asyncpg

SEARCH_RESULTS_MAX_ROWS = 50
SEARCH_TEXT_MIN_CHARS = 2
SEARCH_TEXT_MAX_CHARS = 100


@dataclass(frozen=True)
class Found:
    id: int
    dossier_number: str
    last_name: str
    first_name: str
    email: str
    establishment_id: int
    establishment_name: str


_FOUND = ("SELECT b.id, b.dossier_number, b.last_name, b.first_name, b.email, b.establishment_id,"
          " e.name AS establishment_name FROM beneficiaries b"
          " JOIN establishments e ON e.id = b.establishment_id")


async def search(conn: asyncpg.Connection, text: str, *,
                 establishment_id: int | None = None) -> list[Found]:
    """Exact dossier, card number or e-mail first; else names starting with the text."""
    text = " ".join(text.split())[:SEARCH_TEXT_MAX_CHARS]
    if len(text) < SEARCH_TEXT_MIN_CHARS:
        return []
    compact = re.sub(r"\s+", "", text).upper()
    like = re.sub(r"([\\%_])", r"\\\1", text) + "%"
    rows = await conn.fetch(
        _FOUND + " WHERE ($2::integer IS NULL OR b.establishment_id = $2) AND ("
        " b.dossier_number = $1 OR lower(b.email) = lower($3)"
        " OR b.id IN (SELECT beneficiary_id FROM cards WHERE card_number = $1)"
        " OR b.last_name ILIKE $4 OR b.first_name ILIKE $4"
        " OR (b.first_name || ' ' || b.last_name) ILIKE $4"
        " OR (b.last_name || ' ' || b.first_name) ILIKE $4)"
        " ORDER BY b.last_name, b.first_name, b.id LIMIT $5",
        compact, establishment_id, text, like, SEARCH_RESULTS_MAX_ROWS)
    return [Found(**dict(r)) for r in rows]


async def get(conn: asyncpg.Connection, beneficiary_id: int, *,
              establishment_id: int | None = None) -> Found | None:
    """The beneficiary, if it exists and (for an establishment's staff) is one of theirs."""
    row = await conn.fetchrow(_FOUND + " WHERE b.id = $1 AND ($2::integer IS NULL"
                              " OR b.establishment_id = $2)", beneficiary_id, establishment_id)
    return None if row is None else Found(**dict(row))


async def beneficiary_of_card(conn: asyncpg.Connection, card_id: int) -> int | None:
    return await conn.fetchval("SELECT beneficiary_id FROM cards WHERE id = $1", card_id)
