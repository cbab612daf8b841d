"""Decoded terminal message → the ledger call that decides it: one round trip per message, or
per batch of messages when group commit is on (authorizer/group_commit.py)."""

from __future__ import annotations

import msgspec

from authorizer.group_commit import GroupCommitter
from ledger.authorization_store import (AuthorizationStore, CallProgress, GroupableCall,
                                        MessageOrigin)
from terminal_protocol.codec import request_fingerprint
from terminal_protocol.messages import BatchClose, Purchase, Refund, Request, Reversal


class AuthorizationPipeline:
    def __init__(self, store: AuthorizationStore,
                 committer: GroupCommitter | None = None) -> None:
        self._store = store
        self._committer = committer

    async def decide(self, origin: MessageOrigin, request: Request,
                     deadline: float | None = None,
                     progress: CallProgress | None = None) -> bytes:
        """The response body, as the ledger stored it (a retry gets the same bytes). deadline,
        on the event loop's clock: past it, a queued message is answered 91 and never run.
        `progress` says afterwards whether the call left for the database (a caller that gave
        up on it learns whether it may have committed)."""
        fingerprint = request_fingerprint(request)
        progress = progress or CallProgress()
        match request:
            case Purchase():
                call = GroupableCall(
                    "purchase", origin, request.request_id, fingerprint, request.stan,
                    card_uid=bytes.fromhex(request.card_uid), amount_cents=request.amount_cents,
                    terminal_local_time=request.local_datetime, partial_ok=request.partial_ok,
                    progress=progress)
            case Reversal():
                call = GroupableCall("reversal", origin, request.request_id, fingerprint,
                                     request.stan, original=request.original_request_id,
                                     progress=progress)
            case Refund():
                call = GroupableCall(
                    "refund", origin, request.request_id, fingerprint, request.stan,
                    card_uid=bytes.fromhex(request.card_uid), amount_cents=request.amount_cents,
                    original=request.original_rrn, progress=progress)
            case BatchClose():
                return await self._store.batch_close(
                    origin, request.request_id, fingerprint, request.stan,
                    msgspec.json.encode(request.totals).decode())
            case _:
                raise AssertionError(f"unhandled message {type(request).__name__}")
        if self._committer is None or deadline is None:
            return await self._store.single(call)
        return await self._committer.decide(call, deadline)
