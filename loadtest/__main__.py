"""`python -m loadtest bench|loadtest|fuzz …`, which `hdfpay bench`, `hdfpay loadtest` and
`hdfpay fuzz` run in a
process of their own: the composition root never imports loadtest, and locust's gevent patching
never reaches the CLI."""

from __future__ import annotations

import argparse
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
    return parser


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


if __name__ == "__main__":
    sys.exit(main())
