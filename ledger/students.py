"""Students' accounts and sessions for their web space (migrations/0011_student_accounts.sql).

A student logs in with the dossier number or the number of one of their cards, and a password
(argon2id, ledger/passwords.py). Like operators' logins: one answer for an unknown identifier, a
wrong password or a locked account, at the same cost; each attempt is charged before the password
is checked, so parallel guesses cannot pass the lock. An account starts with a provisional
password that must be changed at the first login.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass

import asyncpg
from argon2 import PasswordHasher

from ledger.mail_outbox import enqueue
from ledger.passwords import (DEFAULT_HASHER, PASSWORD_MAX_LENGTH_CHARS, PasswordRefused,
                              check_new_password, hash_password, provisional_password,
                              verify_password)

LOGIN_FAILURES_BEFORE_LOCK = 5
LOGIN_LOCK_MS = 15 * 60 * 1000
SESSION_LIFETIME_MS = 2 * 3600 * 1000      # a student's visit, not a working day
SESSION_TOKEN_BYTES = 32
SESSION_TOKEN_PATTERN = re.compile(r"^[A-Za-z0-9_-]{43}$")
MAX_ACTIVE_SESSIONS_PER_STUDENT = 5
# What a login form may hold: a dossier number (6-20 of 0-9 A-Z) or a card number (16 digits).
IDENTIFIER_PATTERN = re.compile(r"^[0-9A-Z]{6,20}$")


class StudentAccountError(Exception):
    """Refused; the message is French, for the student, and never holds a password."""


class LoginRefused(StudentAccountError):
    def __init__(self) -> None:
        super().__init__("Identifiant ou mot de passe incorrect, ou compte bloqué quelques "
                         "minutes après plusieurs essais")


@dataclass(frozen=True)
class Student:
    """A beneficiary, or an applicant whose first-card application is not sent yet (no
    beneficiary, no dossier: the identifier is DEM and the application's number)."""

    account_id: int
    beneficiary_id: int | None
    application_id: int | None
    dossier_number: str | None
    first_name: str
    must_change_password: bool

    @property
    def identifier(self) -> str:
        return self.dossier_number or f"DEM{self.application_id:07d}"


@dataclass(frozen=True)
class StudentSession:
    session_id: int
    token: str | None          # only when just opened: it goes to the cookie, never stored
    student: Student


_STUDENT = ("a.id AS account_id, a.beneficiary_id, a.application_id, b.dossier_number,"
            " coalesce(b.first_name, ap.first_name) AS first_name, a.must_change_password")
_ACCOUNT = ("student_accounts a LEFT JOIN beneficiaries b ON b.id = a.beneficiary_id"
            " LEFT JOIN card_applications ap ON ap.id = a.application_id")
# A dossier number, a card's number, or an applicant's DEM number.
_BY_IDENTIFIER = ("(a.beneficiary_id = (SELECT b2.id FROM beneficiaries b2 WHERE b2.dossier_number = $1"
                  " UNION ALL SELECT c.beneficiary_id FROM cards c WHERE c.card_number = $1 LIMIT 1)"
                  " OR a.application_id = CASE WHEN $1 ~ '^DEM[0-9]{7}$'"
                  " THEN substr($1, 4)::bigint END)")
_CHARGE_ATTEMPT = """
    WITH now AS (SELECT business_now() AS t)
    UPDATE student_accounts a SET
        failed_logins = CASE WHEN a.locked_until <= now.t THEN 0 ELSE a.failed_logins END + 1,
        locked_until = CASE WHEN (CASE WHEN a.locked_until <= now.t THEN 0
                                       ELSE a.failed_logins END) + 1 >= $2
                            THEN now.t + $3 * interval '1 millisecond' END
    FROM now
    WHERE {key} AND (a.locked_until IS NULL OR a.locked_until <= now.t)
    RETURNING a.password_hash, a.id AS account_id"""


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def normalized_identifier(text: str) -> str:
    """What the student typed, as the ledger stores it (spaces dropped, upper case)."""
    return re.sub(r"\s+", "", text).upper()


async def dossier_of_card(conn: asyncpg.Connection, uid: bytes) -> str | None:
    """The dossier number of the card's beneficiary (the demo's student, the load tests')."""
    return await conn.fetchval("SELECT b.dossier_number FROM cards c JOIN beneficiaries b"
                               " ON b.id = c.beneficiary_id WHERE c.uid = $1", uid)


async def create_account(conn: asyncpg.Connection, dossier_number: str,
                         hasher: PasswordHasher = DEFAULT_HASHER, *,
                         password: str | None = None) -> str:
    """An account for a beneficiary, with a provisional password (returned once) to change at
    the first login; or, for the demo only, the `password` given, kept."""
    provisional = password is None
    password = password or provisional_password()
    try:
        created = await conn.fetchval(
            "INSERT INTO student_accounts (beneficiary_id, password_hash, must_change_password,"
            " created_at) SELECT id, $2, $3, business_now() FROM beneficiaries"
            " WHERE dossier_number = $1 RETURNING id", dossier_number,
            await hash_password(hasher, password), provisional)
    except asyncpg.UniqueViolationError:
        raise StudentAccountError(f"le dossier {dossier_number} a déjà un compte") from None
    if created is None:
        raise StudentAccountError(f"aucun dossier {dossier_number}")
    return password


async def _charged(conn, key: str, value, password: str, hasher: PasswordHasher):
    row = None
    if len(password) <= PASSWORD_MAX_LENGTH_CHARS:
        row = await conn.fetchrow(_CHARGE_ATTEMPT.format(key=key), value,
                                  LOGIN_FAILURES_BEFORE_LOCK, LOGIN_LOCK_MS)
    ok = await verify_password(hasher, row["password_hash"] if row else None, password)
    return row, ok and row is not None


async def login(conn: asyncpg.Connection, identifier: str, password: str,
                hasher: PasswordHasher = DEFAULT_HASHER) -> StudentSession:
    """A new session for the right password; LoginRefused for anything else, always the same."""
    identifier = normalized_identifier(identifier)
    if not IDENTIFIER_PATTERN.match(identifier):
        identifier = "-"                 # matches nothing, at the same cost
    row, ok = await _charged(conn, _BY_IDENTIFIER, identifier, password, hasher)
    if not ok:
        raise LoginRefused()
    async with conn.transaction():
        await conn.execute("UPDATE student_accounts SET failed_logins = 0, locked_until = NULL"
                           " WHERE id = $1", row["account_id"])
        return await _open_session(conn, row["account_id"])


async def _open_session(conn: asyncpg.Connection, account_id: int) -> StudentSession:
    token = secrets.token_urlsafe(SESSION_TOKEN_BYTES)
    await conn.execute("DELETE FROM student_sessions WHERE account_id = $1"
                       " AND (revoked OR expires_at <= business_now())", account_id)
    session_id = await conn.fetchval(
        "INSERT INTO student_sessions (token_hash, account_id, created_at, expires_at)"
        " SELECT $1, $2, business_now(), business_now() + $3 * interval '1 millisecond'"
        " RETURNING id", token_digest(token), account_id, SESSION_LIFETIME_MS)
    await conn.execute(
        "UPDATE student_sessions SET revoked = true WHERE account_id = $1 AND NOT revoked"
        " AND id NOT IN (SELECT id FROM student_sessions WHERE account_id = $1 AND NOT revoked"
        " ORDER BY id DESC LIMIT $2)", account_id, MAX_ACTIVE_SESSIONS_PER_STUDENT)
    row = await conn.fetchrow(f"SELECT {_STUDENT} FROM {_ACCOUNT} WHERE a.id = $1", account_id)
    return StudentSession(session_id, token, Student(**row))


async def resolve_session(conn: asyncpg.Connection | asyncpg.Pool,
                          token: str) -> StudentSession | None:
    """The live session of a cookie's token, in one query."""
    if not SESSION_TOKEN_PATTERN.match(token):
        return None
    row = await conn.fetchrow(
        f"SELECT s.id AS session_id, {_STUDENT} FROM student_sessions s"
        f" JOIN {_ACCOUNT} ON a.id = s.account_id WHERE s.token_hash = $1 AND NOT s.revoked"
        " AND s.expires_at > business_now()", token_digest(token))
    if row is None:
        return None
    session_id = row["session_id"]
    return StudentSession(session_id, None, Student(**{k: row[k] for k in row.keys()
                                                       if k != "session_id"}))


async def logout(conn: asyncpg.Connection | asyncpg.Pool, session_id: int) -> None:
    await conn.execute("UPDATE student_sessions SET revoked = true WHERE id = $1", session_id)


async def change_password(conn: asyncpg.Connection, session: StudentSession, current: str,
                          new: str, hasher: PasswordHasher = DEFAULT_HASHER) -> None:
    """The student's own change (the provisional one first): the current password checked, the
    student's other sessions ended."""
    try:
        check_new_password(new, session.student.identifier)
    except PasswordRefused:
        raise StudentAccountError(_PASSWORD_RULE) from None
    if new == current:
        raise StudentAccountError("Le nouveau mot de passe doit différer de l'actuel")
    _, ok = await _charged(conn, "a.id = $1", session.student.account_id, current, hasher)
    if not ok:
        raise StudentAccountError("Mot de passe actuel incorrect (ou compte bloqué quelques minutes)")
    new_hash = await hash_password(hasher, new)
    async with conn.transaction():
        await conn.execute("UPDATE student_accounts SET password_hash = $2, failed_logins = 0,"
                           " locked_until = NULL, must_change_password = false WHERE id = $1",
                           session.student.account_id, new_hash)
        await conn.execute("UPDATE student_sessions SET revoked = true WHERE account_id = $1"
                           " AND id <> $2", session.student.account_id, session.session_id)


# -- "Mot de passe oublié" ---------------------------------------------------------------------

RESET_LINK_LIFETIME_MS = 60 * 60 * 1000       # an hour to open the e-mail and choose a password
RESETS_PER_ACCOUNT_PER_DAY_MAX = 3            # beyond, requests are answered alike but send nothing
RESET_PATH = "/mot-de-passe-oublie"


async def request_password_reset(conn: asyncpg.Connection, identifier: str, portal_url: str) -> bool:
    """Queue the e-mail with a single-use link, in the same transaction as the link (so it is
    neither lost nor sent for a link that does not exist). False when nothing was sent (no such
    account, or too many requests today): the caller answers the same either way."""
    identifier = normalized_identifier(identifier)
    if not IDENTIFIER_PATTERN.match(identifier):
        return False
    async with conn.transaction():
        row = await conn.fetchrow(
            "SELECT a.id, coalesce(b.email, ap.email) AS email,"
            f" coalesce(b.first_name, ap.first_name) AS first_name FROM {_ACCOUNT}"
            f" WHERE {_BY_IDENTIFIER} FOR UPDATE OF a", identifier)
        if row is None:
            return False
        recent = await conn.fetchval(
            "SELECT count(*) FROM student_password_resets WHERE account_id = $1"
            " AND created_at > business_now() - interval '1 day'", row["id"])
        if recent >= RESETS_PER_ACCOUNT_PER_DAY_MAX:
            return False
        token = secrets.token_urlsafe(SESSION_TOKEN_BYTES)
        await conn.execute(
            "INSERT INTO student_password_resets (account_id, token_hash, created_at, expires_at)"
            " SELECT $1, $2, business_now(), business_now() + $3 * interval '1 millisecond'",
            row["id"], token_digest(token), RESET_LINK_LIFETIME_MS)
        await enqueue(conn, row["email"], "Génération #HDF : choisir un nouveau mot de passe",
                      _reset_mail(row["first_name"], f"{portal_url}{RESET_PATH}/{token}"),
                      "password_reset")
    return True


def _reset_mail(first_name: str, link: str) -> str:
    return (f"Bonjour {first_name},\n\n"
            "Vous avez demandé à changer le mot de passe de votre espace Génération #HDF.\n"
            f"Ouvrez ce lien dans l'heure pour en choisir un nouveau (il ne sert qu'une fois) :\n"
            f"{link}\n\n"
            "Si vous n'avez rien demandé, ignorez ce message : votre mot de passe ne change pas.\n\n"
            "Besoin d'aide ? 0 800 026 080 (gratuit, du lundi au vendredi de 8 h à 18 h),"
            " beneficiaire@hautsdefrance.fr\n"
            "Région Hauts-de-France\n")


async def reset_link_is_valid(conn: asyncpg.Connection | asyncpg.Pool, token: str) -> bool:
    return SESSION_TOKEN_PATTERN.match(token) is not None and await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM student_password_resets WHERE token_hash = $1"
        " AND used_at IS NULL AND expires_at > business_now())", token_digest(token))


async def reset_password(conn: asyncpg.Connection, token: str, new: str,
                         hasher: PasswordHasher = DEFAULT_HASHER) -> None:
    """The link's account gets `new`; the link is used up, the account's sessions end, a lock
    is lifted. StudentAccountError for a used, expired or unknown link."""
    if not SESSION_TOKEN_PATTERN.match(token):
        raise StudentAccountError(_DEAD_LINK)
    async with conn.transaction():
        row = await conn.fetchrow(
            "UPDATE student_password_resets r SET used_at = business_now()"
            " FROM student_accounts a LEFT JOIN beneficiaries b ON b.id = a.beneficiary_id"
            " WHERE r.token_hash = $1 AND r.used_at IS NULL AND r.expires_at > business_now()"
            " AND a.id = r.account_id RETURNING a.id,"
            " coalesce(b.dossier_number, 'DEM' || lpad(a.application_id::text, 7, '0'))"
            " AS dossier_number", token_digest(token))
        if row is None:
            raise StudentAccountError(_DEAD_LINK)
        try:
            check_new_password(new, row["dossier_number"])
        except PasswordRefused:
            raise StudentAccountError(_PASSWORD_RULE) from None
        await conn.execute("UPDATE student_accounts SET password_hash = $2, failed_logins = 0,"
                           " locked_until = NULL, must_change_password = false WHERE id = $1",
                           row["id"], await hash_password(hasher, new))
        await conn.execute("UPDATE student_sessions SET revoked = true WHERE account_id = $1",
                           row["id"])


_DEAD_LINK = "Ce lien n'est plus valable (déjà utilisé ou vieux de plus d'une heure) : redemandez-en un"
_PASSWORD_RULE = ("Le nouveau mot de passe doit avoir de 12 à 128 caractères et ne pas contenir"
                  " votre n° de dossier")
