"""Fixtures on the real components: one private PostgreSQL cluster per test session, a fresh
database per test (copied from a migrated, seeded template whose terminals were provisioned with
real DUKPT keys from a software HSM), the real aiohttp server on a free loopback port, terminals
that sign their requests, and the ledger's invariants checked after every test that touched a
database."""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import os
from pathlib import Path
from zoneinfo import ZoneInfo

import asyncpg
import pytest

from hdfpay.config import Settings
from backoffice.provisioning import new_bdk, provision_unkeyed_terminals
from hdfpay.server import running_server
from hsm.software_backend import SoftwareHsm
from ledger.clock import pin_clock
from ledger.demo_region import seed_demo_region, terminal_id
from ledger.embedded import EmbeddedPostgres, throwaway_cluster, throwaway_workdir
from ledger.invariants import ledger_violations
from ledger.migrate import migrate
from terminal_protocol.client import TerminalClient
from terminal_protocol.ksn_counter import MemoryCounter
from terminal_protocol.terminal_keys import TerminalKeys

# Registered once for every module: the HSM fixtures (SoftHSM2 token, both backends), pcscd with
# virtual cards, terminal agents, and authenticated clients of the operator API.
pytest_plugins = ["hsm_fixtures", "pcsc_fixtures", "agent_fixtures", "operator_fixtures",
                  "browser_fixtures", "mail_fixtures"]

PARIS = ZoneInfo("Europe/Paris")
TEST_SCHOOL_YEAR = 2026
TEST_BENEFICIARIES = 300
TEMPLATE_DATABASE = "hdfpay_template"
# An ordinary school day inside the 2026-2027 wallet window.
SCHOOL_DAY = dt.datetime(2026, 11, 26, 10, 0, tzinfo=PARIS)
ACTIVE_TERMINAL = terminal_id(1, 1)
# Extra active terminals of partner 2 for concurrency tests: a terminal has one message in
# flight at a time (its KSN counter must increase), so concurrency comes from many terminals.
CROWD_TERMINALS = [f"CROWD-{n:04d}" for n in range(1, 201)]

_database_numbers = itertools.count(1)


def paris(*args) -> dt.datetime:
    return dt.datetime(*args, tzinfo=PARIS)


@pytest.fixture(scope="session")
def pg_cluster():
    with throwaway_workdir("tests") as workdir:
        cluster = throwaway_cluster(workdir)
        cluster.start()
        yield cluster


@pytest.fixture(scope="session")
def keystore_env(tmp_path_factory) -> dict[str, str]:
    """The software HSM's keystore, as a server process finds it in its environment."""
    directory = tmp_path_factory.mktemp("keystore")
    return {"HDFPAY_HSM_BACKEND": "software", "HDFPAY_KEYSTORE": str(directory / "keys.json"),
            "HDFPAY_KEYSTORE_PASSPHRASE": os.urandom(16).hex()}


@pytest.fixture(scope="session")
def hsm(keystore_env):
    software = SoftwareHsm(Path(keystore_env["HDFPAY_KEYSTORE"]),
                           passphrase=keystore_env["HDFPAY_KEYSTORE_PASSPHRASE"], create=True)
    new_bdk(software)
    yield software
    software.close()


@pytest.fixture(scope="session")
def deliveries() -> dict:
    """Each seeded terminal's TR-31 key block and transport key, filled by the template."""
    return {}


@pytest.fixture(scope="session")
async def template_database(pg_cluster: EmbeddedPostgres, hsm, deliveries) -> str:
    admin = await asyncpg.connect(pg_cluster.dsn_for("postgres"))
    try:
        await admin.execute(f"CREATE DATABASE {TEMPLATE_DATABASE}")
    finally:
        await admin.close()
    conn = await asyncpg.connect(pg_cluster.dsn_for(TEMPLATE_DATABASE))
    try:
        await migrate(conn)
        await pin_clock(conn, SCHOOL_DAY)
        await seed_demo_region(conn, beneficiaries=TEST_BENEFICIARIES, school_year=TEST_SCHOOL_YEAR)
        await conn.executemany("INSERT INTO terminals (id, partner_id, status) VALUES ($1, 2, 'ACTIVE')",
                               [(t,) for t in CROWD_TERMINALS])
        deliveries.update(await provision_unkeyed_terminals(conn, hsm))
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
def settings(tmp_path) -> Settings:
    base = Settings.from_env()
    return dataclasses.replace(base, database_url=None, host="127.0.0.1", port=0,
                               photo_dir=tmp_path / "photos")


@pytest.fixture
async def server(settings: Settings, dsn: str, hsm):
    async with running_server(settings, dsn, hsm) as running:
        yield running


@pytest.fixture
def keys_for(deliveries, template_database):
    """A terminal's keys as the terminal holds them (unwrapped from its TR-31 block with its
    transport key), one counter per terminal for the test: each test's database starts with
    every counter unused."""
    made: dict[str, TerminalKeys] = {}

    def keys(terminal: str) -> TerminalKeys:
        if terminal not in made:
            delivered, transport_key = deliveries[terminal]
            made[terminal] = TerminalKeys.from_key_block(delivered.key_block, transport_key,
                                                         MemoryCounter(),
                                                         delivered.initial_key_id)
        return made[terminal]
    return keys


@pytest.fixture
def terminal(server, keys_for):
    """terminal(id) → a signing TerminalClient of that seeded terminal, for `async with`."""
    def make(terminal_id: str, url: str | None = None) -> TerminalClient:
        return TerminalClient(url or server.url, terminal_id, keys_for(terminal_id))
    return make


@pytest.fixture
async def client(terminal):
    async with terminal(ACTIVE_TERMINAL) as active:
        yield active


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
