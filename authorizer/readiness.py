"""/readyz: send traffic here? Yes while the database answers and the server is not draining."""

from __future__ import annotations

import asyncpg
from aiohttp import web

from authorizer.metrics import Metrics
from ledger.database import ping

READINESS_PROBE_TIMEOUT_S = 1.0


class Readiness:
    def __init__(self, pool: asyncpg.Pool, metrics: Metrics) -> None:
        self._pool = pool
        self._metrics = metrics
        self.draining = False

    def start_draining(self) -> None:
        """On SIGTERM: from now on /readyz says no, while in-flight requests finish."""
        self.draining = True
        self._metrics.draining.set(1)

    async def handle(self, _: web.Request) -> web.Response:
        if self.draining:
            return web.json_response({"ready": False, "reason": "draining"}, status=503)
        try:
            await ping(self._pool, READINESS_PROBE_TIMEOUT_S)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            return web.json_response({"ready": False, "reason": f"database: {type(exc).__name__}"},
                                     status=503)
        return web.json_response({"ready": True})
