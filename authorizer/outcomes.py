"""Each answered terminal message, counted for Prometheus and written as one JSON log line.

The log line names the request id, terminal, message type, response code and latency; a card UID
appears masked (first byte and last two), never whole; amounts are cents.
"""

from __future__ import annotations

import asyncio
import logging

import asyncpg
import msgspec

from authorizer.metrics import Metrics
from ledger.terminals import partner_category_of
from ledger.authorization_store import MessageOrigin
from terminal_protocol.cashier_display import masked_uid
from terminal_protocol.messages import Purchase, Request
from terminal_protocol.response_codes import APPROVED_CODES

# Terminals whose partner category is remembered; a terminal is looked up once.
MAX_CACHED_TERMINALS = 100_000
# The category lookup runs before the decision, inside the request's deadline; bounded on its own
# so that a slow lookup leaves the decision most of that deadline.
CATEGORY_LOOKUP_TIMEOUT_S = 0.25
REPLAY_CODE = "63"

log = logging.getLogger("hdfpay.authorizations")


class _Outcome(msgspec.Struct):
    rc: str
    approved_cents: int = 0


_outcome = msgspec.json.Decoder(_Outcome)


class PartnerCategories:
    """BOOKSHOP or EQUIPMENT of a terminal's partner, for the approved-amount metric.

    Learnt before the ledger decides (`learn`), so that recording an outcome afterwards never
    waits on the database: nothing after the decision may delay or lose the answer."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._known: dict[str, str] = {}

    def known(self, terminal_id: str) -> str:
        return self._known.get(terminal_id, "UNKNOWN")

    async def learn(self, terminal_id: str) -> None:
        """Look the terminal up once. A failure is only logged (the metric says UNKNOWN and the
        next message tries again): it must never cost the terminal its answer."""
        if terminal_id in self._known:
            return
        try:
            async with asyncio.timeout(CATEGORY_LOOKUP_TIMEOUT_S):
                category = await partner_category_of(self._pool, terminal_id) or "UNKNOWN"
        except Exception as exc:        # noqa: BLE001 - any failure: the metric can wait
            log.warning("partner category lookup failed: %s", type(exc).__name__)
            return
        if len(self._known) >= MAX_CACHED_TERMINALS:
            self._known.clear()
        self._known[terminal_id] = category


class OutcomeRecorder:
    """`counting=False` keeps the log line and skips the metrics (to measure their cost)."""

    def __init__(self, metrics: Metrics, categories: PartnerCategories, counting: bool = True) -> None:
        self._metrics = metrics
        self._categories = categories
        self._counting = counting

    async def prepare(self, origin: MessageOrigin, request: Request) -> None:
        """Before the decision: whatever recording its outcome will need from the database."""
        if self._counting and isinstance(request, Purchase):
            await self._categories.learn(origin.terminal_id)

    def record(self, origin: MessageOrigin, request: Request | None, status: int,
               answer: bytes, elapsed_s: float) -> None:
        """After the decision: no I/O, and never raises (the answer is already built)."""
        try:
            self._record(origin, request, status, answer, elapsed_s)
        except Exception as exc:        # noqa: BLE001 - a lost log line, never a lost answer
            log.error("recording an outcome failed: %s", type(exc).__name__)

    def _record(self, origin: MessageOrigin, request: Request | None, status: int,
                answer: bytes, elapsed_s: float) -> None:
        message_type = type(request).__struct_config__.tag if request is not None else "invalid"
        try:
            outcome = _outcome.decode(answer)
        except msgspec.MsgspecError:
            outcome = _Outcome(rc="96")
        if self._counting:
            self._count(origin, request, message_type, outcome, elapsed_s)
        log.info("authorization", extra={"fields": {
            "request_id": getattr(request, "request_id", None), "terminal": origin.terminal_id,
            "type": message_type, "rc": outcome.rc, "http_status": status,
            "approved_cents": outcome.approved_cents, "latency_ms": round(elapsed_s * 1000, 2),
            "card": masked_uid(request.card_uid) if isinstance(request, Purchase) else None}})

    def _count(self, origin: MessageOrigin, request: Request | None, message_type: str,
               outcome: _Outcome, elapsed_s: float) -> None:
        self._metrics.authorizations.labels(message_type, outcome.rc).inc()
        self._metrics.duration.labels(message_type).observe(elapsed_s)
        if outcome.rc == REPLAY_CODE:
            self._metrics.security.labels("replay").inc()
        if isinstance(request, Purchase) and outcome.rc in APPROVED_CODES:
            category = self._categories.known(origin.terminal_id)
            self._metrics.approved_amount.labels(category).inc(outcome.approved_cents)
