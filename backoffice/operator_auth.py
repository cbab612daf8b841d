"""Who is calling the operator API, and may they (issue 6).

A middleware reads `Authorization: Bearer <token>` once per request (one query: the session,
unexpired and not revoked, of an enabled account) and keeps the result on the request; handlers
then call the synchronous require(). Errors are JSON, `{"error": "..."}`.
"""

from __future__ import annotations

import asyncio
import enum
import json
from dataclasses import dataclass

import asyncpg
from aiohttp import web

from ledger.operators import Session, resolve_session

POOL = web.AppKey("pool", asyncpg.Pool)
SESSION = web.RequestKey("operator_session", Session)
# Waiting for a pool connection to read a token; beyond it the API answers 503.
AUTH_POOL_ACQUIRE_TIMEOUT_MS = 5000
MAX_AUTHORIZATION_HEADER_CHARS = 200
BEARER_CHALLENGE = 'Bearer realm="hdfpay-ops"'


class Role(enum.StrEnum):
    REGION_OPERATOR = "region_operator"        # everything the region runs
    ESTABLISHMENT_STAFF = "establishment_staff"  # rights of their own establishment's students
    PARTNER = "partner"                        # their own shops' settlement and batches
    AUDITOR = "auditor"                        # read-only, everything


@dataclass(frozen=True)
class Operator:
    id: int
    login: str
    role: Role
    establishment_id: int | None = None
    partner_id: int | None = None

    @property
    def actor(self) -> str:
        """How the audit trail names this person."""
        return f"{self.role.value}:{self.login}"


def json_error(exception: type[web.HTTPException], message: str,
               headers: dict[str, str] | None = None) -> web.HTTPException:
    """An aiohttp HTTP exception whose body is `{"error": message}`: raise it from a handler."""
    return exception(text=json.dumps({"error": message}), content_type="application/json",
                     headers=headers)


def current_session(request: web.Request, *, password_change_ok: bool = False) -> Session:
    """The caller's live session, any role: 401 without one. An account with a provisional
    password may only see itself, change the password and log out (403 otherwise)."""
    session = request.get(SESSION)
    if session is None:
        raise json_error(web.HTTPUnauthorized, "authentication required: a valid, unexpired "
                         "bearer token (POST /v1/ops/login)",
                         headers={"WWW-Authenticate": BEARER_CHALLENGE})
    if session.account.must_change_password and not password_change_ok:
        raise json_error(web.HTTPForbidden, "password change required (POST /v1/ops/password)")
    return session


def operator_of(session: Session) -> Operator:
    account = session.account
    return Operator(account.id, account.login, Role(account.role), account.establishment_id,
                    account.partner_id)


def require(request: web.Request, *roles: Role) -> Operator:
    """The authenticated caller if their role is one of `roles`: otherwise 401 (no valid, unexpired
    token) or 403 (wrong role), as JSON errors."""
    operator = operator_of(current_session(request))
    if operator.role not in roles:
        allowed = " or ".join(role.value for role in roles) or "no role"
        raise json_error(web.HTTPForbidden, f"forbidden: this needs {allowed}")
    return operator


def bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    if not header or len(header) > MAX_AUTHORIZATION_HEADER_CHARS:
        return None
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


@web.middleware
async def resolve_operator(request: web.Request, handler) -> web.StreamResponse:
    """Reads the bearer token once; a missing or unknown token leaves no session (401 later,
    from require(), only on routes that need one)."""
    token = bearer_token(request)
    if token is not None:
        try:
            async with request.app[POOL].acquire(timeout=AUTH_POOL_ACQUIRE_TIMEOUT_MS / 1000) as conn:
                session = await resolve_session(conn, token)
        except (asyncio.TimeoutError, OSError, asyncpg.PostgresError,
                asyncpg.InterfaceError) as exc:
            raise json_error(web.HTTPServiceUnavailable,
                             f"database unavailable ({type(exc).__name__})") from None
        if session is not None:
            request[SESSION] = session
    return await handler(request)
