"""The HTTP face of the authorization pipeline: limits, authentication, codec, clear errors.

Every answer is JSON with a response code; bad input never reaches the ledger and never gets a
500. Overload is answered at once with 91 rather than queued without bound. The request is
authenticated before its content is parsed, and every answer to an authenticated request carries
the server's MAC. A purchase answered 91 or 96 is voided by the server once answered
(authorizer/server_voids.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import traceback
from pathlib import Path
from typing import NamedTuple

import msgspec

from aiohttp import web

from authorizer.card_gate import MAX_IN_FLIGHT_PER_CARD, CardGate
from authorizer.http_refusals import Refusals
from authorizer.metrics import Metrics
from authorizer.outcomes import OutcomeRecorder
from authorizer.pipeline import AuthorizationPipeline
from authorizer.server_voids import ServerVoids
from authorizer.terminal_authentication import (
    Authenticated, AuthenticationError, TerminalAuthenticator,
)
from ledger.authorization_store import CallProgress, LedgerFailure, LedgerUnavailable
from terminal_protocol.codec import (MAX_REQUEST_BODY_BYTES, ProtocolError, decode_request,
                                     error_body, request_fingerprint)
from terminal_protocol.messages import Purchase, Request
from terminal_protocol.response_codes import APPROVED_CODES
from terminal_protocol.transport import JSON_CONTENT_TYPE


log = logging.getLogger("hdfpay.terminal")


class _Decided(NamedTuple):
    message: Request | None
    status: int
    answer: bytes
    # Undecided (91, 96): whether the ledger call may have committed all the same. None: decided.
    may_have_committed: bool | None = None


class _Code(msgspec.Struct):
    rc: str


_code = msgspec.json.Decoder(_Code)


def _where(exc: BaseException) -> str:
    """The exception's type and the line that raised it: enough to find the bug, and no message
    text, which may quote a request's values (a card UID) back."""
    frames = traceback.extract_tb(exc.__traceback__)
    place = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
    return f"{type(exc).__name__}{place}"


def _error(status: int, rc: str, detail: str) -> web.Response:
    return web.Response(status=status, body=error_body(rc, detail), content_type=JSON_CONTENT_TYPE)


def _answer(status: int, body: bytes, headers: dict[str, str]) -> web.Response:
    return web.Response(status=status, body=body, content_type=JSON_CONTENT_TYPE, headers=headers)


class TerminalEndpoint:
    def __init__(self, pipeline: AuthorizationPipeline, authenticator: TerminalAuthenticator,
                 metrics: Metrics, recorder: OutcomeRecorder, refusals: Refusals,
                 voids: ServerVoids, *, max_in_flight_requests: int, request_timeout_ms: int,
                 max_in_flight_per_card: int = MAX_IN_FLIGHT_PER_CARD) -> None:
        self._pipeline = pipeline
        self._voids = voids
        self._authenticator = authenticator
        self._metrics = metrics
        self._recorder = recorder
        self._refusals = refusals
        self._max_in_flight = max_in_flight_requests
        self._request_timeout_s = request_timeout_ms / 1000
        self._card_gate = CardGate(max_in_flight_per_card)
        self.in_flight = 0
        metrics.in_flight.set_function(lambda: self.in_flight)

    async def handle(self, request: web.Request) -> web.Response:
        if self.in_flight >= self._max_in_flight:
            self._metrics.shed.inc()
            return _error(503, "91", "server busy, retry later")
        self.in_flight += 1
        started = asyncio.get_running_loop().time()
        deadline = started + self._request_timeout_s
        try:
            try:
                async with asyncio.timeout_at(deadline):
                    received = await self._receive(request)
            except TimeoutError:
                self._refusals.refused("timeout", "no body in time")
                return _error(503, "91", "no answer in time")
            if isinstance(received, web.Response):
                return received
            sender, body = received
            decided = await self._decide_in_time(sender, body, deadline)
            status, answer, headers = self._signed(sender, decided.status, decided.answer)
            self._void_if_undecided(sender, decided, signed=bool(headers))
            self._recorder.record(sender.origin, decided.message, status, answer,
                                  asyncio.get_running_loop().time() - started)
            return _answer(status, answer, headers)
        finally:
            self.in_flight -= 1

    async def _receive(self, request: web.Request) -> web.Response | tuple[Authenticated, bytes]:
        """The authenticated sender and the body, or the error answer (no MAC: nobody proven)."""
        if request.content_type != JSON_CONTENT_TYPE:
            self._refusals.refused("content_type", "wrong content type")
            return _error(415, "30", f"content type must be {JSON_CONTENT_TYPE}")
        if request.content_length is not None and request.content_length > MAX_REQUEST_BODY_BYTES:
            self._refusals.refused("too_large", "body too large")
            return _error(413, "30", f"body exceeds {MAX_REQUEST_BODY_BYTES} bytes")
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            self._refusals.refused("too_large", "body too large")
            return _error(413, "30", f"body exceeds {MAX_REQUEST_BODY_BYTES} bytes")
        try:
            sender = self._authenticator.authenticate(request.method, request.path,
                                                      request.headers, body)
        except AuthenticationError as exc:
            if exc.rc == "63":
                self._metrics.security.labels("mac").inc()
                self._refusals.log_quietly("mac", str(exc))
            else:
                self._refusals.refused("identity", str(exc))
            return _error(401 if exc.rc == "63" else 400, exc.rc, str(exc))
        return sender, body

    async def _decide_in_time(self, sender: Authenticated, body: bytes,
                              deadline: float) -> _Decided:
        """The decision, or 91 when it does not come in time, or 96 for any failure nobody
        foresaw: an authenticated request always gets a protocol answer, never aiohttp's 500."""
        message = None
        progress = CallProgress()
        try:
            message = decode_request(body)
            async with asyncio.timeout_at(deadline):
                return await self._decide(sender, message, deadline, progress)
        except ProtocolError as exc:
            return _Decided(None, 400, error_body("30", str(exc)))
        except TimeoutError:
            # Once its call left, the ledger may decide anyway: the terminal reverses on 91, the
            # server voids.
            return _Decided(message, 503, error_body("91", "no answer in time"), progress.left)
        except Exception as exc:        # noqa: BLE001 - the terminal needs an answer whatever it is
            log.error("unexpected failure for terminal %s: %s", sender.origin.terminal_id,
                      _where(exc))
            return _Decided(message, 500, error_body("96", "system malfunction"), progress.left)

    def _signed(self, sender: Authenticated, status: int,
                answer: bytes) -> tuple[int, bytes, dict[str, str]]:
        """Every answer to an authenticated request carries the server's MAC. When the HSM cannot
        make one, the answer cannot be proven: a JSON 91 without MAC, which the terminal treats
        as no answer (it reverses a purchase)."""
        try:
            return status, answer, self._authenticator.response_headers(sender, status, answer)
        except Exception as exc:        # noqa: BLE001 - HSM errors and anything else alike
            log.error("answer for terminal %s could not be MAC'd: %s", sender.origin.terminal_id,
                      _where(exc))
            return 503, error_body("91", "answer could not be authenticated, retry later"), {}

    def _void_if_undecided(self, sender: Authenticated, decided: _Decided, *,
                           signed: bool) -> None:
        """A purchase answered 91 or 96 is voided by the server (authorizer/server_voids.py),
        also one the ledger approved whose answer could not be MAC'd. A purchase the ledger
        decided otherwise (a decline, a replay's 63) keeps its stored answer."""
        if not isinstance(decided.message, Purchase):
            return
        try:
            may_have_committed = decided.may_have_committed
            if may_have_committed is None:
                if signed or _code.decode(decided.answer).rc not in APPROVED_CODES:
                    return
                may_have_committed = True
            self._voids.enqueue(sender.origin.terminal_id, decided.message.request_id,
                                request_fingerprint(decided.message), may_have_committed)
        except Exception as exc:        # noqa: BLE001 - the answer goes out whatever happens here
            log.error("server void of a purchase of terminal %s not queued: %s",
                      sender.origin.terminal_id, _where(exc))

    async def _decide(self, sender: Authenticated, message: Request, deadline: float,
                      progress: CallProgress) -> _Decided:
        await self._recorder.prepare(sender.origin, message)
        card = message.card_uid if isinstance(message, Purchase) else None
        if card and self._voids.pending(sender.origin.terminal_id, message.request_id):
            # A copy of a purchase answered 91 whose void has not landed: never run it now.
            return _Decided(message, 503, error_body("91", "being voided, reverse it"), False)
        with self._card_gate.enter(card) if card else contextlib.nullcontext(True) as admitted:
            if not admitted:
                self._metrics.card_busy.inc()
                return _Decided(message, 503, error_body("91", "card busy, retry later"), False)
            return await self._decide_admitted(sender, message, deadline, progress)

    async def _decide_admitted(self, sender: Authenticated, message: Request, deadline: float,
                               progress: CallProgress) -> _Decided:
        terminal_id = sender.origin.terminal_id
        try:
            return _Decided(message, 200, await self._pipeline.decide(sender.origin, message,
                                                                      deadline, progress))
        except LedgerUnavailable as exc:
            log.warning("ledger unavailable for terminal %s: %s", terminal_id, exc)
            return _Decided(message, 503, error_body("91", "ledger unavailable, retry later"),
                            exc.may_have_committed)
        except LedgerFailure as exc:
            log.error("ledger failure for terminal %s: %s", terminal_id, exc)
            return _Decided(message, 500, error_body("96", "system malfunction"), False)
