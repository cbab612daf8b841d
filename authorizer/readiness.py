"""/readyz: send traffic here? Yes while the database answers and the server is not draining.

The answer comes within READINESS_PROBE_TIMEOUT_S whatever the database does: the probe (pool
acquire, query, and asyncpg's cancel of a query that timed out, each of which can hang on a
frozen host) runs as its own task that /readyz waits for with a bound, never longer. One probe
at a time: while a probe hangs, later calls wait on that same probe instead of taking more
connections.
"""

from __future__ import annotations

import asyncio

import asyncpg
from aiohttp import web

from authorizer.metrics import Metrics
from ledger.database import ping

READINESS_PROBE_TIMEOUT_S = 1.0


class Readiness:
    def __init__(self, pool: asyncpg.Pool, metrics: Metrics) -> None:
        self._pool = pool
        self._metrics = metrics
        self._probe: asyncio.Task | None = None
        self.draining = False

    def start_draining(self) -> None:
        """On SIGTERM: from now on /readyz says no, while in-flight requests finish."""
        self.draining = True
        self._metrics.draining.set(1)

    async def handle(self, _: web.Request) -> web.Response:
        if self.draining:
            return web.json_response({"ready": False, "reason": "draining"}, status=503)
        try:
            async with asyncio.timeout(READINESS_PROBE_TIMEOUT_S):
                await asyncio.shield(self._current_probe())
        except Exception as exc:        # noqa: BLE001 - any failure of the probe means not ready
            return web.json_response({"ready": False, "reason": f"database: {type(exc).__name__}"},
                                     status=503)
        return web.json_response({"ready": True})

    def _current_probe(self) -> asyncio.Task:
        if self._probe is None or self._probe.done():
            self._probe = asyncio.ensure_future(ping(self._pool, READINESS_PROBE_TIMEOUT_S))
            # Retrieved here, so that a probe finishing after its callers gave up logs nothing.
            self._probe.add_done_callback(lambda t: t.cancelled() or t.exception())
        return self._probe
