"""`hdfpay loadtest SCENARIO`: a locust scenario of loadtest/ against a real authorizer, then the
ledger checked.

Like `hdfpay bench`, on a throwaway database (a private cluster in a temporary directory, or a
fresh `hdfpay_loadtest` database on DATABASE_URL's server) so that every count afterwards is the
run's own: migrate, pin the business clock (the wallet window must be open), seed the demo region,
give each locust user a terminal of its own with an AES-DUKPT key from a software HSM in the
temporary directory (loadtest.bench_keys: the key file is 0600 and deleted with the directory),
start the server as its own process on loopback (loadtest.bench), then run locust headless for
the given time. The users journal every answer they got; afterwards every approval they saw must
be in the ledger with its amount and nothing else may have moved money, Σ debits = Σ credits, no
wallet negative, plus the scenario's own check. Locust's CSV and HTML report go to --output.
"""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import json
import shutil
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import uvloop

from loadtest.bench import _server
from loadtest.bench_keys import MAX_BENCH_TERMINALS, provision_bench_terminals
from loadtest.bench_load import BenchError
from hdfpay.demo import demo_business_time
from hdfpay.config import Settings
from ledger.rules import current_rules
from ledger.database import connection, recreate_database
from ledger.clock import pin_clock
from ledger.demo_region import DEMO_RELOAD_CENTS_BY_KIND, seed_demo_region
from ledger.embedded import throwaway_cluster, throwaway_workdir
from ledger.invariants import ledger_violations
from ledger.migrate import migrate
from terminal_protocol.amounts import format_euros
from loadtest.load_config import TerminalSlot, terminals_variable
from loadtest.locust_plan import LoadRun, LoadtestOptions
from loadtest.student_accounts import PORTAL_URL_VARIABLE, STUDENTS_VARIABLE, student_accounts
from loadtest.approvals_journal import read_owed
from loadtest.locust_checks import (HOT_CARD, SCENARIO_CHECKS, print_codes, read_journal,
                                        reconcile)

# Scenario name → its locustfile in loadtest/ (locust loads a scenario from its file's path).
SCENARIOS = {"peak": "peak.py", "students": "students.py", "hot-card": "hot_card.py",
             "reversal-storm": "reversal_storm.py",
             "decline-mix": "decline_mix.py"}
LOCUSTFILE_DIR = Path(__file__).resolve().parent
LOADTEST_DATABASE = "hdfpay_loadtest"
MIN_CARDS = 100                   # the decline mix needs card 50 (no rights) and the opposed 1-3
MAX_SECONDS = 24 * 3600
# Users finish the message in flight (5 s terminal timeout) and a void it may need, then stop.
LOCUST_STOP_TIMEOUT_S = 15
LOCUST_START_GRACE_S = 60         # imports, spawning, writing the CSV and HTML report
LOCUST_LOG_TAIL_CHARS = 3000
CSV_PREFIX = "locust"             # locust writes locust_stats.csv, locust_failures.csv, ...
REPORT_FILE = "report.html"
SUMMARY_FILE = "summary.json"
JOURNAL_DIR = "journal"
SERVER_LOG = "server.log"         # where loadtest.bench's server helper writes the server's log

# The locust side's variables (loadtest/load_config.py reads them).
ENV_KEY_FILE = "HDFPAY_LOADTEST_KEY_FILE"
ENV_TERMINALS = "HDFPAY_LOADTEST_TERMINALS"
ENV_JOURNAL_DIR = "HDFPAY_LOADTEST_JOURNAL_DIR"
ENV_CARDS = "HDFPAY_LOADTEST_CARDS"
ENV_MAX_PURCHASE = "HDFPAY_LOADTEST_MAX_PURCHASE_CENTS"
ENV_HOT_CARD = "HDFPAY_LOADTEST_HOT_CARD"
ENV_THINK_MS = "HDFPAY_LOADTEST_THINK_MS"


class LoadtestError(RuntimeError):
    """A step of the load test failed; the message says which and why."""


def option_problem(options: LoadtestOptions, settings: Settings) -> str | None:
    """Why these options cannot run, or None."""
    if options.scenario not in SCENARIOS:
        return f"unknown scenario {options.scenario!r} (one of {', '.join(SCENARIOS)})"
    if not 1 <= options.users <= MAX_BENCH_TERMINALS:
        return f"--users must be between 1 and {MAX_BENCH_TERMINALS} (one terminal each)"
    if not 1 <= options.seconds <= MAX_SECONDS:
        return f"--seconds must be between 1 and {MAX_SECONDS}"
    if options.cards < MIN_CARDS:
        return f"--cards must be at least {MIN_CARDS}"
    if options.think_ms < 0:
        return "--think-ms cannot be negative"
    if importlib.util.find_spec("locust") is None:   # found, not imported: gevent patches on import
        return "locust is not installed in this environment (pip install locust)"
    if not (LOCUSTFILE_DIR / SCENARIOS[options.scenario]).is_file():
        return f"no {LOCUSTFILE_DIR / SCENARIOS[options.scenario]}: run from a checkout"
    return None


def run_loadtest(options: LoadtestOptions, settings: Settings) -> int:
    """0 when locust ran without failures and every check passed, 1 otherwise, 2 on bad options."""
    problem = option_problem(options, settings)
    if problem:
        print(f"hdfpay: error: loadtest: {problem}", file=sys.stderr)
        return 2
    output = Path(options.output).resolve()
    output.mkdir(parents=True, exist_ok=True)
    with throwaway_workdir("loadtest") as workdir:
        return _run_in(workdir, options, settings, output)


def _run_in(workdir: Path, options: LoadtestOptions, settings: Settings, output: Path) -> int:
    try:
        with _database(settings, workdir) as dsn:
            run = LoadRun(options, settings, dsn, workdir, output)
            uvloop.run(_prepare(run))
            with _server(run, mac=True) as url:
                print(f"server {url}; locust: {options.users} users, {options.seconds} s, "
                      f"scenario {options.scenario}", flush=True)
                locust_problems = _run_locust(run, url)
            stats = read_stats(output / f"{CSV_PREFIX}_stats.csv")
            report_stats(stats)
            problems = locust_problems + _failures(stats, output)
            problems += uvloop.run(_verify(run))
        _write_summary(run, stats, problems)
        _final_line(run, stats, problems)
        return 1 if problems else 0
    except (BenchError, LoadtestError) as exc:
        print(f"hdfpay: error: loadtest: {exc}", file=sys.stderr)
        return 1
    finally:
        _keep_server_log(workdir, output)


def _keep_server_log(workdir: Path, output: Path) -> None:
    """The server's log outlives the throwaway directory (it holds no key: keys are never
    logged), for whoever reads a failed run."""
    if (workdir / SERVER_LOG).exists():
        shutil.copyfile(workdir / SERVER_LOG, output / SERVER_LOG)


@contextlib.contextmanager
def _database(settings: Settings, workdir: Path) -> Iterator[str]:
    """A database nobody else uses: the counts afterwards are the run's alone."""
    if settings.database_url:
        yield uvloop.run(recreate_database(settings.database_url, LOADTEST_DATABASE))
        return
    yield throwaway_cluster(workdir).start()   # stopped with its work directory


async def _prepare(run: LoadRun) -> None:
    """Schema, clock pinned before the seed (rights and wallets are for its school year), the
    region, one terminal per user with its key, and statistics fresh after the bulk load."""
    async with connection(run.dsn) as conn:
        await migrate(conn)
        run.business_time, run.school_year = await demo_business_time(conn)
        await pin_clock(conn, run.business_time)
        summary = await seed_demo_region(conn, beneficiaries=run.options.cards,
                                         school_year=run.school_year)
        run.keys = await provision_bench_terminals(conn, run.workdir, run.options.users)
        run.categories = {r["id"]: r["category"] for r in await conn.fetch(
            "SELECT t.id, p.category FROM terminals t JOIN partners p ON p.id = t.partner_id"
            " WHERE t.id = ANY($1::text[])", run.terminals)}
        run.max_purchase_cents = (await current_rules(conn)).max_purchase_amount_cents
        if run.options.scenario == "students":
            run.student_dossiers = await student_accounts(conn, run.options.cards)
        await conn.execute("VACUUM ANALYZE")
    if (run.options.scenario == "decline-mix"
            and run.max_purchase_cents <= max(DEMO_RELOAD_CENTS_BY_KIND.values())):
        raise LoadtestError("the decline mix needs the ledger's purchase limit (table rules) "
                            "above every seeded balance, or 51 cannot be told from 61")
    print(f"seeded {summary.beneficiaries} cards ({format_euros(summary.funded_cents)} funded), "
          f"business day {run.business_time:%d/%m/%Y} ({run.business_time.tzinfo}); {len(run.terminals)} "
          f"terminals for the users, AES-DUKPT keys under BDK {run.keys.bdk}", flush=True)


def locust_environment(run: LoadRun, journal_dir: Path) -> dict[str, str]:
    """What the users read (loadtest/load_config.py): their terminals in order with their shop's
    category, the key file, where to journal, and the scenario's parameters."""
    terminals = terminals_variable([TerminalSlot(t, run.categories[t]) for t in run.terminals])
    return {ENV_KEY_FILE: str(run.keys.key_file), ENV_TERMINALS: terminals,
            ENV_JOURNAL_DIR: str(journal_dir), ENV_CARDS: str(run.options.cards),
            ENV_MAX_PURCHASE: str(run.max_purchase_cents),
            ENV_HOT_CARD: str(HOT_CARD), ENV_THINK_MS: str(run.options.think_ms),
            PORTAL_URL_VARIABLE: run.portal_url,
            STUDENTS_VARIABLE: ",".join(run.student_dossiers)}


def _run_locust(run: LoadRun, url: str) -> list[str]:
    """locust headless, bounded in time, in a process of its own (gevent: it must not share the
    CLI's event loop); its console goes to locust.log in the output directory."""
    options, output = run.options, run.output
    command = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE_DIR / SCENARIOS[options.scenario]),
               "--headless", "--users", str(options.users), "--spawn-rate", str(options.users),
               "--run-time", f"{options.seconds}s", "--stop-timeout", str(LOCUST_STOP_TIMEOUT_S),
               "--host", url, "--csv", str(output / CSV_PREFIX), "--html", str(output / REPORT_FILE),
               "--only-summary", "--loglevel", "WARNING"]
    env = {**os.environ, **locust_environment(run, run.workdir / JOURNAL_DIR)}
    log_path = output / "locust.log"
    timeout_s = options.seconds + LOCUST_STOP_TIMEOUT_S + LOCUST_START_GRACE_S
    with log_path.open("w") as log:
        try:
            code = subprocess.run(command, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL, timeout=timeout_s).returncode
        except subprocess.TimeoutExpired:
            raise LoadtestError(f"locust did not finish within {timeout_s} s ({log_path})") from None
    if not (output / f"{CSV_PREFIX}_stats.csv").exists():
        raise LoadtestError(f"locust exited {code} without statistics:\n"
                            f"{log_path.read_text()[-LOCUST_LOG_TAIL_CHARS:]}")
    # 1 is locust's "some requests failed", counted from its CSV; anything else is locust's own.
    return [] if code in (0, 1) else [f"locust exited {code} (see {log_path})"]


def read_stats(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def aggregated(stats: list[dict[str, str]]) -> dict[str, str]:
    return next((row for row in stats if row["Name"] == "Aggregated"), {})


def report_stats(stats: list[dict[str, str]]) -> None:
    """Per message type and in total: requests, failures, throughput and latency (locust's
    percentiles: whole milliseconds)."""
    row_format = "{:<16} {:>9} {:>8} {:>9} {:>7} {:>7} {:>7}"
    print(row_format.format("request", "count", "failed", "req/s", "p50 ms", "p99 ms", "max ms"))
    for row in stats:
        print(row_format.format(row["Name"], row["Request Count"], row["Failure Count"],
                                f"{float(row['Requests/s']):.1f}", row["50%"], row["99%"],
                                f"{float(row['Max Response Time']):.0f}"))


def _failures(stats: list[dict[str, str]], output: Path) -> list[str]:
    total = aggregated(stats)
    failed = int(total.get("Failure Count", "0") or 0)
    if not total or not int(total.get("Request Count", "0") or 0):
        return ["locust sent no request"]
    if not failed:
        print("no request failed (no missing or forged answer, no 30/63/91/96, no wrong answer)")
        return []
    reasons = []
    failures_csv = output / f"{CSV_PREFIX}_failures.csv"
    if failures_csv.exists():
        reasons = [f"  {r['Occurrences']} × {r['Name']}: {r['Error']}" for r in read_stats(failures_csv)]
    print(f"{failed} requests failed:\n" + "\n".join(reasons))
    return [f"{failed} requests failed (see {failures_csv})"]


# -- the ledger afterwards -------------------------------------------------------------------

async def _verify(run: LoadRun) -> list[str]:
    """The ledger's invariants, the reconciliation, the scenario's own check; printed."""
    answers = read_journal(run.workdir / JOURNAL_DIR)
    async with connection(run.dsn) as conn:
        violations = [f"VIOLATION {rule}: {detail}" for rule, detail in await ledger_violations(conn)]
        transfers, moved_cents = await conn.fetchrow(
            "SELECT count(*), coalesce(sum(amount_cents), 0)::bigint FROM transfers")
        wallets, lowest = await conn.fetchrow(
            "SELECT count(*), coalesce(min(credits_posted - debits_posted), 0)::bigint"
            " FROM accounts WHERE kind = 'WALLET'")
        ledger = await conn.fetch(
            "SELECT terminal_id, request_id, message_type, response_code, amount_approved_cents,"
            " amount_reversed_cents FROM authorizations"
            " WHERE terminal_id = ANY($1::text[]) AND request_hash IS NOT NULL", run.terminals)
        scenario_lines, scenario_problems = await SCENARIO_CHECKS[run.options.scenario](
            run, conn, answers)
    print_codes(answers)
    if violations:
        print("\n".join(violations))
    else:
        print(f"ledger balanced: Σ debits = Σ credits over {transfers} transfers "
              f"({format_euros(moved_cents)}), wallet totals match the journal, every approval "
              f"has its transfer")
    negative = lowest < 0
    print(f"{'NEGATIVE WALLET' if negative else 'no wallet negative'}: lowest balance "
          f"{format_euros(lowest)} over {wallets} wallets")
    line, mismatches = reconcile(answers, ledger)
    print("\n".join(mismatches[:20]) if mismatches else line)
    owed = [f"money still owed: {kind} {request_id} of {terminal} never answered"
            for terminal, request_id, kind in read_owed(run.workdir / JOURNAL_DIR)]
    print("\n".join(owed[:20]) if owed else "money still owed: 0 (every void and refund answered)")
    print("\n".join(scenario_lines + scenario_problems), flush=True)
    return (violations + (["a wallet is negative"] if negative else []) + mismatches + owed
            + scenario_problems)


def _figures(stats: list[dict[str, str]]) -> dict:
    total = aggregated(stats)
    return {"requests": int(total.get("Request Count", 0) or 0),
            "failures": int(total.get("Failure Count", 0) or 0),
            "rps": round(float(total.get("Requests/s", 0) or 0), 1),
            "p50_ms": total.get("50%", "N/A"), "p99_ms": total.get("99%", "N/A")}


def _write_summary(run: LoadRun, stats: list[dict[str, str]], problems: list[str]) -> None:
    summary = {"scenario": run.options.scenario, "users": run.options.users,
               "seconds": run.options.seconds, "cards": run.options.cards,
               "think_ms": run.options.think_ms, "cpus": os.cpu_count(), **_figures(stats),
               "problems": problems}
    (run.output / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")


def _final_line(run: LoadRun, stats: list[dict[str, str]], problems: list[str]) -> None:
    figures = _figures(stats)
    print(f"report {run.output / REPORT_FILE}, CSV {run.output / CSV_PREFIX}_*.csv")
    print(f"scenario={run.options.scenario} users={run.options.users} "
          f"seconds={run.options.seconds} requests={figures['requests']} rps={figures['rps']} "
          f"p50_ms={figures['p50_ms']} p99_ms={figures['p99_ms']} failures={figures['failures']} "
          f"checks={'FAILED' if problems else 'passed'}")
