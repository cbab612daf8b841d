"""The migration runner applies each file once, records it, and refuses an edited history."""

from __future__ import annotations

import asyncpg
import pytest

from ledger.migrate import MigrationError, migrate, shipped_migrations


async def test_migrations_are_recorded_and_idempotent(conn):
    recorded = [r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")]
    assert recorded == [m.version for m in shipped_migrations()]
    assert await migrate(conn) == []


async def test_an_edited_migration_is_refused(conn):
    await conn.execute("UPDATE schema_migrations SET checksum = 'edited' WHERE version = '0001_schema'")
    with pytest.raises(MigrationError, match="changed after it was applied"):
        await migrate(conn)


async def test_a_database_newer_than_the_code_is_refused(conn):
    await conn.execute("INSERT INTO schema_migrations (version, checksum) VALUES ('9999_future', 'x')")
    with pytest.raises(MigrationError, match="does not know"):
        await migrate(conn)


async def test_migrate_builds_an_empty_database(pg_cluster):
    admin = await asyncpg.connect(pg_cluster.dsn_for("postgres"))
    await admin.execute("CREATE DATABASE migrate_from_scratch")
    try:
        conn = await asyncpg.connect(pg_cluster.dsn_for("migrate_from_scratch"))
        try:
            assert await migrate(conn) == [m.version for m in shipped_migrations()]
            assert await conn.fetchval("SELECT count(*) FROM accounts") == 3
        finally:
            await conn.close()
    finally:
        await admin.execute("DROP DATABASE migrate_from_scratch WITH (FORCE)")
        await admin.close()
