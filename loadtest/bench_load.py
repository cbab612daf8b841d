"""The load generator of `hdfpay bench`: terminals buying through the real HTTP protocol.

A process of its own so that its CPU is not the server's: `concurrency` workers share one aiohttp
session (one keep-alive connection each) and loop on purchases until the deadline, each as a
terminal of its own (worker w is the w-th terminal given). With --keys, each worker signs its
requests with its terminal's AES-DUKPT key (the TR-31 blocks of loadtest.bench_keys), counters
starting above --counter-start; without, requests go unsigned (a server run with
HDFPAY_TERMINAL_AUTHENTICATION=none). Prints one JSON line: requests, seconds, tps, latency
percentiles and the count of each response code.

    python -m loadtest.bench_load --url http://127.0.0.1:8080 --seconds 10 --concurrency 16
        --cards 100000 --terminals BENCH-E2E-0001,... --request-prefix e2e1
        --keys /tmp/hdfpay-bench-x/terminal-keys.json --counter-start 16777216

Beside it, what else the benchmark sends and measures: the baseline's load (a pgbench script making
the server's SQL call on the same mix, both drawn from the one definition of the mix below), how to
read pgbench's figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import re
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import uvloop

from loadtest.bench_keys import load_terminal_keys
from loadtest.load_process import client_memory, collector_paused, open_connections
from loadtest.open_loop import run_open_loop
from loadtest.reversal_duty import Sale, sell
from ledger.demo_region import NO_RIGHTS_EVERY, OPPOSITION_EVERY, card_uid
from terminal_protocol.client import TERMINAL_TIMEOUT_MS, TerminalClient
from terminal_protocol.response_codes import APPROVED_CODES

# Beneficiary numbers whose card is opposed (lost, stolen, damaged): i % OPPOSITION_EVERY.
OPPOSED_REMAINDERS = (1, 2, 3)
# Small purchases: a 10 s run on 100,000 cards never empties a 100 € wallet (no partial approval).
BENCH_AMOUNT_CENTS_MIN = 1
BENCH_AMOUNT_CENTS_MAX = 500
# Beyond deadline + one request timeout, a run that has not finished is abandoned.
RUN_OVERRUN_GRACE_S = 5.0
# A purchase without a trustworthy answer is reversed until the reversal is answered
# (loadtest.reversal_duty); past the deadline, for this long at most, then it is reported owed.
OWED_GRACE_S = 15.0
# The server's answer when a card has MAX_IN_FLIGHT_PER_CARD purchases in flight already.
CARD_BUSY = "91"
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")
# pgbench has no loop: a declined card number is re-drawn this many times, then replaced by the
# first approvable card (a 0.05^7 chance, so the draw stays uniform for all practical purposes).
PGBENCH_REDRAWS = 6
PGBENCH_THREADS_MAX = 2
PGBENCH_QUERY_MODE = "prepared"       # like the server, whose asyncpg statements are prepared
PGBENCH_TPS_LINE = re.compile(r"tps = ([0-9.]+) \(without initial connection time\)")


class BenchError(RuntimeError):
    """A step of the benchmark failed; the message says which and why."""


def approvable(number: int) -> bool:
    """Whether demo beneficiary `number` is approved: rights this year and an active card."""
    return number % NO_RIGHTS_EVERY != 0 and number % OPPOSITION_EVERY not in OPPOSED_REMAINDERS


def first_approvable(count: int) -> list[int]:
    """The `count` lowest approvable beneficiary numbers (the hot cards)."""
    numbers: list[int] = []
    candidate = 1
    while len(numbers) < count:
        if approvable(candidate):
            numbers.append(candidate)
        candidate += 1
    return numbers


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending list (0.0 when empty): a value that was observed."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(len(sorted_values) * fraction - 1e-9))  # 1e-9: float noise
    return sorted_values[rank - 1]


def latency_summary(latencies_ms: list[float], prefix: str = "") -> dict:
    """p50, p99, p99.9 and max in milliseconds, rounded to the microsecond."""
    ordered = sorted(latencies_ms)
    return {f"{prefix}p50_ms": round(percentile(ordered, 0.50), 3),
            f"{prefix}p99_ms": round(percentile(ordered, 0.99), 3),
            f"{prefix}p999_ms": round(percentile(ordered, 0.999), 3),
            f"{prefix}max_ms": round(ordered[-1], 3) if ordered else 0.0}


def answers_summary(answered: list[tuple[str, float]], codes: dict, elapsed_s: float) -> dict:
    """What a run's answers say: tps and latencies of every answer, and of the approvals alone
    (a hot card's 91 "card busy" comes back at once: counted apart, it would flatter the
    percentiles), the count of each response code."""
    approved_ms = [ms for rc, ms in answered if rc in APPROVED_CODES]
    return {"answered": len(answered), "seconds": round(elapsed_s, 3),
            "tps": round(len(answered) / elapsed_s, 1) if elapsed_s else 0.0,
            **latency_summary([ms for _, ms in answered]),
            "approved": len(approved_ms),
            "approved_tps": round(len(approved_ms) / elapsed_s, 1) if elapsed_s else 0.0,
            **latency_summary(approved_ms, "approved_"),
            "card_busy": codes.get(CARD_BUSY, 0),
            "rc": dict(sorted(codes.items()))}


class CardPicker:
    """Uniform choice among approvable cards 1..cards, or among an explicit list (hot cards)."""

    def __init__(self, cards: int, hot_numbers: list[int] | None, rng: random.Random) -> None:
        self._cards = cards
        self._hot = hot_numbers
        self._rng = rng

    def next_uid(self) -> bytes:
        if self._hot:
            return card_uid(self._rng.choice(self._hot))
        while True:  # rejection sampling keeps the choice uniform over approvable cards
            number = self._rng.randint(1, self._cards)
            if approvable(number):
                return card_uid(number)


@dataclass
class Tally:
    """What the workers saw: (code, latency) per answered request, one count per outcome, the
    reversals' answers, the reversals still unanswered at the end (money owed: should be 0)."""
    answered: list[tuple[str, float]] = field(default_factory=list)
    codes: Counter = field(default_factory=Counter)
    reversals: Counter = field(default_factory=Counter)
    owed: int = 0

    def count(self, sale: Sale, started: float) -> None:
        """A sale's outcome; its latency is the purchase's alone (from `started`)."""
        self.codes[sale.outcome] += 1
        if sale.answer is not None:
            self.answered.append((sale.answer.rc, (sale.answered_at - started) * 1000))
        if sale.reversal is not None:
            self.reversals[sale.reversal.rc] += 1
        self.owed += sale.owed


async def _worker(client: TerminalClient, picker: CardPicker, rng: random.Random, prefix: str,
                  worker: int, amounts: tuple[int, int], deadline: float, tally: Tally) -> None:
    """One terminal buying back to back: the next request leaves when the last one is answered,
    and its reversal too when it needed one (no answer, 91, 96)."""
    sequence = 0
    give_up_at = time.monotonic() + (deadline - time.perf_counter()) + OWED_GRACE_S
    while time.perf_counter() < deadline:
        sequence += 1
        request_id = f"{prefix}-{worker:04d}-{sequence:010d}"  # unique per run, findable in the DB
        uid = picker.next_uid()
        amount = rng.randint(*amounts)
        started = time.perf_counter()
        tally.count(await sell(client, uid, amount, request_id, give_up_at), started)


async def run_load(args: argparse.Namespace) -> dict:
    """Run the workers until the deadline; every worker finishes the request it has in flight."""
    hot = [int(n) for n in args.hot_cards.split(",")] if args.hot_cards else None
    terminals = args.terminals.split(",")[:args.concurrency]
    keys = load_terminal_keys(args.keys, terminals, args.counter_start) if args.keys else \
        [None] * len(terminals)
    tally = Tally()
    connector = aiohttp.TCPConnector(limit=args.concurrency, limit_per_host=args.concurrency,
                                     keepalive_timeout=args.seconds + RUN_OVERRUN_GRACE_S)
    async with aiohttp.ClientSession(connector=connector) as session:
        clients = [TerminalClient(args.url, terminals[w], keys[w], session=session,
                                  timeout_ms=args.timeout_ms) for w in range(args.concurrency)]
        rngs = [random.Random(args.seed * 1_000_003 + w) for w in range(args.concurrency)]
        await open_connections(session, args.url, args.concurrency)
        if args.rate:
            with collector_paused():
                return {**await _open_loop(args, clients, CardPicker(args.cards, hot, rngs[0]),
                                           rngs[0]), **client_memory()}
        cpu_started = time.process_time()
        started = time.perf_counter()
        deadline = started + args.seconds
        workers = [_worker(clients[w], CardPicker(args.cards, hot, rngs[w]), rngs[w],
                           args.request_prefix, w, (args.amount_min, args.amount_max),
                           deadline, tally) for w in range(args.concurrency)]
        with collector_paused():
            async with asyncio.timeout(_bound_s(args)):
                await asyncio.gather(*workers)
        elapsed = time.perf_counter() - started
        cpu_s = time.process_time() - cpu_started
    requests = len(tally.answered) + sum(n for code, n in tally.codes.items()
                                         if not code[:1].isdigit())
    return {"requests": requests, **answers_summary(tally.answered, tally.codes, elapsed),
            "reversals": dict(sorted(tally.reversals.items())), "owed": tally.owed,
            "client_cpu_s": round(cpu_s, 2), **client_memory()}


def _bound_s(args: argparse.Namespace) -> float:
    """The whole run's bound: its time, a request in flight, reversals owed, a margin."""
    return args.seconds + args.timeout_ms / 1000 + OWED_GRACE_S + RUN_OVERRUN_GRACE_S


async def _open_loop(args: argparse.Namespace, clients: list[TerminalClient], picker: CardPicker,
                     rng: random.Random) -> dict:
    """Purchases at --rate a second through the terminals given (loadtest.open_loop);
    latencies from each request's due time."""
    def next_purchase(i: int) -> tuple[bytes, int, str]:
        return (picker.next_uid(), rng.randint(args.amount_min, args.amount_max),
                f"{args.request_prefix}-due-{i:010d}")
    cpu_started = time.process_time()
    done = await run_open_loop(clients, next_purchase, args.rate, args.seconds, _bound_s(args),
                               OWED_GRACE_S)
    cpu_s = time.process_time() - cpu_started
    requests = len(done["latencies"]) + sum(n for code, n in done["codes"].items()
                                            if not code[:1].isdigit())
    return {"requests": requests, "rate": args.rate, "scheduled": done["scheduled"],
            "overloaded": done["overloaded"],
            **answers_summary(done["latencies"], done["codes"], done["seconds"]),
            **latency_summary(done["queued_ms"], "queued_"), "reversals": done["reversals"],
            "owed": done["owed"], "client_cpu_s": round(cpu_s, 2)}


def card_draw(cards: int, hot_cards: list[int] | None) -> list[str]:
    """pgbench lines setting :n, the beneficiary number of the card, as the load generator
    draws it: uniform over approvable cards 1..cards, or over the hot cards."""
    # OPPOSED_REMAINDERS are consecutive: a range test says "opposed".
    low, high = min(OPPOSED_REMAINDERS), max(OPPOSED_REMAINDERS)
    declined = (f"(:n % {NO_RIGHTS_EVERY} = 0"
                f" or (:n % {OPPOSITION_EVERY} >= {low} and :n % {OPPOSITION_EVERY} <= {high}))")
    if hot_cards:
        cases = " ".join(f"when :h = {i} then {n}" for i, n in enumerate(hot_cards, start=1))
        return [f"\\set h random(1, {len(hot_cards)})", f"\\set n case {cases} end"]
    redraw = f"\\set n case when {declined} then random(1, {cards}) else :n end"
    return [f"\\set n random(1, {cards})", *[redraw] * PGBENCH_REDRAWS,
            f"\\set n case when {declined} then {first_approvable(1)[0]} else :n end"]


def pgbench_script(tag: str, cards: int, hot_cards: list[int] | None, terminals: list[str],
                   key_ids: list[bytes] | None = None,
                   counter_start: int = 0) -> str:
    """The server's SQL call, verbatim, on the load generator's mix: approvable cards drawn
    uniformly (or hot cards), small amounts; client k is the k-th terminal, as a load worker is.
    Request ids '<tag>-<client>-<n>' (n counts per client, -D cnt=0) are unique and let the
    database count what pgbench did. With `key_ids` (the terminals' initial key ids), each call
    carries its client's key and counter counter_start + n, strictly increasing per client since
    a client's transactions are sequential: the database checks the KSN as for a MAC'd message.
    Without, NULL, NULL: what a server run with HDFPAY_TERMINAL_AUTHENTICATION=none passes."""
    draw = card_draw(cards, hot_cards)
    listed = ", ".join(f"'{t}'" for t in terminals)
    if key_ids:
        keyed = ", ".join(f"'\\x{key_id.hex()}'::bytea" for key_id in key_ids)
        ksn, counter = f"(ARRAY[{keyed}])[:t], :ksn", [f"\\set ksn {counter_start} + :cnt"]
    else:
        ksn, counter = "NULL::bytea, NULL::bigint", []
    return "\n".join([
        "\\set cnt :cnt + 1", *draw, "\\set t :client_id + 1", *counter,
        f"\\set amount random({BENCH_AMOUNT_CENTS_MIN}, {BENCH_AMOUNT_CENTS_MAX})",
        "\\set stan random(0, 999999)",
        f"SELECT authorize_purchase((ARRAY[{listed}])[:t], '{tag}-' || :client_id || '-' || :cnt,"
        " '\\x00'::bytea, :stan, '\\x04'::bytea || substring(int8send(:n::bigint) FROM 3),"
        f" :amount, localtimestamp, true, {ksn});", ""])


def run_pgbench(pgbench: Path, dsn: str, base: Path, script: str, concurrency: int,
                seconds: int, timeout_s: float) -> dict:
    """Run a script for `seconds`. tps as pgbench reports it; percentiles from its per-transaction
    logs (the third column is the latency in µs), so that they are real percentiles."""
    script_path = base.with_suffix(".sql")
    script_path.write_text(script)
    output = run_tool([str(pgbench), "-n", "-M", PGBENCH_QUERY_MODE, "-c", str(concurrency),
                       "-j", str(min(concurrency, PGBENCH_THREADS_MAX)), "-T", str(seconds),
                       "-D", "cnt=0", "-f", str(script_path), "--log",
                       f"--log-prefix={base}-log", dsn], timeout_s)
    if not (match := PGBENCH_TPS_LINE.search(output)):
        raise BenchError(f"no tps line in pgbench's output:\n{output[-2000:]}")
    latencies_ms = [int(fields[2]) / 1000 for log in base.parent.glob(f"{base.name}-log.*")
                    for fields in map(str.split, log.read_text().splitlines())
                    if len(fields) > 2 and fields[2].isdigit()]
    return {"transactions": len(latencies_ms), "tps": float(match.group(1)),
            **latency_summary(latencies_ms)}


def run_tool(argv: list[str], timeout_s: float) -> str:
    """Run a measuring tool to completion, bounded; its stdout, or BenchError saying why not."""
    name = argv[2] if argv[1:2] == ["-m"] else Path(argv[0]).name
    try:
        done = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                              timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{name} did not finish within {timeout_s:.0f} s") from None
    if done.returncode != 0:
        raise BenchError(f"{name} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return done.stdout


def run_e2e(url: str, tag: str, seconds: int, concurrency: int, terminals: list[str], cards: int,
            hot_cards: list[int] | None, seed: int, timeout_s: float,
            keys: tuple[Path, int] | None = None, rate: float = 0.0) -> dict:
    """This module as a process of its own (its CPU is not the server's); what it printed.
    `keys`: (key file, counter start) to sign the requests; None sends them unsigned. `rate`:
    open loop at that many purchases a second over the `concurrency` terminals."""
    selection = ["--hot-cards", ",".join(map(str, hot_cards))] if hot_cards else \
        ["--cards", str(cards)]
    signing = ["--keys", str(keys[0]), "--counter-start", str(keys[1])] if keys else []
    out = run_tool([sys.executable, "-m", "loadtest.bench_load", "--url", url,
                    "--seconds", str(seconds), "--concurrency", str(concurrency),
                    "--terminals", ",".join(terminals), "--request-prefix", tag,
                    "--seed", str(seed), *selection, *signing,
                    *(["--rate", str(rate)] if rate else [])], timeout_s)
    return {"tag": tag, **json.loads(out.strip().splitlines()[-1])}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench_load", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", required=True, help="server base URL (loopback)")
    parser.add_argument("--seconds", type=float, required=True, help="run duration")
    parser.add_argument("--concurrency", type=int, required=True, help="concurrent terminals")
    parser.add_argument("--terminals", required=True,
                        help="comma-separated active terminal ids, one per worker")
    parser.add_argument("--keys", help="JSON file of the terminals' TR-31 key blocks and transport "
                                       "keys (loadtest.bench_keys): sign the requests")
    parser.add_argument("--counter-start", type=int, default=0,
                        help="with --keys: KSN counters start above this (above earlier runs')")
    parser.add_argument("--cards", type=int, help="demo cards 1..N (declined ones are skipped)")
    parser.add_argument("--hot-cards", help="comma-separated beneficiary numbers, not --cards")
    parser.add_argument("--request-prefix", default="e2e", help="request id prefix, unique per run")
    parser.add_argument("--amount-min", type=int, default=BENCH_AMOUNT_CENTS_MIN)
    parser.add_argument("--amount-max", type=int, default=BENCH_AMOUNT_CENTS_MAX)
    parser.add_argument("--timeout-ms", type=int, default=TERMINAL_TIMEOUT_MS,
                        help="per-request timeout")
    parser.add_argument("--seed", type=int, default=1, help="random seed (cards and amounts)")
    parser.add_argument("--rate", type=float, default=0.0,
                        help="open loop: purchases a second, due at fixed times, latency from "
                             "when each was due (loadtest.open_loop); 0: closed loop")
    args = parser.parse_args(argv)
    if not args.cards and not args.hot_cards:
        parser.error("give --cards or --hot-cards")
    if urlsplit(args.url).hostname not in LOOPBACK_HOSTS:
        parser.error("the benchmark load goes to a loopback address only")
    if args.concurrency < 1 or args.seconds <= 0 or not 1 <= args.amount_min <= args.amount_max \
            or args.rate < 0:
        parser.error("need concurrency >= 1, seconds > 0, rate >= 0 and "
                     "1 <= amount-min <= amount-max")
    if args.concurrency > len(args.terminals.split(",")):
        parser.error("one terminal per worker: a terminal has one message in flight at a time")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(json.dumps(uvloop.run(run_load(args))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
