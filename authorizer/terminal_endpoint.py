"""The HTTP face of the authorization pipeline: limits, identity, codec, and clear errors.

Every answer is JSON with a response code; bad input never reaches the ledger and never gets a
500. Overload is answered at once with 91 rather than queued without bound.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from authorizer.pipeline import AuthorizationPipeline
from authorizer.terminal_identity import IdentificationError, TerminalIdentifier
from ledger.authorization_store import LedgerFailure, LedgerUnavailable
from terminal_protocol.codec import MAX_REQUEST_BODY_BYTES, ProtocolError, decode_request, error_body
from terminal_protocol.transport import JSON_CONTENT_TYPE


log = logging.getLogger("hdfpay.terminal")


def _error(status: int, rc: str, detail: str) -> web.Response:
    return web.Response(status=status, body=error_body(rc, detail), content_type=JSON_CONTENT_TYPE)


class TerminalEndpoint:
    def __init__(self, pipeline: AuthorizationPipeline, identifier: TerminalIdentifier, *,
                 max_in_flight_requests: int, request_timeout_ms: int) -> None:
        self._pipeline = pipeline
        self._identifier = identifier
        self._max_in_flight = max_in_flight_requests
        self._request_timeout_s = request_timeout_ms / 1000
        self.in_flight = 0
        self.shed_total = 0

    async def handle(self, request: web.Request) -> web.Response:
        if self.in_flight >= self._max_in_flight:
            self.shed_total += 1
            return _error(503, "91", "server busy, retry later")
        self.in_flight += 1
        try:
            async with asyncio.timeout(self._request_timeout_s):
                return await self._handle(request)
        except TimeoutError:
            return _error(503, "91", "no answer in time")
        finally:
            self.in_flight -= 1

    async def _handle(self, request: web.Request) -> web.Response:
        if request.content_type != JSON_CONTENT_TYPE:
            return _error(415, "30", f"content type must be {JSON_CONTENT_TYPE}")
        if request.content_length is not None and request.content_length > MAX_REQUEST_BODY_BYTES:
            return _error(413, "30", f"body exceeds {MAX_REQUEST_BODY_BYTES} bytes")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _error(413, "30", f"body exceeds {MAX_REQUEST_BODY_BYTES} bytes")
        try:
            terminal_id = self._identifier.identify(request.method, request.path, request.headers, body)
        except IdentificationError as exc:
            return _error(401 if exc.rc == "63" else 400, exc.rc, str(exc))
        try:
            message = decode_request(body)
        except ProtocolError as exc:
            return _error(400, "30", str(exc))
        try:
            answer = await self._pipeline.decide(terminal_id, message)
        except LedgerUnavailable as exc:
            log.warning("ledger unavailable for terminal %s: %s", terminal_id, exc)
            return _error(503, "91", "ledger unavailable, retry later")
        except LedgerFailure as exc:
            log.error("ledger failure for terminal %s: %s", terminal_id, exc)
            return _error(500, "96", "system malfunction")
        return web.Response(body=answer, content_type=JSON_CONTENT_TYPE)
