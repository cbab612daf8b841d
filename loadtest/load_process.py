"""The load generator's process as an instrument: what it does so that a bench run measures the
server and not the load generator itself (loadtest/bench_load.py calls these around each run)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import resource

import aiohttp

HEALTH_PATH = "/healthz"          # the terminal listener's liveness probe: no database, no MAC


async def open_connections(session: aiohttp.ClientSession, url: str, count: int) -> None:
    """Open the terminals' keep-alive connections before the timed window: a shop's terminal
    keeps its connection, and a run whose first half second pays 64 TCP handshakes measured
    that (up to 50 ms at the start of an open-loop run), not the authorizations. All `count`
    requests are in flight at once, so each takes a connection of its own."""
    async def probe() -> None:
        async with session.get(url + HEALTH_PATH) as reply:
            await reply.read()
    await asyncio.gather(*(probe() for _ in range(count)))


@contextlib.contextmanager
def collector_paused():
    """No cyclic garbage collection in the load generator while it measures: a full collection
    stops its event loop for 17-37 ms (measured in the open loop), and every purchase due or in
    flight meanwhile would count the instrument's pause as the server's latency. Real terminals
    do not share one Python process. What the run leaves behind is collected after it; the
    process's peak memory is reported (client_max_rss_mb) to show what the pause cost."""
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.unfreeze()


def client_memory() -> dict:
    """The process's peak resident memory so far, in MB."""
    return {"client_max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                                       1)}
