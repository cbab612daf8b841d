"""Builds and updates the database: numbered migrations once each, then the function files.

- ledger/migrations/NNNN_*.sql: tables, indexes, constraints and data changes. Each is applied
  once, recorded in schema_migrations with its checksum; an applied file that was edited is
  refused (add a new migration instead).
- ledger/sql/functions/*.sql and ledger/sql/views/*.sql: one function (with its triggers) or one
  view per file, written with CREATE OR REPLACE, like Flyway's repeatable migrations: the body in
  the file is the one that runs. Re-applied after the numbered migrations whenever the file's
  checksum differs from the one recorded in schema_repeatables. Only changed files are applied,
  not all: CREATE OR REPLACE TRIGGER takes a lock on its table that blocks writes, and a `db
  migrate` on a running region should not stall the authorization path for nothing.
  A change of a function's arguments or result type is a DROP FUNCTION in a numbered migration
  (which runs first) plus the new file; CREATE OR REPLACE cannot change them.

Everything runs in one transaction under an advisory lock, with check_function_bodies off so the
order of the function files does not matter (a body is checked when it first runs, which the
test suite does for every one).

A small runner rather than yoyo-migrations: yoyo needs a synchronous DB-API driver (psycopg) beside
asyncpg, and splits files into statements, which PL/pgSQL bodies make fragile. This runner sends
each file whole.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from ledger.roles import act_as_owner, ensure_roles

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
SQL_DIR = Path(__file__).parent / "sql"
# Functions before views: a view may call a function; functions do not read views.
REPEATABLE_SUBDIRS = ("functions", "views")
# Who may do what (ledger/roles.py names the roles): applied after everything else, and again
# whenever anything else was, since a new table or function starts with no grants.
PRIVILEGES_FILE = "privileges.sql"
MIGRATION_ADVISORY_LOCK_KEY = 0x4844_4650  # "HDFP"


class MigrationError(RuntimeError):
    """The database's recorded migrations do not match the files shipped with this version."""


@dataclass(frozen=True)
class Migration:
    version: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def shipped_migrations() -> list[Migration]:
    files = sorted(MIGRATIONS_DIR.glob("[0-9][0-9][0-9][0-9]_*.sql"))
    return [Migration(version=f.stem, sql=f.read_text()) for f in files]


def shipped_repeatables() -> list[Migration]:
    """The function and view files, named by their path under ledger/sql ('functions/x.sql'),
    then the privileges file, last."""
    return [Migration(version=f"{subdir}/{f.name}", sql=f.read_text())
            for subdir in REPEATABLE_SUBDIRS for f in sorted((SQL_DIR / subdir).glob("*.sql"))
            ] + [Migration(version=PRIVILEGES_FILE, sql=(SQL_DIR / PRIVILEGES_FILE).read_text())]


OLD_LAYOUT_MESSAGE = (
    "This database was built by an older hdfpay whose migrations held the function bodies "
    "(before the squash into ledger/migrations + ledger/sql). It cannot be upgraded in place: "
    "recreate it (for the embedded cluster: 'hdfpay db stop', remove its data directory "
    "(HDFPAY_DATA_DIR), 'hdfpay db start', 'hdfpay db migrate', then seed again).")


async def migrate(conn: asyncpg.Connection) -> list[str]:
    """Apply what is missing or changed; return what was applied now, numbered migrations first
    then function and view files ('functions/x.sql'); empty when up to date."""
    applied_now: list[str] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_ADVISORY_LOCK_KEY)
        await conn.execute("SET LOCAL check_function_bodies = off")
        had_history = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
        has_repeatables = await conn.fetchval("SELECT to_regclass('schema_repeatables') IS NOT NULL")
        if had_history and not has_repeatables:
            raise MigrationError(OLD_LAYOUT_MESSAGE)
        # applied_at: when this code was deployed, a technical time (the wall clock), not
        # business time.
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version text PRIMARY KEY, checksum text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())")
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_repeatables ("
            " path text PRIMARY KEY, checksum text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())")
        await ensure_roles(conn)
        await act_as_owner(conn)
        applied_now += await _apply_numbered(conn)
        applied_now += await _apply_repeatables(conn, force_privileges=bool(applied_now))
    return applied_now


async def _apply_numbered(conn: asyncpg.Connection) -> list[str]:
    recorded = {r["version"]: r["checksum"]
                for r in await conn.fetch("SELECT version, checksum FROM schema_migrations")}
    shipped = shipped_migrations()
    unknown = set(recorded) - {m.version for m in shipped}
    if unknown:
        raise MigrationError(
            f"The database has migrations this version does not know: {sorted(unknown)}. "
            "Is an older hdfpay running against a newer database?")
    applied: list[str] = []
    for migration in shipped:
        if migration.version in recorded:
            if recorded[migration.version] != migration.checksum:
                raise MigrationError(
                    f"Migration {migration.version} was changed after it was applied. "
                    "Add a new migration instead of editing an applied one.")
            continue
        await conn.execute(migration.sql)
        await conn.execute("INSERT INTO schema_migrations (version, checksum) VALUES ($1, $2)",
                           migration.version, migration.checksum)
        applied.append(migration.version)
    return applied


async def _apply_repeatables(conn: asyncpg.Connection, force_privileges: bool) -> list[str]:
    recorded = {r["path"]: r["checksum"]
                for r in await conn.fetch("SELECT path, checksum FROM schema_repeatables")}
    applied: list[str] = []
    for repeatable in shipped_repeatables():
        forced = repeatable.version == PRIVILEGES_FILE and (force_privileges or applied)
        if recorded.get(repeatable.version) == repeatable.checksum and not forced:
            continue
        await conn.execute(repeatable.sql)
        await conn.execute(
            "INSERT INTO schema_repeatables (path, checksum) VALUES ($1, $2)"
            " ON CONFLICT (path) DO UPDATE SET checksum = excluded.checksum, applied_at = now()",
            repeatable.version, repeatable.checksum)
        applied.append(repeatable.version)
    return applied
