"""`hdfpay bench`: the project's speed measurement, end to end beside a pgbench baseline.

On a throwaway database (a private cluster, or a fresh `hdfpay_bench` database on DATABASE_URL's
server): seed the demo region, start the server as its own process, then at each concurrency run
pgbench making the server's very SQL call, and the load generator (authorizer.bench_load) through
HTTP, on the same mix; then both on a few hot cards. Afterwards the ledger must balance and the
database must hold exactly the purchases the tools made.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter, defaultdict
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit, urlunsplit

import uvloop

from authorizer.bench_load import (APPROVED_CODES, BENCH_AMOUNT_CENTS_MAX, PGBENCH_QUERY_MODE,
                                   BenchError, cpu_snapshot, cpu_used, first_approvable,
                                   pgbench_script, run_e2e, run_pgbench)
from authorizer.config import Settings
from authorizer.database import connection
from authorizer.demo import PARIS, demo_business_time
from ledger.clock import pin_clock
from ledger.demo_region import seed_demo_region
from ledger.embedded import EmbeddedPostgres, find_server_binaries, remove_cluster
from ledger.invariants import ledger_violations
from ledger.migrate import migrate

BENCH_DATABASE = "hdfpay_bench"
LOOPBACK = "127.0.0.1"
SERVER_READY_TIMEOUT_S = 30.0
SERVER_POLL_INTERVAL_S = 0.05
HEALTH_PROBE_TIMEOUT_S = 0.5
SERVER_STOP_TIMEOUT_S = 15.0          # above the server's own shutdown grace
TOOL_GRACE_S = 30.0                   # beyond a run's duration before its tool is killed
HOT_CARD_COUNT = 10
HOT_RUN_TPS_CEILING = 100_000         # sizes the hot cards' extra balance: they never run dry
TABLE_ROW = "{:>9} | {:>9} {:>8} {:>8} | {:>12} {:>8} {:>8} | {:>12}"


@dataclasses.dataclass(frozen=True)
class BenchOptions:
    cards: int
    seconds: int
    concurrency: list[int]
    output: str


@dataclasses.dataclass
class Bench:
    """What the runs share: the database, the tools, the mix, and the results so far."""
    dsn: str
    pgbench: Path
    workdir: Path
    own_cluster: bool
    settings: Settings
    options: BenchOptions
    seconds: int
    business_time: dt.datetime = dataclasses.field(
        default_factory=lambda: demo_business_time(dt.datetime.now(PARIS)))
    hot_cards: list[int] = dataclasses.field(
        default_factory=lambda: first_approvable(HOT_CARD_COUNT))
    terminals: list[str] = dataclasses.field(default_factory=list)
    server_pid: int = 0
    seed_s: float = 0.0
    postgres_version: str = ""
    runs: list[dict] = dataclasses.field(default_factory=list)


def run_bench(options: BenchOptions, settings: Settings) -> int:
    """Exit code 0 when the runs ran and the checks passed, 1 otherwise, 2 on a bad option."""
    seconds = options.seconds  # whole seconds: pgbench -T takes no fraction
    least_cards = max(first_approvable(HOT_CARD_COUNT))
    if seconds < 1 or min(options.concurrency, default=0) < 1 or options.cards < least_cards:
        print(f"hdfpay: error: bench needs --seconds >= 1, concurrencies >= 1, "
              f"--cards >= {least_cards}", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="hdfpay-bench-"))
    workdir.chmod(0o755)  # the embedded server may run as the 'postgres' user (we may be root)
    try:
        with _bench_database(settings, options, seconds, workdir) as bench:
            return _bench(bench)
    except BenchError as exc:
        print(f"hdfpay: error: bench: {exc}", file=sys.stderr)
        return 1
    finally:
        remove_cluster(workdir)


@contextlib.contextmanager
def _bench_database(settings: Settings, options: BenchOptions, seconds: int,
                    workdir: Path) -> Iterator[Bench]:
    """A database nobody else uses, so that the figures and the final counts are ours alone."""
    if settings.database_url:
        dsn = uvloop.run(_fresh_database(settings.database_url))
        yield Bench(dsn, find_server_binaries() / "pgbench", workdir, False, settings, options,
                    seconds)
        return
    cluster = EmbeddedPostgres(workdir / "pgdata")
    try:
        dsn = cluster.start()
        yield Bench(dsn, cluster.tool("pgbench"), workdir, True, settings, options, seconds)
    finally:
        cluster.stop()


async def _fresh_database(dsn: str) -> str:
    """On someone else's server, work in a database of our own, recreated each run."""
    async with connection(dsn) as conn:
        await conn.execute(f"DROP DATABASE IF EXISTS {BENCH_DATABASE} WITH (FORCE)")
        await conn.execute(f"CREATE DATABASE {BENCH_DATABASE}")
    return urlunsplit(urlsplit(dsn)._replace(path="/" + BENCH_DATABASE))


def _bench(bench: Bench) -> int:
    """Setup, the runs (pgbench then end to end at each concurrency, then hot cards), checks."""
    uvloop.run(_prepare(bench))
    top = max(bench.options.concurrency)
    with _server(bench) as url:
        print(f"server {url} (pool {bench.settings.db_pool_size}), {bench.seconds} s per run\n")
        print(TABLE_ROW.format("clients", "e2e tps", "p50 ms", "p99 ms", "pgbench tps", "p50 ms",
                               "p99 ms", "e2e/pgbench"))
        plan = [(c, False) for c in bench.options.concurrency] + [(top, True)]
        for index, (concurrency, hot) in enumerate(plan, start=1):
            pgb = _measure(bench, lambda: _pgbench(bench, index, concurrency, hot))
            e2e = _measure(bench, lambda: run_e2e(
                url, f"e2e{index}", bench.seconds, concurrency, bench.terminals,
                bench.options.cards, bench.hot_cards if hot else None, index,
                bench.seconds + TOOL_GRACE_S))
            _report_run(bench, index, concurrency, hot, e2e, pgb)
    problems = uvloop.run(_verify(bench))
    Path(bench.options.output).write_text(json.dumps(_results(bench, problems), indent=2) + "\n")
    print(f"results written to {bench.options.output}")
    final = next(r for r in bench.runs if r["concurrency"] == top and not r["hot"])
    e2e, pgb = final["e2e"], final["pgbench"]
    print(f"e2e_tps={e2e['tps']:.0f} pgbench_tps={pgb['tps']:.0f} "
          f"ratio={e2e['tps'] / pgb['tps']:.2f} p50_ms={e2e['p50_ms']:.2f} "
          f"p99_ms={e2e['p99_ms']:.2f}")
    return 1 if problems else 0


async def _prepare(bench: Bench) -> None:
    """Schema, region, active terminals, hot cards funded so they never run dry; then a vacuumed,
    analysed, checkpointed start, so that no run pays for the bulk load."""
    year = bench.business_time.year - (0 if bench.business_time.month >= 7 else 1)
    async with connection(bench.dsn) as conn:
        await migrate(conn)
        started = time.perf_counter()
        summary = await seed_demo_region(conn, beneficiaries=bench.options.cards, school_year=year)
        await pin_clock(conn, bench.business_time)
        bench.seed_s = round(time.perf_counter() - started, 2)
        print(f"seeded {summary.beneficiaries} beneficiaries in {bench.seed_s:.2f} s")
        bench.terminals = [r["id"] for r in await conn.fetch(
            "SELECT t.id FROM terminals t JOIN partners p ON p.id = t.partner_id"
            " WHERE t.status = 'ACTIVE' AND p.status = 'ACTIVE' ORDER BY t.id")]
        reload_cents = (bench.seconds * HOT_RUN_TPS_CEILING * BENCH_AMOUNT_CENTS_MAX * 2
                        // HOT_CARD_COUNT)  # two hot runs, all on HOT_CARD_COUNT wallets
        await conn.execute(
            "SELECT reload_wallet(beneficiary_id, $2, $3, 'bench-hot:' || id) FROM cards"
            " WHERE uid IN (SELECT '\\x04'::bytea || substring(int8send(n) FROM 3)"
            "                 FROM unnest($1::bigint[]) AS n)", bench.hot_cards, year, reload_cents)
        await conn.execute("VACUUM ANALYZE")
        if await conn.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"):
            await conn.execute("CHECKPOINT")
        bench.postgres_version = await conn.fetchval("SHOW server_version")
    print(f"{len(bench.terminals)} active terminals, hot cards {bench.hot_cards} "
          f"(+{reload_cents // 100} € each), PostgreSQL {bench.postgres_version}, "
          f"{os.cpu_count()} CPUs, business day {bench.business_time:%d/%m/%Y} (Europe/Paris)")


@contextlib.contextmanager
def _server(bench: Bench) -> Iterator[str]:
    """The authorizer as production runs it: its own process and pool, on loopback."""
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "DATABASE_URL": bench.dsn, "PYTHONUNBUFFERED": "1"}
    log_path = bench.workdir / "server.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "authorizer.cli", "serve", "--host", LOOPBACK,
             "--port", str(port)],
            env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            url = f"http://{LOOPBACK}:{port}"
            _wait_ready(url, proc, log_path)
            bench.server_pid = proc.pid
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(SERVER_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


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
    before, started = cpu_snapshot(bench.server_pid), time.perf_counter()
    result = run()
    after, wall_s = cpu_snapshot(bench.server_pid), time.perf_counter() - started
    return {**result, "cpu_s": cpu_used(before, after, wall_s)}


def _pgbench(bench: Bench, index: int, concurrency: int, hot: bool) -> dict:
    """The database alone: pgbench making the server's call on the same mix."""
    tag = f"pgb{index}"
    script = pgbench_script(tag, bench.options.cards, bench.hot_cards if hot else None,
                            bench.terminals, bench.settings.max_purchase_amount_cents)
    return {"tag": tag, **run_pgbench(bench.pgbench, bench.dsn, bench.workdir / tag, script,
                                      concurrency, bench.seconds, bench.seconds + TOOL_GRACE_S)}


def _report_run(bench: Bench, index: int, concurrency: int, hot: bool, e2e: dict,
                pgb: dict) -> None:
    """A table row, then where the CPU went (what limits a 2-core machine) and odd answers."""
    ratio = e2e["tps"] / pgb["tps"] if pgb["tps"] else 0.0
    bench.runs.append({"index": index, "concurrency": concurrency, "hot": hot, "e2e": e2e,
                       "pgbench": pgb, "ratio": round(ratio, 3)})
    print(TABLE_ROW.format(
        f"{concurrency}{' hot' if hot else ''}", f"{e2e['tps']:.0f}", f"{e2e['p50_ms']:.2f}",
        f"{e2e['p99_ms']:.2f}", f"{pgb['tps']:.0f}", f"{pgb['p50_ms']:.2f}", f"{pgb['p99_ms']:.2f}",
        f"{ratio:.2f}"))
    cpu = [", ".join(f"{k} {v:.1f}" for k, v in run["cpu_s"].items()) for run in (e2e, pgb)]
    others = {k: v for k, v in e2e["rc"].items() if k != "00"}
    print(f"{'':>9}   CPU s: e2e {cpu[0]} | pgbench {cpu[1]}"
          + (f" | e2e answers other than 00: {others}" if others else ""), flush=True)


async def _verify(bench: Bench) -> list[str]:
    """The ledger balances, and the database holds exactly the purchases the tools made: per run,
    the codes the load generator saw and as many rows as pgbench logged transactions."""
    async with connection(bench.dsn) as conn:
        violations = [f"VIOLATION {rule}: {detail}"
                      for rule, detail in await ledger_violations(conn)]
        rows = await conn.fetch(
            "SELECT split_part(request_id, '-', 1) AS tag, response_code AS rc, count(*) AS n"
            " FROM authorizations WHERE terminal_id = ANY($1::text[]) GROUP BY 1, 2",
            bench.terminals)
    print("\n".join(violations) if violations else "ledger balanced")
    stored: dict[str, Counter] = defaultdict(Counter)
    for row in rows:
        stored[row["tag"]][row["rc"]] += row["n"]
    mismatches, counted = [], 0
    for run in bench.runs:
        pgb, e2e = run["pgbench"], run["e2e"]
        pgb["rc"] = dict(sorted(stored[pgb["tag"]].items()))
        pgb["approved"] = sum(stored[pgb["tag"]][code] for code in APPROVED_CODES)
        counted += pgb["approved"] + e2e["approved"]
        if sum(pgb["rc"].values()) != pgb["transactions"]:
            mismatches.append(f"{pgb['tag']}: pgbench logged {pgb['transactions']} transactions, "
                              f"the database holds {sum(pgb['rc'].values())}")
        answered = {k: v for k, v in e2e["rc"].items() if k[:1].isdigit()}
        if answered != dict(sorted(stored[e2e["tag"]].items())):
            mismatches.append(f"{e2e['tag']}: the load generator saw {answered}, "
                              f"the database holds {dict(stored[e2e['tag']])}")
    approved = sum(codes[code] for codes in stored.values() for code in APPROVED_CODES)
    if approved != counted:
        mismatches.append(f"{approved} approvals in the database, the tools counted {counted}")
    print("\n".join(mismatches) if mismatches else
          f"approvals reconciled: {approved} in the database = {counted} counted by the tools")
    return violations + mismatches


def _results(bench: Bench, problems: list[str]) -> dict:
    pgbench_version = subprocess.run([str(bench.pgbench), "--version"], capture_output=True,
                                     text=True).stdout.strip()
    return {"machine": {"nproc": os.cpu_count(), "platform": platform.platform(),
                        "python": platform.python_version(), "postgres": bench.postgres_version,
                        "pgbench": pgbench_version},
            "options": {**dataclasses.asdict(bench.options), "seconds_run": bench.seconds,
                        "embedded_cluster": bench.own_cluster,
                        "server_pool_size": bench.settings.db_pool_size,
                        "pgbench_query_mode": PGBENCH_QUERY_MODE},
            "seed_seconds": bench.seed_s, "terminals": bench.terminals,
            "hot_cards": bench.hot_cards, "runs": bench.runs, "problems": problems}
