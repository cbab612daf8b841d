"""Decoded terminal message → the ledger call that decides it. One message, one round trip."""

from __future__ import annotations

from ledger.authorization_store import AuthorizationStore, MessageOrigin
from terminal_protocol.codec import request_fingerprint
import msgspec

from terminal_protocol.messages import BatchClose, Purchase, Refund, Request, Reversal


class AuthorizationPipeline:
    def __init__(self, store: AuthorizationStore) -> None:
        self._store = store

    async def decide(self, origin: MessageOrigin, request: Request) -> bytes:
        """The response body, as the ledger stored it (a retry gets the same bytes)."""
        fingerprint = request_fingerprint(request)
        match request:
            case Purchase():
                return await self._store.purchase(
                    origin, request.request_id, fingerprint, request.stan,
                    bytes.fromhex(request.card_uid), request.amount_cents, request.local_datetime,
                    request.partial_ok)
            case Reversal():
                return await self._store.reversal(
                    origin, request.request_id, fingerprint, request.stan,
                    request.original_request_id)
            case Refund():
                return await self._store.refund(
                    origin, request.request_id, fingerprint, request.stan,
                    request.original_rrn, request.amount_cents, bytes.fromhex(request.card_uid))
            case BatchClose():
                return await self._store.batch_close(
                    origin, request.request_id, fingerprint, request.stan,
                    msgspec.json.encode(request.totals).decode())
        raise AssertionError(f"unhandled message {type(request).__name__}")
