"""A terminal's side of the protocol: builds requests, posts them, decodes the answers.

Used by the demo, the tests, the benchmark and (later) the terminal agent and locust. Request ids
are generated here so that a retry of the same message reuses its id.
"""

from __future__ import annotations

import datetime as dt
import itertools
import uuid

import aiohttp

from terminal_protocol.codec import ProtocolError, decode_response, encode_request
from terminal_protocol.transport import JSON_CONTENT_TYPE, TERMINAL_ID_HEADER, TERMINAL_PATH
from terminal_protocol.messages import (
    PROTOCOL_VERSION, STAN_MAX, Purchase, Refund, Request, Response, Reversal,
)

# The terminal gives up after this long and must reverse the purchase (see PROTOCOL.md).
TERMINAL_TIMEOUT_MS = 5000


def new_request_id() -> str:
    return uuid.uuid4().hex


class TerminalClient:
    def __init__(self, base_url: str, terminal_id: str, *, timeout_ms: int = TERMINAL_TIMEOUT_MS,
                 session: aiohttp.ClientSession | None = None) -> None:
        self._url = base_url.rstrip("/") + TERMINAL_PATH
        self.terminal_id = terminal_id
        self._timeout = aiohttp.ClientTimeout(total=timeout_ms / 1000)
        self._session = session
        self._owns_session = session is None
        self._stan = itertools.count(1)

    async def __aenter__(self) -> "TerminalClient":
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self

    async def __aexit__(self, *exc) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()

    def next_stan(self) -> int:
        return next(self._stan) % (STAN_MAX + 1)

    def purchase_request(self, card_uid: bytes | str, amount_cents: int, *, partial_ok: bool = True,
                         request_id: str | None = None) -> Purchase:
        uid = card_uid.hex().upper() if isinstance(card_uid, bytes) else card_uid
        return Purchase(v=PROTOCOL_VERSION, request_id=request_id or new_request_id(),
                        stan=self.next_stan(), card_uid=uid, amount_cents=amount_cents,
                        local_time=dt.datetime.now().replace(microsecond=0), partial_ok=partial_ok)

    async def purchase(self, card_uid: bytes | str, amount_cents: int, *, partial_ok: bool = True,
                       request_id: str | None = None) -> Response:
        return await self.send(self.purchase_request(card_uid, amount_cents, partial_ok=partial_ok,
                                                     request_id=request_id))

    def reversal_request(self, original_request_id: str, *,
                         request_id: str | None = None) -> Reversal:
        return Reversal(v=PROTOCOL_VERSION, request_id=request_id or new_request_id(),
                        stan=self.next_stan(), original_request_id=original_request_id)

    async def reversal(self, original_request_id: str, *, request_id: str | None = None) -> Response:
        return await self.send(self.reversal_request(original_request_id, request_id=request_id))

    def refund_request(self, original_rrn: str, amount_cents: int, *,
                       request_id: str | None = None) -> Refund:
        return Refund(v=PROTOCOL_VERSION, request_id=request_id or new_request_id(),
                      stan=self.next_stan(), original_rrn=original_rrn, amount_cents=amount_cents)

    async def refund(self, original_rrn: str, amount_cents: int, *,
                     request_id: str | None = None) -> Response:
        return await self.send(self.refund_request(original_rrn, amount_cents, request_id=request_id))

    async def send(self, request: Request) -> Response:
        return decode_response(await self.send_raw(encode_request(request)))

    async def send_raw(self, body: bytes, content_type: str = JSON_CONTENT_TYPE) -> bytes:
        """Post exact bytes; return the exact response body (any HTTP status carries JSON)."""
        assert self._session is not None, "use 'async with TerminalClient(...)'"
        async with self._session.post(
            self._url, data=body, timeout=self._timeout,
            headers={TERMINAL_ID_HEADER: self.terminal_id, "Content-Type": content_type},
        ) as reply:
            payload = await reply.read()
            if not payload.startswith(b"{"):
                raise ProtocolError(f"HTTP {reply.status} without a protocol body")
            return payload
