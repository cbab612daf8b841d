"""The `hdfpay` command as a user runs it: help, plain errors with a non-zero exit, the embedded
cluster's lifecycle, serve, reload, check and the demo."""

from __future__ import annotations

import asyncio
import html
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import aiohttp
import asyncpg

from hdfpay.cli import build_parser
from ledger.demo_region import card_uid
from terminal_protocol.client import TerminalClient

from concurrency_helpers import lock_wallet
from conftest import ACTIVE_TERMINAL
from yarl import URL

COMMAND_TIMEOUT_S = 120
DEMO_SERVE_TIMEOUT_S = 120      # the scripted session, then the students' space up
SUBCOMMANDS = ["demo", "serve", "db", "seed", "reload", "check", "bench", "keys", "terminals",
               "loadtest", "fuzz", "chaos", "terminal", "operators", "audit", "rights", "programmes", "bulk-reload",
               "expire", "cards", "card-requests", "partners", "settle", "payouts", "payee", "report",
               "rules", "students", "ledger"]


def hdfpay(*args: str, env: dict | None = None, timeout: float = COMMAND_TIMEOUT_S):
    return subprocess.run([sys.executable, "-m", "hdfpay.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})},
                          stdin=subprocess.DEVNULL)


def test_every_subcommand_has_help():
    assert sorted(build_parser()._subparsers._group_actions[0].choices) == sorted(SUBCOMMANDS)
    for name in [None, *SUBCOMMANDS]:
        result = hdfpay(*([name] if name else []), "--help")
        assert result.returncode == 0 and "usage: hdfpay" in result.stdout


def test_sub_help_says_what_each_action_does():
    assert "HDFPAY_OPS_PORT" in hdfpay("serve", "--help").stdout
    db = hdfpay("db", "--help").stdout
    assert all(action in db for action in ("migrate", "start", "stop", "status", "backup-setup",
                                           "backups", "restore"))
    add = hdfpay("terminals", "add", "--help").stdout
    assert "usage: hdfpay terminals add" in add and "TR-31" in add and "--partner" in add
    assert "rotate" not in add                          # its own help, not the group's


def test_argument_types_have_plain_messages():
    for args, message in ((("bench", "--concurrency", "abc"), "expected comma-separated whole "
                                                              "numbers such as 1,16,64, got 'abc'"),
                          (("seed", "--beneficiaries", "x"), "expected a whole number, got 'x'"),
                          (("terminals", "add", "T-1"), "required: --partner"),
                          (("db", "restore", "--into", "/nowhere", "--to", "2027-03-01T14:05"),
                           "'2027-03-01T14:05' has no time zone: add one")):
        result = hdfpay(*args)
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert "<lambda>" not in result.stderr


def test_errors_are_plain_words_and_non_zero():
    result = hdfpay("reload", "HDF0000005", "douze euros", env={"DATABASE_URL": "postgresql://x@/nowhere"})
    assert result.returncode == 2
    assert "invalid amount 'douze euros'" in result.stderr and "Traceback" not in result.stderr
    result = hdfpay("serve", env={"HDFPAY_PORT": "eighty"})
    assert result.returncode == 2 and "HDFPAY_PORT must be an integer" in result.stderr
    result = hdfpay("db", "start", env={"DATABASE_URL": "postgresql://x@/y"})
    assert result.returncode == 2 and "not managed by hdfpay" in result.stderr


def test_missing_server_binaries_say_how_to_install_them():
    result = hdfpay("db", "status", env={"HDFPAY_PG_BINDIR": "/nonexistent", "DATABASE_URL": ""})
    assert result.returncode == 2
    assert "apt-get install postgresql" in result.stderr


def test_unreachable_database_is_a_clear_error():
    with tempfile.TemporaryDirectory() as empty:
        result = hdfpay("check", env={"DATABASE_URL": f"postgresql://hdfpay@/hdfpay?host={empty}"})
    assert result.returncode == 1
    assert "hdfpay: error:" in result.stderr and "Traceback" not in result.stderr


def test_serve_without_a_keystore_says_what_is_missing():
    result = hdfpay("serve", env={"HDFPAY_KEYSTORE": "", "HDFPAY_HSM_BACKEND": "software"})
    assert result.returncode == 2 and "HDFPAY_KEYSTORE is not set" in result.stderr


def test_embedded_cluster_start_status_stop():
    """An operator's first day: cluster, schema, region, keys, a terminal, a reload, a check."""
    workdir = Path(tempfile.mkdtemp(prefix="hdfpay-cli-"))
    workdir.chmod(0o755)
    env = {"HDFPAY_DATA_DIR": str(workdir / "pgdata"), "DATABASE_URL": "",
           "HDFPAY_HSM_BACKEND": "software", "HDFPAY_KEYSTORE": str(workdir / "keys.json"),
           "HDFPAY_KEYSTORE_PASSPHRASE": "correct horse battery staple"}
    try:
        started = hdfpay("db", "start", env=env)
        assert started.returncode == 0, started.stderr
        assert "DATABASE_URL=postgresql://" in started.stdout
        assert "running" in hdfpay("db", "status", env=env).stdout
        migrated = hdfpay("db", "migrate", env=env)
        assert "applied 0001_schema" in migrated.stdout
        assert "already up to date" in hdfpay("db", "migrate", env=env).stdout
        seeded = hdfpay("seed", "--beneficiaries", "20", env=env)
        assert seeded.returncode == 0 and "20 beneficiaries" in seeded.stdout
        year_credit = hdfpay("reload", "HDF0000005", "100", env=env)   # the seed made it already
        assert year_credit.returncode == 0, year_credit.stderr
        assert "the year's credit for" in year_credit.stdout and "was already made" in year_credit.stdout
        reloaded = hdfpay("reload", "HDF0000005", "12,50", "--reference", "cli-test", env=env)
        assert reloaded.returncode == 0 and "credited 12,50" in reloaded.stdout
        again = hdfpay("reload", "HDF0000005", "12,50", "--reference", "cli-test", env=env)
        assert "already reloaded" in again.stdout
        assert "ledger balanced" in hdfpay("check", env=env).stdout
        bdk = hdfpay("keys", "new-bdk", env=env)
        assert bdk.returncode == 0 and "creating the encrypted keystore" in bdk.stdout
        assert "B0  bdk/" in bdk.stdout and "KCV" in bdk.stdout
        added = hdfpay("terminals", "add", "SHOP-0001", "--partner", "1", env=env)
        assert added.returncode == 0, added.stderr
        block = added.stdout.split("key block (TR-31)")[1].split()[0]
        assert block.startswith("D") and "shown this once" in added.stdout
        listed = hdfpay("terminals", "list", env=env).stdout
        assert "SHOP-0001" in listed and "PENDING" in listed
        assert listed.splitlines()[0].split()[:3] == ["TERMINAL", "STATUS", "PARTNER"]
        unkeyed = next(line for line in listed.splitlines() if line.startswith("TERM-0001-1 "))
        assert "none yet: 'hdfpay terminals rotate ID' delivers one" in unkeyed
        assert "ACTIVE" in hdfpay("terminals", "activate", "SHOP-0001", env=env).stdout
        rotated = hdfpay("terminals", "rotate", "SHOP-0001", env=env)
        assert rotated.returncode == 0 and block not in rotated.stdout
        assert "shown this once" not in rotated.stdout
        assert "K1  kbpk/shop-0001" in hdfpay("keys", "list", env=env).stdout
        seeded = hdfpay("terminals", "rotate", "TERM-0002-1", env=env)   # seeded without keys
        assert seeded.returncode == 0 and "shown this once" in seeded.stdout
        again = hdfpay("terminals", "add", "SHOP-0001", "--partner", "1", env=env)
        assert again.returncode == 2 and "already exists" in again.stderr
        assert hdfpay("terminals", "activate", env=env).returncode == 2        # no terminal id
        assert "stopped" in hdfpay("db", "stop", env=env).stdout
        assert "stopped" in hdfpay("db", "status", env=env).stdout
        checked = hdfpay("check", env=env)   # a stopped database does not come back unannounced
        assert checked.returncode == 0 and "ledger balanced" in checked.stdout
        assert "is stopped: starting it for this command only" in checked.stderr
        assert "stopped" in hdfpay("db", "status", env=env).stdout
    finally:
        hdfpay("db", "stop", env=env)
        subprocess.run(["rm", "-rf", str(workdir)], check=False)


async def test_serve_refuses_an_unmigrated_database(pg_cluster, keystore_env, hsm):
    admin = await asyncpg.connect(pg_cluster.dsn_for("postgres"))
    await admin.execute("CREATE DATABASE unmigrated")
    try:
        result = hdfpay("serve", "--port", "0",
                        env={**keystore_env, "DATABASE_URL": pg_cluster.dsn_for("unmigrated")})
        assert result.returncode == 2 and "hdfpay db migrate" in result.stderr
    finally:
        await admin.execute("DROP DATABASE unmigrated WITH (FORCE)")
        await admin.close()


async def test_serve_drains_on_sigterm_and_finishes_what_is_in_flight(dsn, conn, keystore_env,
                                                                     keys_for):
    """SIGTERM: /readyz says no while the server still serves, the purchase in flight is answered,
    then the process exits 0."""
    process = subprocess.Popen(
        [sys.executable, "-m", "hdfpay.cli", "serve", "--port", "0"],
        env={**os.environ, **keystore_env, "DATABASE_URL": dsn, "HDFPAY_DRAIN_NOTICE_MS": "2000"},
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        banner = process.stdout.readline()
        assert "listening on http://127.0.0.1:" in banner
        url = banner.split("listening on ")[1].split("/v1/")[0]
        async with TerminalClient(url, ACTIVE_TERMINAL, keys_for(ACTIVE_TERMINAL)) as client:
            assert (await client.purchase(card_uid(5), 1_00)).rc == "00"
            lock = await lock_wallet(conn, card_uid(5))
            in_flight = asyncio.ensure_future(client.purchase(card_uid(5), 2_00))
            await _until(lambda: _lock_waiters(dsn))
            process.send_signal(signal.SIGTERM)
            await _until(lambda: _readiness(url, 503))
            await lock.rollback()
            assert (await in_flight).rc == "00"
        assert await asyncio.to_thread(process.wait, COMMAND_TIMEOUT_S) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


async def _until(predicate, timeout_s: float = 20.0) -> None:
    """Wait for a condition in another process, bounded in time."""
    async with asyncio.timeout(timeout_s):
        while not await predicate():
            await asyncio.sleep(0.02)


async def _lock_waiters(dsn: str) -> bool:
    watcher = await asyncpg.connect(dsn)
    try:
        return await watcher.fetchval("SELECT count(*) FROM pg_stat_activity WHERE"
                                      " wait_event_type = 'Lock' AND datname = current_database()") > 0
    finally:
        await watcher.close()


async def _readiness(url: str, status: int) -> bool:
    async with aiohttp.ClientSession() as session:
        async with session.get(url + "/readyz") as reply:
            return reply.status == status


def test_the_demo_on_a_server_of_ones_own_needs_no_local_postgresql(dsn):
    """With DATABASE_URL the demo uses that server alone: no server binaries are looked for,
    not even when it cleans up."""
    result = hdfpay("demo", env={"DATABASE_URL": dsn, "HDFPAY_PG_BINDIR": "/nonexistent"})
    assert result.returncode == 0, result.stderr
    assert "Grand livre vérifié" in result.stdout


def test_demo_runs_a_till_session_in_french():
    result = hdfpay("demo", env={"DATABASE_URL": ""})
    assert result.returncode == 0, result.stderr
    for expected in ["ACCEPTÉ", "ACCEPTÉ PARTIELLEMENT", "ANNULATION ACCEPTÉE", "REMBOURSEMENT ACCEPTÉ",
                     "Grand livre vérifié"]:
        assert expected in result.stdout
    for code in ["13", "14", "41", "43", "51", "54", "57", "58", "61", "62"]:
        assert f"(code {code})" in result.stdout
    assert "040000000005" not in result.stdout          # card UIDs are masked
    assert "le porte-monnaie est fermé" in result.stdout
    assert "horloge ramenée au" in result.stdout        # and the demo says the clock went back
    assert "Remboursable au plus : 27,00\u00a0€" in result.stdout   # 42,00 sold, 15,00 refunded


async def test_the_demo_keeps_serving_the_students_space_with_a_demo_account(dsn):
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hdfpay.cli", "demo", "--serve",
        env={**os.environ, "DATABASE_URL": dsn}, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    try:
        async with asyncio.timeout(DEMO_SERVE_TIMEOUT_S):
            while not (line := (await process.stdout.readline()).decode()).startswith(
                    "Espace des élèves"):
                assert line, "the demo ended without serving the students' space"
        portal = line.split(" : ")[1].split("/ —")[0]
        identifier = line.split("identifiant ")[1].split(",")[0]
        password = line.split("mot de passe ")[1].strip()
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
            async with browser.get(portal + "/connexion") as page:
                assert page.status == 200
            token = browser.cookie_jar.filter_cookies(URL(portal))["hdf_csrf"].value
            async with browser.post(portal + "/connexion", data={
                    "csrf_token": token, "identifiant": identifier, "mot_de_passe": password}) as page:
                text = html.unescape(await page.text())
                assert page.status == 200 and str(page.url).endswith("/ma-carte"), text
                assert "Mon porte-monnaie" in text and "Remboursement d'un article" in text
        process.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(process.wait(), DEMO_SERVE_TIMEOUT_S) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
