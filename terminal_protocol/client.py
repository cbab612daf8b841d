"""A terminal's side of the protocol: builds requests, signs and posts them, checks and decodes
the answers.

Used by the demo, the tests, the benchmark and (later) the terminal agent and locust. Request ids
are generated here so that a retry of the same message reuses its id; each transmission, retries
included, is signed under a new KSN.
"""

from __future__ import annotations

import datetime as dt
import itertools
import uuid

import ssl

import aiohttp

from terminal_protocol.codec import ProtocolError, decode_response, encode_request
from terminal_protocol.terminal_keys import ForgedResponse, TerminalKeys
from terminal_protocol.transport import (
    JSON_CONTENT_TYPE, KSN_HEADER, MAC_HEADER, TERMINAL_ID_HEADER, TERMINAL_PATH,
)
from terminal_protocol.messages import (
    PROTOCOL_VERSION, STAN_MAX, BatchClose, BatchTotals, Purchase, Refund, Request, Response,
    Reversal, local_time_text,
)

# The terminal gives up after this long and must reverse the purchase (see PROTOCOL.md).
TERMINAL_TIMEOUT_MS = 5000


def new_request_id() -> str:
    return uuid.uuid4().hex


class TerminalClient:
    def __init__(self, base_url: str, terminal_id: str, keys: TerminalKeys | None = None, *,
                 timeout_ms: int = TERMINAL_TIMEOUT_MS, ssl_context: ssl.SSLContext | None = None,
                 session: aiohttp.ClientSession | None = None) -> None:
        """Without keys, requests go unsigned: only a server run without terminal
        authentication (loopback benchmarking) accepts them."""
        self._url = base_url.rstrip("/") + TERMINAL_PATH
        self.terminal_id = terminal_id
        self._keys = keys
        self._ssl = ssl_context if ssl_context is not None else True
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
                        local_time=local_time_text(dt.datetime.now()), partial_ok=partial_ok)

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

    def refund_request(self, original_rrn: str, amount_cents: int, card_uid: bytes | str, *,
                       request_id: str | None = None) -> Refund:
        uid = card_uid.hex().upper() if isinstance(card_uid, bytes) else card_uid
        return Refund(v=PROTOCOL_VERSION, request_id=request_id or new_request_id(),
                      stan=self.next_stan(), original_rrn=original_rrn, amount_cents=amount_cents,
                      card_uid=uid)

    async def refund(self, original_rrn: str, amount_cents: int, card_uid: bytes | str, *,
                     request_id: str | None = None) -> Response:
        return await self.send(self.refund_request(original_rrn, amount_cents, card_uid,
                                                   request_id=request_id))

    def batch_close_request(self, totals: BatchTotals, *,
                            request_id: str | None = None) -> BatchClose:
        return BatchClose(v=PROTOCOL_VERSION, request_id=request_id or new_request_id(),
                          stan=self.next_stan(), totals=totals)

    async def batch_close(self, totals: BatchTotals, *, request_id: str | None = None) -> Response:
        return await self.send(self.batch_close_request(totals, request_id=request_id))

    async def send(self, request: Request) -> Response:
        return decode_response(await self.send_raw(encode_request(request)))

    async def send_raw(self, body: bytes, content_type: str = JSON_CONTENT_TYPE) -> bytes:
        """Sign and post exact bytes; return the exact response body once its MAC is checked.

        With keys, an answer without a valid MAC raises ForgedResponse, whatever its status:
        nobody proved it comes from the server, so it is no answer (reverse a purchase)."""
        assert self._session is not None, "use 'async with TerminalClient(...)'"
        headers = {TERMINAL_ID_HEADER: self.terminal_id, "Content-Type": content_type}
        ksn = None
        if self._keys is not None:
            ksn, mac = self._keys.sign_request("POST", TERMINAL_PATH, body)
            headers[KSN_HEADER] = ksn.hex().upper()
            headers[MAC_HEADER] = mac.hex().upper()
        async with self._session.post(self._url, data=body, timeout=self._timeout,
                                      headers=headers, ssl=self._ssl) as reply:
            payload = await reply.read()
            status, response_mac = reply.status, reply.headers.get(MAC_HEADER)
        if self._keys is not None:
            self._keys.check_response(ksn, status, payload, _unhex(response_mac))
        if not payload.startswith(b"{"):
            raise ProtocolError(f"HTTP {status} without a protocol body")
        return payload


def _unhex(text: str | None) -> bytes | None:
    try:
        return bytes.fromhex(text) if text else None
    except ValueError:
        raise ForgedResponse("malformed response MAC") from None
