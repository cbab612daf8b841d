"""Operator accounts and their sessions (migrations/0003_operators.sql): creation with a provisional password,
argon2id password checks with throttling, bounded sessions, password change and reset, disabling.

Login gives one answer for an unknown login, a wrong password, a locked or a disabled account,
at the same cost (an argon2 verification against a dummy hash), so that it tells nothing. Each
attempt is charged *before* the password is checked, so a burst of parallel guesses cannot get
past the lock. Account changes are audited in the same transaction; passwords and hashes never
reach the audit trail. Logins, refused logins and logouts are audited too, with the channel
(`via`: the API or the back office's pages); a refused login's actor is unknown ("anonymous"),
and a login that names no account is kept masked (it may be a password typed in the wrong field).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import secrets
from dataclasses import dataclass

import asyncpg
from argon2 import PasswordHasher

from ledger.audit import append_audit
from ledger.passwords import (DEFAULT_HASHER, PASSWORD_MAX_LENGTH_CHARS, PasswordRefused,
                              check_new_password, hash_password, provisional_password,
                              verify_password)

ROLES = ("region_operator", "establishment_staff", "partner", "auditor")
LOGIN_PATTERN = re.compile(r"^[a-z][a-z0-9._-]{2,63}$")
LOGIN_FAILURES_BEFORE_LOCK = 5
LOGIN_LOCK_MS = 15 * 60 * 1000
SESSION_LIFETIME_MS = 8 * 3600 * 1000
SESSION_TOKEN_BYTES = 32              # 43 URL-safe characters
SESSION_TOKEN_PATTERN = re.compile(r"^[A-Za-z0-9_-]{43}$")
MAX_ACTIVE_SESSIONS_PER_OPERATOR = 10  # older ones are revoked at the next login
LIST_OPERATORS_MAX_ROWS = 10_000
LOGIN_REFUSED_MESSAGE = "invalid login or password"
LOGIN_CHANNELS = ("api", "bureau")    # the operator API, the back office's pages
UNKNOWN_ACTOR = "anonymous"
# Region operators that must stay enabled besides the one disabled and the one disabling: no
# single region operator can lock the region's staff out (disable_operator).
MIN_OTHER_REGION_OPERATOR_ACCOUNTS = 1

_ACCOUNT = ("o.id, o.login, o.role, o.establishment_id, o.partner_id, o.must_change_password,"
            " o.disabled, coalesce(o.locked_until > business_now(), false) AS locked, o.created_at")


class OperatorError(Exception):
    """An account request refused; the message says why, and never contains a password."""


class LoginRefused(OperatorError):
    def __init__(self) -> None:
        super().__init__(LOGIN_REFUSED_MESSAGE)


class WrongPassword(OperatorError):
    pass


class UnknownOperator(OperatorError):
    pass


class OperatorConflict(OperatorError):
    pass


@dataclass(frozen=True)
class Account:
    id: int
    login: str
    role: str
    establishment_id: int | None
    partner_id: int | None
    must_change_password: bool
    disabled: bool
    locked: bool
    created_at: dt.datetime

    def audit_view(self) -> dict:
        """What the audit trail keeps of an account: no secret, nothing that changes by itself."""
        return {"login": self.login, "role": self.role, "establishment_id": self.establishment_id,
                "partner_id": self.partner_id, "must_change_password": self.must_change_password,
                "disabled": self.disabled}


@dataclass(frozen=True)
class Session:
    id: int
    token: str | None        # given once, at login; only its SHA-256 is stored
    expires_at: dt.datetime
    account: Account


def _account(row: asyncpg.Record) -> Account:
    return Account(**{field: row[field] for field in Account.__dataclass_fields__})


def masked_login(login_name: str) -> str:
    """What logs and the audit trail keep of a login naming no account: its first 2 characters
    and its length (a passphrase typed into the login field must not be kept)."""
    return f"{login_name[:2]}...({len(login_name)} chars)"


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


async def create_operator(conn: asyncpg.Connection, *, actor: str, login: str, role: str,
                          establishment_id: int | None = None, partner_id: int | None = None,
                          password: str | None = None,
                          hasher: PasswordHasher = DEFAULT_HASHER) -> tuple[Account, str | None]:
    """A new account. With no password, a provisional one is made, returned once, and must be
    changed at first login."""
    if not LOGIN_PATTERN.match(login):
        raise OperatorError("a login is 3 to 64 characters: a-z first, then a-z 0-9 . _ -")
    if role not in ROLES:
        raise OperatorError(f"unknown role {role!r} (one of {', '.join(ROLES)})")
    if (role == "establishment_staff") != (establishment_id is not None):
        raise OperatorError("establishment staff, and only they, need an establishment")
    if (role == "partner") != (partner_id is not None):
        raise OperatorError("a partner account, and only it, needs a partner")
    provisional = provisional_password() if password is None else None
    if password is not None:
        _check_new(password, login)
    password_hash = await hash_password(hasher, password or provisional)
    try:
        async with conn.transaction():
            row = await conn.fetchrow(
                "INSERT INTO operators AS o (login, role, establishment_id, partner_id, password_hash,"
                f" must_change_password) VALUES ($1, $2, $3, $4, $5, $6) RETURNING {_ACCOUNT}",
                login, role, establishment_id, partner_id, password_hash, password is None)
            account = _account(row)
            await append_audit(conn, actor=actor, action="operator.create",
                               subject=f"operator:{login}", after=account.audit_view())
    except asyncpg.UniqueViolationError:
        raise OperatorConflict(f"the login {login} is taken") from None
    except asyncpg.ForeignKeyViolationError:
        what = "establishment" if establishment_id is not None else "partner"
        raise OperatorError(f"no {what} {establishment_id or partner_id}") from None
    return account, provisional


async def _check_password(conn: asyncpg.Connection, login_name: str | None,
                          operator_id: int | None, password: str,
                          hasher: PasswordHasher) -> tuple[asyncpg.Record | None, bool]:
    """One attempt charged (sql/functions/charge_operator_login.sql), then the password checked."""
    row = None
    if len(password) <= PASSWORD_MAX_LENGTH_CHARS:
        row = await conn.fetchrow("SELECT * FROM charge_operator_login($1, $2, $3, $4)",
                                  login_name, operator_id, LOGIN_FAILURES_BEFORE_LOCK, LOGIN_LOCK_MS)
    ok = await verify_password(hasher, row["password_hash"] if row else None, password)
    if row is not None and not ok and row["locked"]:
        # This failure locked the account: whoever holds its sessions may be the one guessing.
        await conn.execute("UPDATE operator_sessions SET revoked = true WHERE operator_id = $1"
                           " AND NOT revoked", row["id"])
    return row, ok and row is not None


async def _current_hash(row: asyncpg.Record, password: str, hasher: PasswordHasher) -> str:
    """After a right password: the stored hash, or a new one if the parameters changed."""
    if hasher.check_needs_rehash(row["password_hash"]):
        return await hash_password(hasher, password)
    return row["password_hash"]


def _check_new(password: str, login_name: str) -> None:
    try:
        check_new_password(password, login_name)
    except PasswordRefused as exc:
        raise OperatorError(str(exc)) from None


async def login(conn: asyncpg.Connection, login_name: str, password: str,
                hasher: PasswordHasher = DEFAULT_HASHER, *, via: str = "api") -> Session:
    """A new session for the right password; LoginRefused for anything else, always the same.
    Both are audited, the session in the transaction that opens it."""
    if via not in LOGIN_CHANNELS:
        raise ValueError(f"unknown login channel {via!r}")
    # A login that cannot exist (CHECK on the column) costs the same query and check.
    row, ok = await _check_password(conn, login_name.lower(), None, password, hasher)
    if not ok:
        await _audit_refused_login(conn, login_name.lower(), row, via)
        raise LoginRefused()
    password_hash = await _current_hash(row, password, hasher)
    async with conn.transaction():
        await conn.execute("UPDATE operators SET failed_logins = 0, locked_until = NULL,"
                           " password_hash = $2 WHERE id = $1", row["id"], password_hash)
        session = await open_session(conn, row["id"])
        await append_audit(conn, actor=f"{row['role']}:{row['login']}", action="operator.login",
                           subject=f"operator:{row['login']}",
                           after={"via": via, "session_id": session.id})
        return session


async def _audit_refused_login(conn: asyncpg.Connection, login_name: str,
                               charged: asyncpg.Record | None, via: str) -> None:
    """Why the login was refused, for the audit trail only (the caller's answer is the same)."""
    state = await conn.fetchrow("SELECT login, disabled, coalesce(locked_until > business_now(),"
                                " false) AS locked FROM operators WHERE login = $1", login_name)
    if charged is not None:
        reason = "wrong password, account now locked" if charged["locked"] else "wrong password"
    elif state is None:
        reason = "unknown login"
    elif state["disabled"]:
        reason = "account disabled"
    else:
        reason = "account locked" if state["locked"] else "password over the maximum length"
    after = {"via": via, "reason": reason}
    if state is None:
        after["login"] = masked_login(login_name)
    await append_audit(conn, actor=UNKNOWN_ACTOR, action="operator.login_refused",
                       subject=f"operator:{state['login']}" if state else "operator:unknown",
                       after=after)


async def open_session(conn: asyncpg.Connection, operator_id: int) -> Session:
    """A session for an operator whose password was just checked (or a test's account)."""
    token = secrets.token_urlsafe(SESSION_TOKEN_BYTES)
    async with conn.transaction():
        await conn.execute("DELETE FROM operator_sessions WHERE operator_id = $1"
                           " AND (revoked OR expires_at <= business_now())", operator_id)
        session_id, expires_at = await conn.fetchrow(
            "INSERT INTO operator_sessions (token_hash, operator_id, created_at, expires_at)"
            " SELECT $1, $2, business_now(), business_now() + $3 * interval '1 millisecond'"
            " RETURNING id, expires_at", token_digest(token), operator_id, SESSION_LIFETIME_MS)
        await conn.execute(
            "UPDATE operator_sessions SET revoked = true WHERE operator_id = $1 AND NOT revoked"
            " AND id NOT IN (SELECT id FROM operator_sessions WHERE operator_id = $1"
            " AND NOT revoked ORDER BY id DESC LIMIT $2)", operator_id,
            MAX_ACTIVE_SESSIONS_PER_OPERATOR)
        account = _account(await conn.fetchrow(f"SELECT {_ACCOUNT} FROM operators o WHERE id = $1",
                                               operator_id))
    return Session(session_id, token, expires_at, account)


async def resolve_session(conn: asyncpg.Connection | asyncpg.Pool, token: str) -> Session | None:
    """The live session of a bearer token, in one query: unexpired, not revoked, account enabled."""
    if not SESSION_TOKEN_PATTERN.match(token):
        return None
    row = await conn.fetchrow(
        f"SELECT s.id AS session_id, s.expires_at, {_ACCOUNT} FROM operator_sessions s"
        " JOIN operators o ON o.id = s.operator_id WHERE s.token_hash = $1 AND NOT s.revoked"
        " AND s.expires_at > business_now() AND NOT o.disabled", token_digest(token))
    return None if row is None else Session(row["session_id"], None, row["expires_at"], _account(row))


async def logout(conn: asyncpg.Connection | asyncpg.Pool, session: Session, *,
                 via: str = "api") -> None:
    """End the session, audited in the same statement (once: a second logout changes nothing)."""
    if via not in LOGIN_CHANNELS:
        raise ValueError(f"unknown login channel {via!r}")
    login_name = session.account.login
    await conn.execute(
        "WITH ended AS (UPDATE operator_sessions SET revoked = true WHERE id = $1 AND NOT revoked"
        " RETURNING id) SELECT append_audit($2, 'operator.logout', $3, NULL, $4::jsonb) FROM ended",
        session.id, f"{session.account.role}:{login_name}", f"operator:{login_name}",
        json.dumps({"via": via, "session_id": session.id}))


async def change_password(conn: asyncpg.Connection, session: Session, current: str, new: str,
                          hasher: PasswordHasher = DEFAULT_HASHER) -> None:
    """The operator's own change: the current password checked (a wrong one counts towards the
    lock), the others of their sessions ended, this one kept."""
    login_name = session.account.login
    _check_new(new, login_name)
    if new == current:
        raise OperatorError("the new password must differ from the current one")
    row, ok = await _check_password(conn, None, session.account.id, current, hasher)
    if not ok:
        raise WrongPassword("the current password is wrong (or the account is locked)")
    new_hash = await hash_password(hasher, new)
    async with conn.transaction():
        await conn.execute("UPDATE operators SET password_hash = $2, must_change_password = false,"
                           " failed_logins = 0, locked_until = NULL WHERE id = $1", row["id"],
                           new_hash)
        await conn.execute("UPDATE operator_sessions SET revoked = true WHERE operator_id = $1"
                           " AND id <> $2", row["id"], session.id)
        await append_audit(conn, actor=f"{row['role']}:{login_name}", action="operator.password",
                           subject=f"operator:{login_name}",
                           before={"must_change_password": row["must_change_password"]},
                           after={"must_change_password": False})


async def _enabled_account_for_update(conn: asyncpg.Connection, login_name: str) -> Account:
    row = await conn.fetchrow(f"SELECT {_ACCOUNT} FROM operators o WHERE login = $1 FOR UPDATE",
                              login_name)
    if row is None:
        raise UnknownOperator(f"no operator {login_name}")
    account = _account(row)
    if account.disabled:
        raise OperatorConflict(f"operator {login_name} is disabled")
    return account


async def reset_password(conn: asyncpg.Connection, *, actor: str, login_name: str,
                         hasher: PasswordHasher = DEFAULT_HASHER) -> str:
    """A new provisional password (returned once), to change at next login; the lock lifted and
    every session ended."""
    provisional = provisional_password()
    password_hash = await hash_password(hasher, provisional)
    async with conn.transaction():
        before = await _enabled_account_for_update(conn, login_name)
        await conn.execute("UPDATE operators SET password_hash = $2, must_change_password = true,"
                           " failed_logins = 0, locked_until = NULL WHERE id = $1", before.id,
                           password_hash)
        await conn.execute("UPDATE operator_sessions SET revoked = true WHERE operator_id = $1",
                           before.id)
        await append_audit(conn, actor=actor, action="operator.password_reset",
                           subject=f"operator:{login_name}",
                           before={"must_change_password": before.must_change_password,
                                   "locked": before.locked},
                           after={"must_change_password": True, "locked": False})
    return provisional


async def disable_operator(conn: asyncpg.Connection, *, actor: str, login_name: str,
                           by_operator_id: int | None = None) -> Account:
    """Disabled for good (a new account is a new login): every session ends at once. A region
    operator is disabled only if MIN_OTHER_REGION_OPERATOR_ACCOUNTS others stay enabled besides
    them and `by_operator_id` (the operator asking, None from the command line). The enabled
    region operators are locked first, in id order, so two disables at once are decided one
    after the other and cannot deadlock."""
    async with conn.transaction():
        region_operators = await conn.fetch(
            "SELECT id FROM operators WHERE role = 'region_operator' AND NOT disabled"
            " ORDER BY id FOR UPDATE")
        enabled = {row["id"] for row in region_operators}
        if by_operator_id is not None and by_operator_id not in enabled:
            # Disabled by another operator while this request waited for the lock: it was
            # authenticated before, but may no longer act (two operators disabling each other).
            raise OperatorConflict("your own account was disabled meanwhile: nothing changed")
        before = await _enabled_account_for_update(conn, login_name)
        others = enabled - {before.id, by_operator_id}
        if before.role == "region_operator" and len(others) < MIN_OTHER_REGION_OPERATOR_ACCOUNTS:
            raise OperatorConflict(
                f"operator {login_name} is a region operator, and disabling them would leave "
                f"fewer than {MIN_OTHER_REGION_OPERATOR_ACCOUNTS} other active region operator: "
                "create another region operator account first")
        row = await conn.fetchrow(f"UPDATE operators o SET disabled = true WHERE id = $1"
                                  f" RETURNING {_ACCOUNT}", before.id)
        await conn.execute("UPDATE operator_sessions SET revoked = true WHERE operator_id = $1",
                           before.id)
        after = _account(row)
        await append_audit(conn, actor=actor, action="operator.disable",
                           subject=f"operator:{login_name}", before=before.audit_view(),
                           after=after.audit_view())
    return after


async def list_operators(conn: asyncpg.Connection | asyncpg.Pool) -> list[Account]:
    rows = await conn.fetch(f"SELECT {_ACCOUNT} FROM operators o ORDER BY o.login LIMIT $1",
                            LIST_OPERATORS_MAX_ROWS)
    return [_account(row) for row in rows]
