"""Requests refused before anybody is proven: counted by reason, logged quietly.

Anyone can send such requests, so each costs a counter increment and, at most once every
REFUSAL_LOG_INTERVAL_S, one warning line saying how many were refused since the last: never a
traceback per request, which let an unauthenticated client fill the disk. HTTP that aiohttp
cannot parse (a negative Content-Length, garbage) is answered in the protocol's JSON too.
"""

from __future__ import annotations

import logging
import time

from aiohttp import web

from authorizer.metrics import Metrics
from terminal_protocol.codec import error_body
from terminal_protocol.transport import JSON_CONTENT_TYPE
from web.http_face import QuietErrorsAppRunner

REFUSAL_LOG_INTERVAL_S = 10.0

log = logging.getLogger("hdfpay.terminal.refusals")


class Refusals:
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._unlogged = 0
        self._last_logged_at: float | None = None

    def refused(self, reason: str, detail: str) -> None:
        """reason: one of metrics.REFUSAL_REASONS; detail: no request content (it is logged)."""
        self._metrics.refused.labels(reason).inc()
        self.log_quietly(reason, detail)

    def log_quietly(self, reason: str, detail: str) -> None:
        """One warning line at most every REFUSAL_LOG_INTERVAL_S, with the count in between."""
        self._unlogged += 1
        now = time.monotonic()
        if self._last_logged_at is None or now - self._last_logged_at >= REFUSAL_LOG_INTERVAL_S:
            log.warning("request refused before authentication (%s): %s; %d refused since the "
                        "last such line", reason, detail, self._unlogged)
            self._unlogged = 0
            self._last_logged_at = now


class TerminalAppRunner(QuietErrorsAppRunner):
    """An AppRunner whose connections answer unparseable HTTP in the protocol's JSON, counted
    and logged quietly by Refusals (web.http_face: never the request's bytes, Server: hdfpay)."""

    def __init__(self, app: web.Application, refusals: Refusals, **kwargs) -> None:
        def answer(status: int, exc: BaseException | None) -> web.Response:
            refusals.refused("malformed_http", type(exc).__name__ if exc else f"HTTP {status}")
            return web.Response(status=status, content_type=JSON_CONTENT_TYPE,
                                body=error_body("30", "malformed HTTP request"))
        super().__init__(app, answer, **kwargs)
