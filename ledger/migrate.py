"""Applies the numbered SQL files in ledger/migrations, once each, recorded in schema_migrations.

A small runner rather than yoyo-migrations: yoyo needs a synchronous DB-API driver (psycopg) beside
asyncpg, and splits files into statements, which PL/pgSQL bodies make fragile. This runner sends
each file whole, under an advisory lock, in one transaction, and refuses a file that was edited
after it was applied (its checksum changed).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import asyncpg

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
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


async def migrate(conn: asyncpg.Connection) -> list[str]:
    """Apply what is missing; return the versions applied now (empty when up to date)."""
    applied_now: list[str] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_ADVISORY_LOCK_KEY)
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version text PRIMARY KEY, checksum text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        recorded = {r["version"]: r["checksum"]
                    for r in await conn.fetch("SELECT version, checksum FROM schema_migrations")}
        shipped = shipped_migrations()
        unknown = set(recorded) - {m.version for m in shipped}
        if unknown:
            raise MigrationError(
                f"The database has migrations this version does not know: {sorted(unknown)}. "
                "Is an older hdfpay running against a newer database?"
            )
        for migration in shipped:
            if migration.version in recorded:
                if recorded[migration.version] != migration.checksum:
                    raise MigrationError(
                        f"Migration {migration.version} was changed after it was applied. "
                        "Add a new migration instead of editing an applied one."
                    )
                continue
            await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, checksum) VALUES ($1, $2)",
                migration.version, migration.checksum,
            )
            applied_now.append(migration.version)
    return applied_now
