"""Open-loop load for `hdfpay bench`: purchases arrive at a fixed rate, whether or not the server
keeps up, as cashiers' customers do.

A closed loop (loadtest.bench_load's workers) sends the next request when the last is answered:
when the server slows down, the load slows down with it and the requests that would have waited
are never sent (coordinated omission). Here request i is due at start + i / rate; a free terminal
takes the oldest due request (a terminal has one message in flight at a time), and its latency
counts from when it was due, so time spent waiting for a free terminal counts as the cashier
would feel it.
"""

from __future__ import annotations

import asyncio
import math
import time

from loadtest.reversal_duty import sell
from terminal_protocol.client import TerminalClient

# The scheduler wakes for each due request; it never sleeps less than this (asyncio timers are
# about a millisecond coarse: requests due within it leave together, their lateness counted).
MIN_SLEEP_S = 0.0005
# Requests due but not yet taken by a terminal; beyond it the run is overloaded: it stops
# scheduling rather than hold an unbounded backlog, and says so.
MAX_BACKLOG_REQUESTS = 100_000


def due_offsets_s(rate_per_s: float, seconds: float) -> list[float]:
    """When each request is due, in seconds from the start: i / rate for every i with
    i / rate < seconds (so rate × seconds requests, rounded up)."""
    if rate_per_s <= 0 or seconds <= 0:
        raise ValueError("an open-loop run needs a positive rate and duration")
    count = math.ceil(rate_per_s * seconds - 1e-9)  # 1e-9: float noise (10.0 × 0.1 s)
    return [i / rate_per_s for i in range(count)]


def rates_at(fractions: tuple[float, ...], maximum_tps: float) -> list[float]:
    """The open-loop rates: each fraction of the measured maximum, at least one request a
    second."""
    return [max(1.0, round(maximum_tps * f, 1)) for f in fractions]


async def run_open_loop(clients: list[TerminalClient], next_purchase, rate_per_s: float,
                        seconds: float, bound_s: float, owed_grace_s: float = 0.0) -> dict:
    """Send purchases at `rate_per_s` for `seconds` through `clients` (one terminal each).
    `next_purchase(i)` gives request i's (uid, amount, request id). Latencies are from each
    request's due time; 'queue' is how long it waited for a free terminal. A purchase without a
    trustworthy answer is reversed until answered (loadtest.reversal_duty), at most
    `owed_grace_s` past the run's time; what is still unanswered then is counted as owed."""
    due = due_offsets_s(rate_per_s, seconds)
    backlog: asyncio.Queue = asyncio.Queue()
    latencies_ms: list[tuple[str, float]] = []
    queued_ms: list[float] = []
    codes: dict[str, int] = {}
    reversals: dict[str, int] = {}
    owed = 0
    overloaded = False
    give_up_at = time.monotonic() + seconds + owed_grace_s

    async def terminal(client: TerminalClient) -> None:
        nonlocal owed
        while (item := await backlog.get()) is not None:
            i, due_at = item
            queued_ms.append((time.perf_counter() - due_at) * 1000)
            uid, amount, request_id = next_purchase(i)
            sale = await sell(client, uid, amount, request_id, give_up_at)
            codes[sale.outcome] = codes.get(sale.outcome, 0) + 1
            if sale.answer is not None:
                latencies_ms.append((sale.answer.rc, (sale.answered_at - due_at) * 1000))
            if sale.reversal is not None:
                reversals[sale.reversal.rc] = reversals.get(sale.reversal.rc, 0) + 1
            owed += sale.owed

    workers = [asyncio.create_task(terminal(c)) for c in clients]
    started = time.perf_counter()
    async with asyncio.timeout(bound_s):
        for i, offset in enumerate(due):
            delay = started + offset - time.perf_counter()
            if delay >= MIN_SLEEP_S:
                await asyncio.sleep(delay)
            if backlog.qsize() >= MAX_BACKLOG_REQUESTS:
                overloaded = True
                break
            backlog.put_nowait((i, started + offset))
        for _ in workers:
            backlog.put_nowait(None)
        await asyncio.gather(*workers)
    return {"latencies": latencies_ms, "queued_ms": queued_ms, "codes": codes,
            "scheduled": len(due), "seconds": round(time.perf_counter() - started, 3),
            "overloaded": overloaded, "reversals": dict(sorted(reversals.items())), "owed": owed}
