"""A rights-renewal file between its dry run and "Appliquer", in the database (migration 0021),
so that the two requests may reach different server processes (`serve --workers N`).

The page gives the operator a random token; the table keeps its SHA-256, the operator who sent
the file, the school year, the name and the bytes. A draft is the operator's alone, lives
RENEWAL_DRAFT_TTL_S, and at most RENEWAL_DRAFTS_MAX wait at once (the oldest go first); expired
ones are deleted whenever a draft is kept or taken. Times are the business clock
(business_now(): the database's clock unless tests or the demo pinned it), as for sessions.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

import asyncpg

RENEWAL_DRAFT_TTL_S = 30 * 60
RENEWAL_DRAFTS_MAX = 32
TOKEN_BYTES = 16

_EXPIRED_SQL = ("DELETE FROM renewal_drafts"
                " WHERE kept_at < business_now() - make_interval(secs => $1)")


@dataclass(frozen=True)
class RenewalDraft:
    operator_id: int
    school_year: int
    file_name: str
    data: bytes


def _sha256(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


async def keep_draft(conn: asyncpg.Connection, draft: RenewalDraft) -> str:
    """Store the file; the token that names it (URL-safe text)."""
    token = secrets.token_urlsafe(TOKEN_BYTES)
    async with conn.transaction():
        await conn.execute(_EXPIRED_SQL, RENEWAL_DRAFT_TTL_S)
        await conn.execute(
            "DELETE FROM renewal_drafts WHERE token_sha256 IN (SELECT token_sha256"
            " FROM renewal_drafts ORDER BY kept_at DESC OFFSET $1)", RENEWAL_DRAFTS_MAX - 1)
        await conn.execute(
            "INSERT INTO renewal_drafts (token_sha256, operator_id, school_year, file_name, data)"
            " VALUES ($1, $2, $3, $4, $5)", _sha256(token), draft.operator_id,
            draft.school_year, draft.file_name, draft.data)
    return token


async def take_draft(conn: asyncpg.Connection, token: str,
                     operator_id: int) -> RenewalDraft | None:
    """Delete and return the operator's draft under this token; None when unknown, expired or
    someone else's. Called inside the apply's transaction: a second "Appliquer" of the same file
    waits for the first and then finds nothing, and an apply that fails keeps its draft."""
    await conn.execute(_EXPIRED_SQL, RENEWAL_DRAFT_TTL_S)
    row = await conn.fetchrow(
        "DELETE FROM renewal_drafts WHERE token_sha256 = $1 AND operator_id = $2"
        " RETURNING operator_id, school_year, file_name, data", _sha256(token), operator_id)
    return RenewalDraft(**row) if row else None
