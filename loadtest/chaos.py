"""`hdfpay chaos --seconds S`: a bank test under faults, after Jepsen's (issue 17 §3).

In a throwaway directory: etcd and two Patroni-managed PostgreSQL nodes (strict synchronous
mode), a seeded region, `hdfpay serve --workers N` on the multi-host DSN. Terminals sell, each
following the terminal's rule (loadtest.chaos_till: no trustworthy answer, reverse, durably, until
answered), while the nemesis (loadtest.nemesis) kills workers, pauses, kills and crashes the
primary, and restarts etcd, waiting for the bank to serve again after each fault. When the time
is up the faults stop, every terminal settles what it owes, and the bank is checked on whichever
node is the primary then (loadtest.bank_check), with `hdfpay check` and `hdfpay audit verify` as
an operator would run them. The report prints the counts and the time without a primary at each
failover; results, the terminals' journal and the logs go to --output. Exit 1 when a property
fails.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import sys
import time
from pathlib import Path

import uvloop

from ledger.database import connection
from ledger.embedded import THROWAWAY_HA_DIR, throwaway_workdir
from ledger.ha_cluster import CLUSTER_READY_TIMEOUT_S, HaClusterError
from loadtest.audit_writer import AuditWriter, audit_problems
from loadtest.bank_check import bank_problems, read_ledger
from loadtest.bench_keys import MAX_BENCH_TERMINALS, load_terminal_keys
from loadtest.chaos_plan import ChaosOptions, ChaosRun
from loadtest.chaos_report import print_report, write_results
from loadtest.chaos_setup import SERVER_LOG, ChaosBank, open_bank, serving, workers_ready
from loadtest.chaos_till import ChaosTill, Pulse
from loadtest.nemesis import ALL_FAULT_KINDS, Nemesis
from loadtest.till_journal import TillJournal, replay
from terminal_protocol.client import TerminalClient

MAX_SECONDS = 24 * 3600
MAX_WORKERS = 8
MIN_CARDS = 100                   # approvable cards among the first ones of the demo numbering
# After the faults stop: every terminal's owed reversals answered within this, or reported.
SETTLE_TIMEOUT_S = 180
# Before the first fault: the bank approves (pools open, keys cached).
WARM_UP_TIMEOUT_S = 60
POLL_INTERVAL_S = 0.1
COMMAND_TIMEOUT_S = 300           # each `hdfpay` check command
JOURNAL_FILE = "journal.jsonl"
RESULTS_FILE = "results.json"


def option_problem(options: ChaosOptions) -> str | None:
    if not 1 <= options.seconds <= MAX_SECONDS:
        return f"--seconds must be between 1 and {MAX_SECONDS}"
    if not 1 <= options.terminals <= MAX_BENCH_TERMINALS:
        return f"--terminals must be between 1 and {MAX_BENCH_TERMINALS}"
    if not 2 <= options.workers <= MAX_WORKERS:
        return f"--workers must be between 2 and {MAX_WORKERS} (one is killed at a time)"
    if options.cards < MIN_CARDS:
        return f"--cards must be at least {MIN_CARDS}"
    unknown = set(options.faults) - set(ALL_FAULT_KINDS)
    if unknown or not options.faults:
        return f"--faults takes some of {','.join(ALL_FAULT_KINDS)}"
    return None


def run_chaos(options: ChaosOptions) -> int:
    """0 when every property held, 1 when one failed, 2 on bad options."""
    problem = option_problem(options)
    if problem:
        print(f"hdfpay: error: chaos: {problem}", file=sys.stderr)
        return 2
    output = Path(options.output).resolve()
    output.mkdir(parents=True, exist_ok=True)
    (output / JOURNAL_FILE).unlink(missing_ok=True)      # an earlier run's terminals
    run = ChaosRun(options)
    with throwaway_workdir("chaos") as workdir:
        try:
            uvloop.run(_run(run, workdir, output))
        except (HaClusterError, RuntimeError, OSError) as exc:
            run.problems.append(f"the run stopped: {exc}")
            print(f"hdfpay: error: chaos: {exc}", file=sys.stderr)
        finally:
            _keep_logs(workdir, output)
    if run.bank is not None:
        write_results(run, output / RESULTS_FILE)
    return 1 if run.problems else 0


async def _run(run: ChaosRun, workdir: Path, output: Path) -> None:
    options = run.options
    bank = run.bank = await open_bank(workdir, options.terminals, options.cards,
                                      options.business_time)
    leader_first = await asyncio.to_thread(bank.cluster.leader)
    print(f"HA cluster: leader {leader_first}, {bank.dsn}; {len(bank.cards)} cards, business day "
          f"{bank.business_time:%d/%m/%Y}; {options.terminals} terminals, {options.workers} "
          f"workers, seed {options.seed}, faults {','.join(options.faults)}", flush=True)
    run.commands["seal before"] = await _hdfpay(bank, "ledger", "seal")
    journal, operator = TillJournal(output / JOURNAL_FILE), AuditWriter(bank.dsn)
    try:
        async with serving(bank, options.workers):
            await _sell_under_faults(run, bank, journal, operator)
    finally:
        journal.close()
    try:
        leader_last, _ = await asyncio.to_thread(bank.cluster.wait_ready, CLUSTER_READY_TIMEOUT_S)
        writable = True
    except HaClusterError as exc:      # the books can still be read on the leader, if any
        run.problems.append(f"the cluster did not recover: {exc}")
        leader_last, writable = await asyncio.to_thread(bank.cluster.leader), False
    run.leaders = (leader_first, leader_last)
    async with connection(bank.dsn) as conn:       # whichever node is the primary now
        ledger = await read_ledger(conn, bank.terminals, bank.cards, bank.school_year)
        audit_counts, audit_lost = await audit_problems(conn, operator)
    run.counts, problems = bank_problems(replay(output / JOURNAL_FILE), ledger,
                                         bank.balances_before)
    run.counts.update(audit_counts)
    run.problems += problems + audit_lost
    for name, args in (("seal after", ("ledger", "seal")), ("check", ("check",)),
                       ("audit verify", ("audit", "verify"))):
        if writable or name != "seal after":     # a seal is a write: it would wait for ever
            run.commands[name] = await _hdfpay(bank, *args)
    run.problems += [f"hdfpay {name} exited {code}: {tail}"
                     for name, (code, tail) in run.commands.items() if code != 0]
    run.problems += [f"fault {f.kind}: {f.error}" for f in run.faults if f.error]
    run.problems += [f"answer outside the protocol's expectations: {text}"
                     for text in run.tally.odd]
    print_report(run)


async def _sell_under_faults(run: ChaosRun, bank: ChaosBank, journal: TillJournal,
                             operator: AuditWriter) -> None:
    """The terminals sell and an operator audits while the nemesis works; then the terminals
    settle what they owe."""
    options, pulse = run.options, Pulse()
    earlier = replay(journal.path)    # empty for a fresh run; a restarted driver's debts
    keys = load_terminal_keys(bank.keys.key_file, bank.terminals, 0)
    clients = [TerminalClient(bank.url, t, k) for t, k in zip(bank.terminals, keys)]
    selling_ends = asyncio.Event()
    for client in clients:
        await client.__aenter__()
    tasks = [asyncio.create_task(ChaosTill(
        client, journal, bank.cards, random.Random(f"{options.seed}:{client.terminal_id}"),
        options.think_ms / 1000, pulse, run.tally, earlier.owed_by(client.terminal_id)
    ).run(selling_ends)) for client in clients]
    auditing = asyncio.create_task(operator.run(selling_ends))
    started = time.monotonic()
    try:
        async with asyncio.timeout(WARM_UP_TIMEOUT_S):
            while pulse.first_approval_after(started - 1) is None:
                await asyncio.sleep(POLL_INTERVAL_S)
        nemesis = Nemesis(bank.cluster, bank.supervisor_pid,
                          lambda: workers_ready(bank, options.workers), pulse,
                          random.Random(options.seed), options.faults, started)
        run.faults = await nemesis.run(started + options.seconds)
    finally:
        selling_ends.set()
        run.selling_s = time.monotonic() - started
        done, pending = await asyncio.wait([*tasks, auditing], timeout=SETTLE_TIMEOUT_S)
        run.settle_s = time.monotonic() - started - run.selling_s
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        for client in clients:
            await client.__aexit__(None, None, None)
    run.problems += [f"a terminal failed: {t.exception()!r}" for t in done if t.exception()]


async def _hdfpay(bank: ChaosBank, *args: str) -> tuple[int, str]:
    """An operator's command against the bank (the multi-host DSN): exit code, last lines."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hdfpay", *args, env=bank.command_env(),
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    try:
        async with asyncio.timeout(COMMAND_TIMEOUT_S):
            out, _ = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        return -1, f"no answer within {COMMAND_TIMEOUT_S} s"
    lines = out.decode(errors="replace").strip().splitlines()
    return process.returncode, " | ".join(lines[-3:])


def _keep_logs(workdir: Path, output: Path) -> None:
    """The server's, Patroni's and etcd's logs outlive the throwaway directory (no key or card
    UID is ever logged), for whoever reads a failed run."""
    ha = workdir / THROWAWAY_HA_DIR
    for source, name in ((workdir / SERVER_LOG, SERVER_LOG), (ha / "n1" / "patroni.log", "n1.log"),
                         (ha / "n2" / "patroni.log", "n2.log"), (ha / "etcd" / "etcd.log", "etcd.log")):
        if source.exists():
            shutil.copyfile(source, output / name)
