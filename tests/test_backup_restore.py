"""A lost disk does not lose the ledger: the real server sells while pgBackRest archives its WAL
and takes a full then an incremental backup; the cluster's disk is then lost (its data and its
pgBackRest configuration deleted), and `hdfpay db restore` brings the ledger back on a NEW
cluster, as it was at a point in time between two batches of purchases, from the repository
alone: every approval before that point, none after, `hdfpay check` passing.

PITR works on PostgreSQL's real commit times (wall clock), never on the business clock: the
target is read from the database's own clock between two batches, and no test reads a date."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import asyncpg
import pytest

from backoffice.provisioning import new_bdk, provision_unkeyed_terminals
from hdfpay.config import Settings
from hdfpay.server import running_server
from hsm.software_backend import SoftwareHsm
from ledger.backups import STANZA, PgBackRest, config_dir_for
from ledger.clock import pin_clock
from ledger.demo_region import card_uid, seed_demo_region
from ledger.embedded import throwaway_cluster, throwaway_workdir
from ledger.invariants import ledger_violations
from ledger.migrate import migrate
from terminal_protocol.client import TerminalClient
from terminal_protocol.ksn_counter import MemoryCounter
from terminal_protocol.terminal_keys import TerminalKeys

from conftest import ACTIVE_TERMINAL, SCHOOL_DAY, TEST_SCHOOL_YEAR
from systemd_units import calendar_elapses, oneshot_timer_calendar

COMMAND_TIMEOUT_S = 120
DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
BENEFICIARIES = 20
CARDS = range(4, BENEFICIARIES + 1)     # round these cards (1-3 are the demo's opposed ones)
PURCHASE_CENTS = 10
BATCH_PURCHASES = 8
# Batch B goes on until the database's clock is a whole second past the incremental backup's
# end (pgBackRest keeps whole seconds: only then is that backup usable for the target), within
# this many purchases.
BATCH_MAX_PURCHASES = 2_000


def hdfpay(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """The command as an operator runs it, in a process of its own."""
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "hdfpay.cli", *args], capture_output=True,
                            text=True, timeout=COMMAND_TIMEOUT_S, stdin=subprocess.DEVNULL,
                            env={**os.environ, "DATABASE_URL": "", **env})
    print(f"$ hdfpay {' '.join(args)}   ({time.monotonic() - started:.1f} s)\n"
          f"{result.stdout}{result.stderr}", end="")
    return result


async def sell(client: TerminalClient, count: int, approved: set[str], first: int = 0) -> None:
    for n in range(first, first + count):
        answer = await client.purchase(card_uid(CARDS[n % len(CARDS)]), PURCHASE_CENTS)
        assert answer.rc == "00", answer
        approved.add(answer.request_id)


async def database_clock(conn: asyncpg.Connection) -> dt.datetime:
    return await conn.fetchval("SELECT clock_timestamp()")


@pytest.fixture(scope="module")
async def lost_cluster():
    """A cluster that sold, was backed up, sold on, and then lost its disk: what is left is the
    repository, the target between batch B and batch C, and who was approved when."""
    with throwaway_workdir("backup-source") as workdir:
        cluster = throwaway_cluster(workdir)
        repository = workdir / "repository"        # "another disk": it survives the loss
        env = {"HDFPAY_DATA_DIR": str(cluster.data_dir)}
        hsm = SoftwareHsm(workdir / "keys.json", passphrase=os.urandom(16).hex(), create=True)
        try:
            new_bdk(hsm)
            dsn = cluster.start()
            conn = await asyncpg.connect(dsn)
            await migrate(conn)
            await pin_clock(conn, SCHOOL_DAY)
            await seed_demo_region(conn, beneficiaries=BENEFICIARIES, school_year=TEST_SCHOOL_YEAR)
            provisioned = await provision_unkeyed_terminals(conn, hsm)
            delivered, transport_key = provisioned[ACTIVE_TERMINAL]
            await conn.close()
            assert hdfpay("db", "backup-setup", "--repo", str(repository), env=env).returncode == 0
            keys = TerminalKeys.from_key_block(delivered.key_block, transport_key,
                                               MemoryCounter(), delivered.initial_key_id)
            settings = dataclasses.replace(Settings.from_env(), database_url=None,
                                           host="127.0.0.1", port=0, photo_dir=workdir / "photos")
            before, after = set(), set()
            async with running_server(settings, dsn, hsm) as server, \
                    TerminalClient(server.url, ACTIVE_TERMINAL, keys) as client:
                clock = await asyncpg.connect(dsn)
                await sell(client, BATCH_PURCHASES, before)
                full = hdfpay("db", "backup", env=env)
                assert full.returncode == 0 and full.stdout.startswith("full backup")
                await sell(client, BATCH_PURCHASES, before)                            # batch A
                incremental = hdfpay("db", "backup", env=env)
                assert incremental.returncode == 0 and incremental.stdout.startswith("incr backup")
                incremental_end = PgBackRest(config_dir_for(cluster.data_dir) / "pgbackrest.conf"
                                             ).info().backups[-1].stopped_at
                for n in range(BATCH_MAX_PURCHASES // BATCH_PURCHASES):                # batch B
                    await sell(client, BATCH_PURCHASES, before, first=n * BATCH_PURCHASES)
                    if (await database_clock(clock)).timestamp() >= \
                            incremental_end.timestamp() + 1:
                        break
                target = await database_clock(clock)
                await sell(client, BATCH_PURCHASES, after)                             # batch C
                await clock.close()
            # Everything committed so far into the archive (a WAL switch, awaited), as
            # archive_timeout would do within a minute.
            PgBackRest(config_dir_for(cluster.data_dir) / "pgbackrest.conf").check()
            print(f"approved: {len(before)} before the target, {len(after)} after it")
            cluster.stop()
            shutil.rmtree(cluster.data_dir)                 # the disk is lost
            shutil.rmtree(config_dir_for(cluster.data_dir))
            yield SimpleNamespace(repository=repository, target=target, before=before,
                                  after=after, keys=keys, hsm=hsm, settings=settings,
                                  env={"HDFPAY_DATA_DIR": str(cluster.data_dir)})
        finally:
            hsm.close()


async def test_a_point_in_time_restore_on_a_new_cluster_has_every_approval_before_it_and_none_after(
        lost_cluster):
    with throwaway_workdir("restored") as workdir:
        restored = throwaway_cluster(workdir)
        result = hdfpay("db", "restore", "--repo", str(lost_cluster.repository),
                        "--into", str(restored.data_dir), "--to", lost_cluster.target.isoformat(),
                        env=lost_cluster.env)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("restored incr backup")     # the newest usable one
        assert restored.is_running()

        checked = hdfpay("check", env={"HDFPAY_DATA_DIR": str(restored.data_dir)})
        assert checked.returncode == 0 and "ledger balanced" in checked.stdout

        conn = await asyncpg.connect(restored.dsn)
        try:
            approved = {r["request_id"] for r in await conn.fetch(
                "SELECT request_id FROM authorizations WHERE response_code = '00'")}
            assert lost_cluster.before <= approved
            assert not approved & lost_cluster.after
            assert approved == lost_cluster.before
            assert await ledger_violations(conn) == []
            assert not await conn.fetchval("SELECT pg_is_in_recovery()")
        finally:
            await conn.close()

        # The restored ledger serves: the terminal sells on it (its counter is past the target).
        async with running_server(lost_cluster.settings, restored.dsn, lost_cluster.hsm) as \
                server, TerminalClient(server.url, ACTIVE_TERMINAL, lost_cluster.keys) as client:
            assert (await client.purchase(card_uid(CARDS[0]), PURCHASE_CENTS)).rc == "00"


def test_a_target_before_the_first_backup_is_refused_before_anything_is_restored(lost_cluster):
    with throwaway_workdir("restored") as workdir:
        into = throwaway_cluster(workdir).data_dir
        result = hdfpay("db", "restore", "--repo", str(lost_cluster.repository), "--into",
                        str(into), "--to", (lost_cluster.target - dt.timedelta(days=1)).isoformat(),
                        env=lost_cluster.env)
        assert result.returncode == 1
        assert "no backup ended before" in result.stderr and "Traceback" not in result.stderr
        assert not into.exists() and not config_dir_for(into).exists()


def test_a_target_past_the_end_of_the_archive_is_a_clear_error(lost_cluster):
    """Nothing committed after the target reached the repository: PostgreSQL cannot know the
    target was reached, and the restore says so instead of starting a cluster that lacks it."""
    with throwaway_workdir("restored") as workdir:
        result = hdfpay("db", "restore", "--repo", str(lost_cluster.repository), "--into",
                        str(throwaway_cluster(workdir).data_dir), "--to",
                        (lost_cluster.target + dt.timedelta(hours=1)).isoformat(),
                        env=lost_cluster.env)
        assert result.returncode == 1
        assert "the archive ends before" in result.stderr, result.stderr
        assert not throwaway_cluster(workdir).is_running()


def test_an_empty_repository_is_a_clear_error():
    with throwaway_workdir("empty-repository") as workdir:
        empty = workdir / "repository"
        empty.mkdir(mode=0o777)
        into = throwaway_cluster(workdir).data_dir
        result = hdfpay("db", "restore", "--repo", str(empty), "--into", str(into),
                        env={"HDFPAY_DATA_DIR": str(workdir / "lost")})
        assert result.returncode == 1
        assert "the repository holds no backup" in result.stderr
        assert not into.exists() and not config_dir_for(into).exists()


def test_the_timer_backs_up_every_hour():
    elapses = calendar_elapses(oneshot_timer_calendar("hdfpay-backup", ["db", "backup"]))
    assert [b - a for a, b in zip(elapses, elapses[1:])] == [dt.timedelta(hours=1)] * 2


@pytest.mark.parametrize("config", sorted((DEPLOY / "pgbackrest").glob("*.conf")),
                         ids=lambda path: path.name)
def test_the_example_configurations_name_only_options_pgbackrest_knows(config: Path):
    """pgBackRest warns about an option it does not know (a typo would silently not apply)."""
    result = subprocess.run(["pgbackrest", f"--config={config}", f"--stanza={STANZA}", "help",
                             "backup"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and "WARN" not in result.stdout + result.stderr, result.stderr
