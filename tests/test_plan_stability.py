"""Plans that stay right as the tables grow (issue 16 §1). A session caches its statements' plans
(PL/pgSQL's, a foreign key's check, a prepared statement's) and keeps a generic plan until an
invalidation; one made on a near-empty accounts table scans every wallet for each row it touches.
Speed itself is measured by `hdfpay bench` (the seed's linearity ratio); these check the causes."""

from __future__ import annotations

import os

import asyncpg
import pytest

from ledger.bulk_reload import run_bulk_reload
from ledger.clock import pin_clock
from ledger.demo_region import seed_demo_region
from ledger.migrate import migrate
from ledger.programmes import set_amount
from ledger.roles import OPS, role_dsn

from conftest import SCHOOL_DAY, TEST_SCHOOL_YEAR

NEXT = TEST_SCHOOL_YEAR + 1
GROWN_BENEFICIARIES = 20_000          # enough pages that an index scan is the cheaper plan
ACTOR = "cli:test"
PILOT_BENEFICIARIES = 20


async def test_the_reload_references_are_inlined_into_the_statements_that_call_them(conn):
    """Not inlined (an IMMUTABLE SQL function whose body calls a STABLE one, here text ||
    integer), each call runs a little executor of its own: half the cost of a per-row reload."""
    for call in ("bulk_reload_reference(2026, i)", "manual_year_credit_reference(2026, i::text)"):
        plan = "\n".join(r[0] for r in await conn.fetch(
            f"EXPLAIN (VERBOSE) SELECT {call} FROM generate_series(1, 3) AS i"))
        assert "reference(" not in plan, plan
    assert await conn.fetchval("SELECT bulk_reload_reference(2026, 7)") == "bulk:2026:000000000007"
    assert await conn.fetchval("SELECT manual_year_credit_reference(2026, 'HDF0000007')") == \
        "reload:2026:HDF0000007"


async def _debit_plan(conn: asyncpg.Connection) -> str:
    return "\n".join(r[0] for r in await conn.fetch("EXPLAIN EXECUTE debit(1)"))


@pytest.fixture
async def pilot_dsn(pg_cluster):
    """A fresh install with a pilot's few beneficiaries: accounts fits in one page."""
    name = f"plans_{os.getpid()}"
    admin = await asyncpg.connect(pg_cluster.dsn_for("postgres"))
    try:
        await admin.execute(f"CREATE DATABASE {name}")
        conn = await asyncpg.connect(pg_cluster.dsn_for(name))
        try:
            await migrate(conn)
            await pin_clock(conn, SCHOOL_DAY)
            await seed_demo_region(conn, beneficiaries=PILOT_BENEFICIARIES,
                                   school_year=TEST_SCHOOL_YEAR)
        finally:
            await conn.close()
        yield pg_cluster.dsn_for(name)
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()


async def test_a_bulk_reload_makes_every_session_replan_on_the_wallets_it_opened(pilot_dsn):
    """A long-lived connection (a server's pool) planned the wallet debit while accounts held a
    page; the bulk reload opening thousands of wallets must make it re-plan at once."""
    conn, other = await asyncpg.connect(pilot_dsn), await asyncpg.connect(pilot_dsn)
    ops = await asyncpg.connect(role_dsn(pilot_dsn, OPS, environ={}))
    try:
        await _replans_after_the_bulk_reload(conn, other, ops)
    finally:
        for connection in (conn, other, ops):
            await connection.close()


async def _replans_after_the_bulk_reload(conn: asyncpg.Connection, other: asyncpg.Connection,
                                         ops: asyncpg.Connection) -> None:
    # The first temporary table of a backend slot creates its pg_temp schema, which resets every
    # session's plans (the chunks' temporary tables would then hide a missing ANALYZE); made
    # beforehand, as on any server that has run for a while.
    for warmed in (other, ops):
        await warmed.execute("CREATE TEMP TABLE warm (n integer); DROP TABLE warm")
    await conn.execute("SET plan_cache_mode = force_generic_plan")
    await conn.execute("PREPARE debit(bigint) AS"
                       " UPDATE accounts SET debits_posted = debits_posted WHERE id = $1")
    assert "Seq Scan on accounts" in await _debit_plan(conn)    # the cached plan, on few pages
    for programme in ("BOOKS", "EQUIPMENT"):
        await set_amount(other, school_year=NEXT, programme=programme, amount_cents=100_00,
                         actor=ACTOR)
    await other.execute(
        "INSERT INTO beneficiaries (dossier_number, last_name, first_name, birth_date, email,"
        " establishment_id) SELECT 'GROW' || lpad(i::text, 6, '0'), 'Grow', 'Test',"
        " date '2008-01-01', 'grow' || i || '@exemple.fr', (SELECT min(id) FROM establishments)"
        " FROM generate_series(1, $1::integer) AS i", GROWN_BENEFICIARIES)
    await other.execute("INSERT INTO rights (beneficiary_id, school_year, renewed_by)"
                        " SELECT id, $1, 'test' FROM beneficiaries", NEXT)
    # As the operators' role, which runs it in production and may not ANALYZE a table itself.
    run = await run_bulk_reload(ops, NEXT, actor=ACTOR)
    assert run.finished and run.wallets_opened > GROWN_BENEFICIARIES
    plan = await _debit_plan(conn)
    assert "Index Scan using accounts_pkey" in plan, plan
