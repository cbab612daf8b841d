"""`hdfpay bench`: the project's speed measurement, end to end beside a pgbench baseline.

On a throwaway database (a private cluster, or a fresh `hdfpay_bench` database on DATABASE_URL's
server): seed the demo region, give the bench its own terminals with AES-DUKPT keys from a software
HSM in the work directory (loadtest.bench_keys), start the server as its own process, then at
each concurrency run pgbench making the server's very SQL call (KSN check included), and the load
generator (loadtest.bench_load) through HTTP with MAC'd requests, on the same mix. Then the same
at the highest concurrency with the server's per-request metrics off (HDFPAY_METRICS=off, MACs on):
the cost of metrics; with MACs off (HDFPAY_TERMINAL_AUTHENTICATION=none, unsigned requests, pgbench
passing no KSN): the cost of MACs; then both on a few hot cards. Afterwards the ledger must
balance, the database must hold exactly the purchases the tools made, and no message may have been
refused with 63 (loadtest.bench_report).

Beside each plain run, pgbench on the minimal debit (loadtest.bench_limit): the machine's limit,
with PostgreSQL's CPU per transaction (loadtest.bench_cpu). After the plain runs, open-loop runs
at fractions of the best e2e tps (loadtest.open_loop). Before all, the seed's linearity: a seed of
a tenth on a database of its own, time per beneficiary compared.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import uvloop

from loadtest.bench_keys import (MAX_BENCH_TERMINALS, MAX_RUNS, counter_start,
                                   provision_bench_terminals)
from loadtest.bench_cpu import await_reaped, cpu_snapshot, cpu_used, postmaster_of
from loadtest.bench_limit import minimal_debit_script
from loadtest.bench_load import (BENCH_AMOUNT_CENTS_MAX, BenchError, first_approvable,
                                   pgbench_script, run_e2e, run_pgbench)
from loadtest.bench_plan import (HOT_CARD_COUNT, OPEN_LOOP_LOAD_FRACTIONS, SEED_LINEARITY_SCALE,
                                   Bench, BenchOptions, Run, bench_plan)
from loadtest.bench_report import (TABLE_ROW, final_lines, report_group_commit_gain,
                                     report_limit, report_mac_cost, report_metrics_cost,
                                     report_run, results, verify)
from loadtest.open_loop import rates_at
from loadtest.open_loop_report import open_loop_cpu, report_open_loop
from hdfpay.demo import demo_business_time
from hdfpay.config import Settings
from ledger.database import connection, recreate_database
from ledger.clock import pin_clock
from ledger.demo_region import seed_demo_region
from ledger.embedded import find_server_binaries, throwaway_cluster, throwaway_workdir
from ledger.housekeeping import housekeeping_between, housekeeping_counts
from ledger.wal_reserve import reserve_wal, wal_segment_bytes
from ledger.migrate import migrate

BENCH_DATABASE = "hdfpay_bench"
SEED_CHECK_DATABASE = "hdfpay_bench_seed_check"
LOOPBACK = "127.0.0.1"
SERVER_READY_TIMEOUT_S = 30.0
SERVER_POLL_INTERVAL_S = 0.05
HEALTH_PROBE_TIMEOUT_S = 0.5
SERVER_STOP_TIMEOUT_S = 15.0          # above the server's own shutdown grace
TOOL_GRACE_S = 30.0                   # beyond a run's duration before its tool is killed
# WAL segments made ready before the runs, as on a server that has run a while
# (ledger/wal_reserve.py): a default bench writes about 600 MB of WAL after its seed.
BENCH_WAL_RESERVE_BYTES = 1 << 30
HOT_RUN_TPS_CEILING = 100_000         # sizes the hot cards' extra balance: they never run dry
# The server's environment that would contradict the bench's own keystore.
SERVER_ENV_DROPPED = ("HDFPAY_KEYSTORE_KEK_FILE",)


def run_bench(options: BenchOptions, settings: Settings) -> int:
    """Exit code 0 when the runs ran and the checks passed, 1 otherwise, 2 on a bad option."""
    seconds = options.seconds  # whole seconds: pgbench -T takes no fraction
    least_cards = max(first_approvable(HOT_CARD_COUNT))
    # the runs beyond one per concurrency, each with its own KSN counters
    extra_runs = len(bench_plan([1])) - 1 + len(OPEN_LOOP_LOAD_FRACTIONS)
    if (seconds < 1 or not 1 <= min(options.concurrency, default=0)
            or max(options.concurrency) > MAX_BENCH_TERMINALS or options.cards < least_cards
            or len(bench_plan(options.concurrency)) + len(OPEN_LOOP_LOAD_FRACTIONS) > MAX_RUNS):
        print(f"hdfpay: error: bench needs --seconds >= 1, concurrencies from 1 to "
              f"{MAX_BENCH_TERMINALS}, --cards >= {least_cards}, at most {MAX_RUNS - extra_runs} "
              f"concurrencies", file=sys.stderr)
        return 2
    try:
        with throwaway_workdir("bench") as workdir, \
                _bench_database(settings, options, seconds, workdir) as bench:
            return _bench(bench)
    except BenchError as exc:
        print(f"hdfpay: error: bench: {exc}", file=sys.stderr)
        return 1


@contextlib.contextmanager
def _bench_database(settings: Settings, options: BenchOptions, seconds: int,
                    workdir: Path) -> Iterator[Bench]:
    """A database nobody else uses, so that the figures and the final counts are ours alone."""
    if settings.database_url:
        dsn = uvloop.run(recreate_database(settings.database_url, BENCH_DATABASE))
        yield Bench(dsn, find_server_binaries() / "pgbench", workdir, False, settings, options,
                    seconds)
        return
    cluster = throwaway_cluster(workdir)   # stopped with its work directory
    yield Bench(cluster.start(), cluster.tool("pgbench"), workdir, True, settings, options, seconds)


def _bench(bench: Bench) -> int:
    """Setup, the runs (pgbench then end to end at each concurrency, with the limit beside; open
    loop at fractions of the best; the highest again without metrics, without MACs, then hot
    cards; the server restarted whenever MACs or metrics go on or off), checks."""
    uvloop.run(_prepare(bench))
    index = 0
    plan = bench_plan(bench.options.concurrency)
    for (mac, metrics, grouped), runs in itertools.groupby(
            plan, lambda r: (r.mac, r.metrics, r.group_commit)):
        with _server(bench, mac, metrics, grouped) as url:
            if index == 0:
                print(f"server {url} (pool {bench.settings.db_pool_size}), {bench.seconds} s per "
                      f"run; every request MAC'd (AES-DUKPT, AES-CMAC) except in 'no MAC' runs, "
                      f"server metrics on except in 'no metrics' runs\n")
                print(TABLE_ROW.format("clients", "e2e tps", "p50 ms", "p99 ms", "pgbench tps",
                                       "p50 ms", "p99 ms", "e2e/pgbench"))
            for run in runs:
                index += 1
                pgb = _measure(bench, lambda: _pgbench(bench, index, run))
                e2e = _measure(bench, lambda: _e2e(bench, url, index, run))
                report_run(bench, index, run, e2e, pgb)
                if run.plain:
                    report_limit(bench, _measure(bench, lambda: _limit(bench, index, run)))
                if not run.mac:
                    report_mac_cost(bench)
                if not run.metrics:
                    report_metrics_cost(bench)
                if not run.group_commit:
                    report_group_commit_gain(bench, run)
            if mac and metrics and grouped and not bench.open_loop:
                index = _open_loop_runs(bench, url, index)
    problems = uvloop.run(verify(bench))
    Path(bench.options.output).write_text(json.dumps(results(bench, problems), indent=2) + "\n")
    print(f"results written to {bench.options.output}")
    final_lines(bench)
    return 1 if problems else 0


async def _prepare(bench: Bench) -> None:
    """Schema, region, the bench's terminals and their keys, hot cards funded so they never run
    dry; then a vacuumed, analysed, checkpointed start with WAL segments ready, so that no run
    pays for the bulk load or for a new cluster's first gigabyte of WAL."""
    small = max(1, bench.options.cards // SEED_LINEARITY_SCALE)
    small_s = await _seed_elsewhere(bench, small)
    async with connection(bench.dsn) as conn:
        bench.seed_s = await _timed_seed(bench, conn, bench.options.cards)
        per_small, per_full = small_s / small * 1e6, bench.seed_s / bench.options.cards * 1e6
        bench.seed_small = {"beneficiaries": small, "seconds": small_s,
                            "us_per_beneficiary": round(per_small, 1),
                            "full_us_per_beneficiary": round(per_full, 1),
                            "ratio": round(per_full / per_small, 2)}
        print(f"seeded {bench.options.cards} beneficiaries in {bench.seed_s:.2f} s "
              f"({per_full:.0f} µs each; {small} in {small_s:.2f} s, {per_small:.0f} µs each: "
              f"ratio {bench.seed_small['ratio']:.2f}, 1 = linear, "
              f"{SEED_LINEARITY_SCALE} = quadratic)")
        bench.postmaster = postmaster_of(await conn.fetchval("SELECT pg_backend_pid()"))
        bench.merchant_account_id = await conn.fetchval(
            "SELECT merchant_account_id FROM partners WHERE status = 'ACTIVE' ORDER BY id LIMIT 1")
        keys = bench.keys = await provision_bench_terminals(
            conn, bench.workdir, max(bench.options.concurrency))
        print(f"provisioned {len(keys.terminals)} bench terminals ({len(keys.e2e_terminals)} "
              f"e2e, {len(keys.pgbench_terminals)} pgbench) and the region's, AES-DUKPT keys "
              f"under BDK {keys.bdk} in TR-31 blocks, in {keys.provision_s:.2f} s")
        reload_cents = (bench.seconds * HOT_RUN_TPS_CEILING * BENCH_AMOUNT_CENTS_MAX * 2
                        // HOT_CARD_COUNT)  # two hot runs, all on HOT_CARD_COUNT wallets
        await conn.execute(
            "SELECT reload_wallet(beneficiary_id, $2, $3, 'bench-hot:' || id) FROM cards"
            " WHERE uid IN (SELECT '\\x04'::bytea || substring(int8send(n) FROM 3)"
            "                 FROM unnest($1::bigint[]) AS n)", bench.hot_cards, bench.school_year, reload_cents)
        await conn.execute("VACUUM ANALYZE")
        if await conn.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"):
            ready = await reserve_wal(conn, BENCH_WAL_RESERVE_BYTES)   # checkpoints, too
            bench.wal_ready_bytes = ready * await wal_segment_bytes(conn)
            print(f"WAL: {ready} segments ready ({bench.wal_ready_bytes // 2**20} MB): no run "
                  f"waits for a new one unless it says so")
        bench.postgres_version = await conn.fetchval("SHOW server_version")
    print(f"hot cards {bench.hot_cards} "
          f"(+{reload_cents // 100} € each), PostgreSQL {bench.postgres_version}, "
          f"{os.cpu_count()} CPUs, business day {bench.business_time:%d/%m/%Y} ({bench.business_time.tzinfo})")


async def _timed_seed(bench: Bench, conn, beneficiaries: int) -> float:
    """Migrate, pin the demo's clock, seed; the seed's seconds."""
    await migrate(conn)
    bench.business_time, bench.school_year = await demo_business_time(conn)
    await pin_clock(conn, bench.business_time)
    started = time.perf_counter()
    await seed_demo_region(conn, beneficiaries=beneficiaries, school_year=bench.school_year)
    return round(time.perf_counter() - started, 2)


async def _seed_elsewhere(bench: Bench, beneficiaries: int) -> float:
    """A smaller seed on a database of its own beside the bench's, dropped after: the seed's
    time per beneficiary at two sizes says whether it is linear."""
    dsn = await recreate_database(bench.dsn, SEED_CHECK_DATABASE)
    try:
        async with connection(dsn) as conn:
            return await _timed_seed(bench, conn, beneficiaries)
    finally:
        async with connection(bench.dsn) as admin:
            await admin.execute(f"DROP DATABASE IF EXISTS {SEED_CHECK_DATABASE} WITH (FORCE)")


@contextlib.contextmanager
def _server(bench: Bench, mac: bool, metrics: bool = True,
            group_commit: bool = True) -> Iterator[str]:
    """The authorizer as production runs it: its own process, pool and HSM (the bench's
    keystore), on loopback; checking the terminals' MACs, or not (`mac`); keeping its
    per-request metrics, or not (`metrics`); committing in groups or once per message."""
    port, portal_port = _free_port(), _free_port()
    env = {**{k: v for k, v in os.environ.items() if k not in SERVER_ENV_DROPPED},
           "DATABASE_URL": bench.dsn, "PYTHONUNBUFFERED": "1", "HDFPAY_DRAIN_NOTICE_MS": "0",
           "HDFPAY_OPS_PORT": "0",  # the operator listener on a free port, never 8081
           "HDFPAY_PORTAL_PORT": str(portal_port),     # nor 8082 for the students' space
           **bench.keys.server_env(mac, metrics, group_commit)}
    log_path = bench.workdir / "server.log"
    with log_path.open("a") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "hdfpay.cli", "serve", "--host", LOOPBACK,
             "--port", str(port)],
            env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            url = f"http://{LOOPBACK}:{port}"
            _wait_ready(url, proc, log_path)
            bench.server_pid = proc.pid
            bench.portal_url = f"http://{LOOPBACK}:{portal_port}"
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(SERVER_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return probe.getsockname()[1]


def _wait_ready(url: str, proc: subprocess.Popen, log_path: Path) -> None:
    """Poll /healthz until it answers; fail at once if the server exits, and after a bound."""
    deadline = time.monotonic() + SERVER_READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"the server exited ({proc.returncode}):\n"
                             f"{log_path.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=HEALTH_PROBE_TIMEOUT_S) as reply:
                if reply.status == 200:
                    return
        except OSError:
            time.sleep(SERVER_POLL_INTERVAL_S)
    raise BenchError(f"the server did not answer /healthz within {SERVER_READY_TIMEOUT_S:.0f} s")


def _measure(bench: Bench, run) -> dict:
    """One run, with the CPU seconds each party used."""
    before, started = cpu_snapshot(bench.server_pid, bench.postmaster), time.perf_counter()
    result = run()
    await_reaped(bench.postmaster, before["children"])
    after = cpu_snapshot(bench.server_pid, bench.postmaster)
    wall_s = time.perf_counter() - started
    return {**result, "cpu_s": cpu_used(before, after, wall_s)}


def _pgbench(bench: Bench, index: int, run: Run) -> dict:
    """The database alone: pgbench making the server's call on the same mix, client k as the
    k-th pgbench terminal, with its key and increasing counters when MACs are on."""
    tag, clients = f"pgb{index}", slice(0, run.concurrency)
    script = pgbench_script(tag, bench.options.cards, bench.hot_cards if run.hot else None,
                            bench.keys.pgbench_terminals[clients],
                            bench.keys.pgbench_key_ids[clients] if run.mac else None,
                            counter_start(index))
    return {"tag": tag, **run_pgbench(bench.pgbench, bench.dsn, bench.workdir / tag, script,
                                      run.concurrency, bench.seconds,
                                      bench.seconds + TOOL_GRACE_S)}


def _e2e(bench: Bench, url: str, index: int, run: Run) -> dict:
    """The load generator, worker k as the k-th e2e terminal, signing when MACs are on."""
    return run_e2e(url, f"e2e{index}", bench.seconds, run.concurrency,
                   bench.keys.e2e_terminals[:run.concurrency], bench.options.cards,
                   bench.hot_cards if run.hot else None, index, bench.seconds + TOOL_GRACE_S,
                   (bench.keys.key_file, counter_start(index)) if run.mac else None)


def _limit(bench: Bench, index: int, run: Run) -> dict:
    """The minimal debit (loadtest.bench_limit) under pgbench, as many clients as the run."""
    tag = f"lim{index}"
    script = minimal_debit_script(tag, bench.options.cards, bench.school_year,
                                  bench.merchant_account_id)
    return {"tag": tag, **run_pgbench(bench.pgbench, bench.dsn, bench.workdir / tag, script,
                                      run.concurrency, bench.seconds,
                                      bench.seconds + TOOL_GRACE_S)}


async def _housekeeping(bench: Bench) -> dict[str, int]:
    async with connection(bench.dsn) as conn:
        return await housekeeping_counts(conn)


def _open_loop_runs(bench: Bench, url: str, index: int) -> int:
    """Open loop (loadtest.open_loop) at each fraction of the best e2e tps so far, over the
    highest concurrency's terminals, MAC'd; the last run index used."""
    best = max(r["e2e"]["tps"] for r in bench.runs if r["mac"] and r["metrics"] and not r["hot"])
    terminals = max(bench.options.concurrency)
    for fraction, rate in zip(OPEN_LOOP_LOAD_FRACTIONS, rates_at(OPEN_LOOP_LOAD_FRACTIONS, best)):
        index += 1
        before = uvloop.run(_housekeeping(bench))
        result = _measure(bench, lambda: run_e2e(
            url, f"ol{index}", bench.seconds, terminals, bench.keys.e2e_terminals[:terminals],
            bench.options.cards, None, index, bench.seconds + TOOL_GRACE_S,
            (bench.keys.key_file, counter_start(index)), rate=rate))
        housekeeping = housekeeping_between(before, uvloop.run(_housekeeping(bench)))
        bench.open_loop.append({"index": index, "fraction": fraction, "max_tps": best,
                                "terminals": terminals, "housekeeping": housekeeping,
                                **result, **open_loop_cpu(result)})
        report_open_loop(bench)
    return index
