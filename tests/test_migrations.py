"""The migration runner: numbered migrations once each, refused when edited; function and view
files (ledger/sql) re-applied when they change; each function's live body in exactly one file."""

from __future__ import annotations

import collections
import dataclasses
import fnmatch
import re
import tomllib
from pathlib import Path

import asyncpg
import pytest

import ledger.migrate
from ledger.database import SchemaNotReady, check_schema
from ledger.migrate import (MIGRATIONS_DIR, SQL_DIR, MigrationError, PRIVILEGES_FILE, migrate, shipped_migrations,
                            shipped_repeatables)

ROOT = Path(__file__).resolve().parent.parent
FUNCTION_DEFINITION = re.compile(r"CREATE\s+OR\s+REPLACE\s+FUNCTION\s+(\w+)\s*\(", re.IGNORECASE)
VIEW_DEFINITION = re.compile(r"CREATE\s+OR\s+REPLACE\s+VIEW\s+(\w+)", re.IGNORECASE)
ROUTINE_IN_MIGRATION = re.compile(
    r"CREATE\s+(OR\s+REPLACE\s+)?(FUNCTION|PROCEDURE|TRIGGER|VIEW)\b|\bDO\s+\$", re.IGNORECASE)


@pytest.fixture
async def empty_database(pg_cluster):
    admin = await asyncpg.connect(pg_cluster.dsn_for("postgres"))
    await admin.execute("CREATE DATABASE migrate_from_scratch")
    try:
        conn = await asyncpg.connect(pg_cluster.dsn_for("migrate_from_scratch"))
        try:
            yield conn
        finally:
            await conn.close()
    finally:
        await admin.execute("DROP DATABASE migrate_from_scratch WITH (FORCE)")
        await admin.close()


async def test_migrations_are_recorded_and_idempotent(conn):
    recorded = [r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")]
    assert recorded == [m.version for m in shipped_migrations()]
    files = [r["path"] for r in await conn.fetch("SELECT path FROM schema_repeatables ORDER BY path")]
    assert files == sorted(r.version for r in shipped_repeatables())
    assert await migrate(conn) == []


async def test_an_edited_migration_is_refused(conn):
    await conn.execute("UPDATE schema_migrations SET checksum = 'edited' WHERE version = '0001_schema'")
    with pytest.raises(MigrationError, match="changed after it was applied"):
        await migrate(conn)


async def test_a_database_newer_than_the_code_is_refused(conn):
    await conn.execute("INSERT INTO schema_migrations (version, checksum) VALUES ('9999_future', 'x')")
    with pytest.raises(MigrationError, match="does not know"):
        await migrate(conn)


async def test_migrate_builds_an_empty_database(empty_database):
    applied = await migrate(empty_database)
    assert applied == ([m.version for m in shipped_migrations()]
                       + [r.version for r in shipped_repeatables()])
    assert await empty_database.fetchval("SELECT count(*) FROM accounts") == 3
    assert await migrate(empty_database) == []


async def test_a_database_of_the_old_layout_is_refused_with_what_to_do(empty_database):
    """Before the squash the migrations held the function bodies; such a database is rebuilt."""
    await empty_database.execute(
        "CREATE TABLE schema_migrations (version text PRIMARY KEY, checksum text NOT NULL,"
        " applied_at timestamptz NOT NULL DEFAULT now());"
        "INSERT INTO schema_migrations VALUES ('0001_schema', 'x'), ('0012_audit_guard_and_lock_order', 'y')")
    with pytest.raises(MigrationError, match="recreate it"):
        await migrate(empty_database)


async def test_a_changed_function_file_is_reapplied_by_the_next_migrate(conn, monkeypatch):
    original = shipped_repeatables()
    target = "functions/bulk_reload_reference.sql"
    assert await conn.fetchval("SELECT bulk_reload_reference(2026, 7)") == "bulk:2026:000000000007"

    def changed() -> list:
        return [dataclasses.replace(r, sql=r.sql.replace("'bulk:'", "'changed:'"))
                if r.version == target else r for r in original]
    monkeypatch.setattr(ledger.migrate, "shipped_repeatables", changed)
    assert await migrate(conn) == [target, PRIVILEGES_FILE]   # grants follow any change
    assert await conn.fetchval("SELECT bulk_reload_reference(2026, 7)") == "changed:2026:000000000007"
    assert await migrate(conn) == []

    monkeypatch.setattr(ledger.migrate, "shipped_repeatables", lambda: original)
    assert await migrate(conn) == [target, PRIVILEGES_FILE]   # grants follow any change
    assert await conn.fetchval("SELECT bulk_reload_reference(2026, 7)") == "bulk:2026:000000000007"


def _definitions(pattern: re.Pattern, subdir: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = collections.defaultdict(list)
    for path in sorted((SQL_DIR / subdir).glob("*.sql")):
        for name in pattern.findall(path.read_text()):
            found[name.lower()].append(path.name)
    return found


async def test_every_function_in_the_database_comes_from_exactly_one_file(conn):
    files = _definitions(FUNCTION_DEFINITION, "functions")
    assert {name: where for name, where in files.items() if len(where) != 1} == {}
    # One function per file, named as the file.
    assert sorted(f"{name}.sql" for name in files) == sorted(
        p.name for p in (SQL_DIR / "functions").glob("*.sql"))
    rows = await conn.fetch("""
        SELECT p.proname, count(*) AS overloads FROM pg_proc p
         WHERE p.pronamespace = 'public'::regnamespace
           AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_proc'::regclass
                              AND d.objid = p.oid AND d.deptype = 'e')
         GROUP BY 1""")
    in_database = {r["proname"]: r["overloads"] for r in rows}
    assert sorted(in_database) == sorted(files)
    assert {name: n for name, n in in_database.items() if n != 1} == {}


async def test_every_view_comes_from_its_file(conn):
    files = _definitions(VIEW_DEFINITION, "views")
    assert all(len(where) == 1 for where in files.values())
    views = {r["viewname"] for r in await conn.fetch(
        "SELECT viewname FROM pg_views WHERE schemaname = 'public'")}
    assert views == set(files)


def test_numbered_migrations_hold_no_function_trigger_or_view():
    offenders = {path.name: ROUTINE_IN_MIGRATION.findall(path.read_text())
                 for path in sorted(MIGRATIONS_DIR.glob("*.sql"))}
    assert {name: found for name, found in offenders.items() if found} == {}


def test_every_sql_file_is_shipped_in_the_package():
    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["ledger"]
    ledger_dir = ROOT / "ledger"
    unshipped = [str(p.relative_to(ledger_dir)) for p in sorted(ledger_dir.rglob("*.sql"))
                 if not any(fnmatch.fnmatch(str(p.relative_to(ledger_dir)), g) for g in globs)]
    assert unshipped == []


async def test_a_database_running_other_function_bodies_is_not_served(conn):
    """A deploy that changed a function file but forgot 'hdfpay db migrate' is refused, like a
    missing migration: the old body would otherwise keep running."""
    await check_schema(conn)
    await conn.execute("UPDATE schema_repeatables SET checksum = 'an older body'"
                       " WHERE path = 'functions/authorize_purchase.sql'")
    with pytest.raises(SchemaNotReady, match="functions/authorize_purchase.sql.*hdfpay db migrate"):
        await check_schema(conn)
