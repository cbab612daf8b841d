"""`python -m loadtest bench|loadtest|fuzz|chaos …`, which `hdfpay bench`, `hdfpay loadtest`,
`hdfpay fuzz` and `hdfpay chaos` run in a process of their own: the composition root never imports loadtest, and locust's gevent patching
never reaches the CLI."""

from __future__ import annotations

import argparse
import datetime as dt
import sys

from hdfpay.cli_support import concurrency_list, stop_on_sigterm, whole_number
from hdfpay.config import ConfigError, Settings

SCENARIO_NAMES = ["peak", "students", "hot-card", "reversal-storm", "decline-mix"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hdfpay", description="benchmarks and load tests")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("bench", help="end-to-end authorization benchmark beside pgbench")
    p.add_argument("--cards", type=whole_number, default=100_000, help="cards to seed (default 100000)")
    p.add_argument("--seconds", type=whole_number, default=10,
                   help="duration of each measured run (whole seconds)")
    p.add_argument("--concurrency", type=concurrency_list, default=[1, 16, 64],
                   help="comma-separated client concurrencies (default 1,16,64)")
    p.add_argument("--output", default="bench-results.json", help="JSON results file")

    p = sub.add_parser("loadtest", help="a locust scenario (peak, students, hot-card, reversal-storm, "
                                        "decline-mix) on a throwaway database, then the ledger checked")
    p.add_argument("scenario", choices=SCENARIO_NAMES)
    p.add_argument("--users", type=whole_number, default=10,
                   help="locust users, one terminal each (default 10)")
    p.add_argument("--seconds", type=whole_number, default=30, help="run time (default 30)")
    p.add_argument("--cards", type=whole_number, default=100_000, help="cards to seed (default 100000)")
    p.add_argument("--think-ms", type=whole_number, default=0,
                   help="a cashier's mean pause between sales (default 0: back to back)")
    p.add_argument("--output", default="loadtest-results",
                   help="directory for locust's CSV and HTML report (default ./loadtest-results)")

    p = sub.add_parser("fuzz", help="generated and mutated terminal messages against the codec and "
                                    "a server on a throwaway database: 0 crashes, hangs, debits")
    p.add_argument("--messages", type=whole_number, default=10_000,
                   help="messages to the server, and as many to the codec alone (default 10000)")
    p.add_argument("--seed", type=whole_number, default=15, help="random seed (default 15)")
    p.add_argument("--output", default="fuzz-results.json", help="JSON results file")
    p.add_argument("--corpus", default=None,
                   help="directory to write the inputs that broke a rule, and a few refused ones")

    p = sub.add_parser("chaos", help="a bank test under faults: terminals selling on an HA cluster "
                                     "while workers, the primary and etcd are killed, paused and "
                                     "restarted; then every approval checked in the ledger")
    p.add_argument("--seconds", type=whole_number, default=60,
                   help="how long the faults go on (the first round, each kind once, is always "
                        "whole; default 60)")
    p.add_argument("--terminals", type=whole_number, default=8, help="terminals (default 8)")
    p.add_argument("--workers", type=whole_number, default=2,
                   help="`hdfpay serve --workers` processes (default 2)")
    p.add_argument("--cards", type=whole_number, default=500, help="cards to seed (default 500)")
    p.add_argument("--think-ms", type=whole_number, default=20,
                   help="each terminal's pause between sales (default 20)")
    p.add_argument("--seed", type=whole_number, default=17, help="random seed (default 17)")
    p.add_argument("--faults", type=fault_kinds, default=None,
                   help="comma-separated kinds among kill_worker,pause_primary,kill_primary,"
                        "crash_primary,restart_etcd (the default: all these), and "
                        "pause_primary_long,pause_postgres (beyond Patroni's lease: see "
                        "loadtest/README.md)")
    p.add_argument("--business-time", type=dt.datetime.fromisoformat, default=None,
                   help="the business clock's pinned instant, ISO 8601 with its offset "
                        "(default: now if the wallets are open, else the next rentrée)")
    p.add_argument("--output", default="chaos-results",
                   help="directory for results.json, the terminals' journal and the logs "
                        "(default ./chaos-results)")
    return parser


def fault_kinds(text: str) -> tuple[str, ...]:
    """A comma-separated list of fault kinds (loadtest.nemesis names them)."""
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    if not kinds:
        raise argparse.ArgumentTypeError("at least one fault kind")
    return kinds


def main(argv: list[str] | None = None) -> int:
    stop_on_sigterm()
    args = build_parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"hdfpay: error: {exc}", file=sys.stderr)
        return 2
    try:
        if args.command == "bench":
            from loadtest.bench import run_bench
            from loadtest.bench_plan import BenchOptions
            return run_bench(BenchOptions(cards=args.cards, seconds=args.seconds,
                                          concurrency=args.concurrency, output=args.output), settings)
        if args.command == "chaos":
            return _chaos(args, settings)
        if args.command == "fuzz":
            from loadtest.fuzz import FuzzOptions, run_fuzz
            return run_fuzz(FuzzOptions(messages=args.messages, seed=args.seed, output=args.output,
                                        corpus=args.corpus), settings)
        from loadtest.locust_plan import LoadtestOptions
        from loadtest.locust_runner import run_loadtest
        return run_loadtest(LoadtestOptions(scenario=args.scenario, users=args.users,
                                            seconds=args.seconds, cards=args.cards,
                                            output=args.output, think_ms=args.think_ms), settings)
    except KeyboardInterrupt:
        return 130


def _chaos(args: argparse.Namespace, settings: Settings) -> int:
    from loadtest.chaos import ChaosOptions, run_chaos
    from loadtest.nemesis import FAULT_KINDS
    if args.business_time is not None and args.business_time.tzinfo is None:
        print("hdfpay: error: chaos: --business-time needs its UTC offset", file=sys.stderr)
        return 2
    if settings.database_url:
        print("DATABASE_URL is not used: the chaos run starts its own HA cluster", flush=True)
    return run_chaos(ChaosOptions(
        seconds=args.seconds, terminals=args.terminals, cards=args.cards, workers=args.workers,
        seed=args.seed, think_ms=args.think_ms, faults=args.faults or FAULT_KINDS,
        output=args.output, business_time=args.business_time))


if __name__ == "__main__":
    sys.exit(main())
