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
from aiohttp.web_protocol import RequestHandler

from authorizer.metrics import Metrics
from terminal_protocol.codec import error_body
from terminal_protocol.transport import JSON_CONTENT_TYPE

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


class _RefusingRequestHandler(RequestHandler):
    refusals: Refusals

    def handle_error(self, request, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """aiohttp's own error answer (text/plain, after an error-level traceback), in JSON."""
        if status >= 500:
            return super().handle_error(request, status, exc, message)   # a bug: keep its trace
        self.refusals.refused("malformed_http", type(exc).__name__ if exc else f"HTTP {status}")
        if request.writer.output_size > 0:
            raise ConnectionError("an answer was already sent, no room for the error's")
        response = web.Response(status=status, content_type=JSON_CONTENT_TYPE,
                                body=error_body("30", "malformed HTTP request"))
        response.force_close()
        return response


class _RefusingServer(web.Server):
    refusals: Refusals

    def __call__(self) -> RequestHandler:
        handler = _RefusingRequestHandler(self, loop=self._loop, **self._kwargs)
        handler.refusals = self.refusals
        return handler


class TerminalAppRunner(web.AppRunner):
    """An AppRunner whose connections answer unparseable HTTP with Refusals. aiohttp offers no
    public hook for that answer: this overrides its runner's _make_server (the server it builds
    is given our handler class); tests/test_malformed_http.py notices if aiohttp changes it."""

    def __init__(self, app: web.Application, refusals: Refusals, **kwargs) -> None:
        super().__init__(app, **kwargs)
        self._refusals = refusals

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _RefusingServer
        server.refusals = self._refusals
        return server
