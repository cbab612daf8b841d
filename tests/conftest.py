"""Fixtures on the real components: one private PostgreSQL cluster per test session, a fresh
database per test (copied from a migrated, seeded template), the real aiohttp server on a free
loopback port, and the ledger's invariants checked after every test that touched a database."""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import os
import tempfile
from pathlib import Path
from zoneinfo import ZoneInfo

import asyncpg
import pytest

from authorizer.config import Settings
from authorizer.server import running_server
from ledger.clock import pin_clock
from ledger.demo_region import seed_demo_region, terminal_id
from ledger.embedded import EmbeddedPostgres, remove_cluster
from ledger.invariants import ledger_violations
from ledger.migrate import migrate
from terminal_protocol.client import TerminalClient

PARIS = ZoneInfo("Europe/Paris")
TEST_SCHOOL_YEAR = 2026
TEST_BENEFICIARIES = 300
TEMPLATE_DATABASE = "hdfpay_template"
# An ordinary school day inside the 2026-2027 wallet window.
SCHOOL_DAY = dt.datetime(2026, 11, 26, 10, 0, tzinfo=PARIS)
ACTIVE_TERMINAL = terminal_id(1, 1)

_database_numbers = itertools.count(1)


def paris(*args) -> dt.datetime:
    return dt.datetime(*args, tzinfo=PARIS)


@pytest.fixture(scope="session")
def pg_cluster():
    workdir = Path(tempfile.mkdtemp(prefix="hdfpay-tests-"))
    workdir.chmod(0o755)  # as root, the server runs as the 'postgres' user
    cluster = EmbeddedPostgres(workdir / "pgdata")
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()
        remove_cluster(workdir)


@pytest.fixture(scope="session")
async def template_database(pg_cluster: EmbeddedPostgres) -> str:
    admin = await asyncpg.connect(pg_cluster.dsn_for("postgres"))
    try:
        await admin.execute(f"CREATE DATABASE {TEMPLATE_DATABASE}")
    finally:
        await admin.close()
    conn = await asyncpg.connect(pg_cluster.dsn_for(TEMPLATE_DATABASE))
    try:
        await migrate(conn)
        await seed_demo_region(conn, beneficiaries=TEST_BENEFICIARIES, school_year=TEST_SCHOOL_YEAR)
        await pin_clock(conn, SCHOOL_DAY)
    finally:
        await conn.close()
    return TEMPLATE_DATABASE


@pytest.fixture
async def dsn(pg_cluster: EmbeddedPostgres, template_database: str):
    """A fresh copy of the seeded region for this test; the ledger must balance at the end."""
    name = f"test_{os.getpid()}_{next(_database_numbers)}"
    admin = await asyncpg.connect(pg_cluster.dsn_for("postgres"))
    try:
        await admin.execute(f"CREATE DATABASE {name} TEMPLATE {template_database} STRATEGY WAL_LOG")
        yield pg_cluster.dsn_for(name)
        check = await asyncpg.connect(pg_cluster.dsn_for(name))
        try:
            violations = await ledger_violations(check)
        finally:
            await check.close()
        assert violations == [], f"ledger out of balance after the test: {violations}"
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()


@pytest.fixture
async def conn(dsn: str):
    connection = await asyncpg.connect(dsn)
    try:
        yield connection
    finally:
        await connection.close()


@pytest.fixture
def settings() -> Settings:
    base = Settings.from_env()
    return dataclasses.replace(base, database_url=None, host="127.0.0.1", port=0)


@pytest.fixture
async def server(settings: Settings, dsn: str):
    async with running_server(settings, dsn) as running:
        yield running


@pytest.fixture
async def client(server):
    async with TerminalClient(server.url, ACTIVE_TERMINAL) as terminal:
        yield terminal


async def balance_of(conn: asyncpg.Connection, card_uid: bytes,
                     school_year: int = TEST_SCHOOL_YEAR) -> int | None:
    return await conn.fetchval(
        "SELECT a.credits_posted - a.debits_posted FROM cards c JOIN wallets w"
        " ON w.beneficiary_id = c.beneficiary_id AND w.school_year = $2"
        " JOIN accounts a ON a.id = w.account_id WHERE c.uid = $1", card_uid, school_year)


async def set_balance(conn: asyncpg.Connection, card_uid: bytes, amount_cents: int,
                      school_year: int = TEST_SCHOOL_YEAR) -> None:
    """Bring a wallet to an exact balance with balanced transfers: what is there moves to the
    expired-funds account, then the amount is reloaded."""
    row = await conn.fetchrow(
        "SELECT w.account_id, a.credits_posted - a.debits_posted AS balance, c.beneficiary_id"
        " FROM cards c JOIN wallets w ON w.beneficiary_id = c.beneficiary_id AND w.school_year = $2"
        " JOIN accounts a ON a.id = w.account_id WHERE c.uid = $1", card_uid, school_year)
    async with conn.transaction():
        if row["balance"] > 0:
            await conn.execute(
                "INSERT INTO transfers (code, debit_account_id, credit_account_id, amount_cents,"
                " reference) SELECT 'EXPIRY', $1, id, $2, 'test-reset' FROM accounts"
                " WHERE kind = 'EXPIRED_FUNDS'", row["account_id"], row["balance"])
            await conn.execute("UPDATE accounts SET debits_posted = debits_posted + $2 WHERE id = $1",
                               row["account_id"], row["balance"])
        if amount_cents > 0:
            await conn.execute("SELECT reload_wallet($1, $2, $3, $4)", row["beneficiary_id"],
                               school_year, amount_cents, f"test-set-balance-{os.urandom(6).hex()}")
