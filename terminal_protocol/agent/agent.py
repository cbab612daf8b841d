"""The terminal agent's cashier operations: sale, void, refund, totals, batch close.

Every message goes through one lock (a terminal's KSN counter allows one message in flight) and
is written to the journal before it leaves. A purchase without a MAC'd answer in time is never
taken as approved: its reversal is queued on disk before the cashier is told, and the outbox
sender delivers it, after a restart if need be (PROTOCOL.md, "Timeouts and retries").
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import threading
import time
from pathlib import Path
from typing import Callable, Protocol

import aiohttp

from terminal_protocol.agent import cashier_texts as texts
from terminal_protocol.agent.cashier_texts import Outcome
from terminal_protocol.agent.agent_metrics import METRICS_FILE_INTERVAL_S, AgentMetrics
from terminal_protocol.agent.journal import Journal, SentMessage
from terminal_protocol.agent.local_store import LocalStore
from terminal_protocol.agent.outbox import Outbox, OutboxSender
from terminal_protocol.agent.receipt_printer import EscposFilePrinter
from terminal_protocol.agent.supervisor_pin import SupervisorPin
from terminal_protocol.agent.tickets import Tickets
from terminal_protocol.amounts import format_euros
from terminal_protocol.cashier_display import masked_uid
from terminal_protocol.client import TerminalClient
from terminal_protocol.codec import (
    decode_request, decode_response, encode_request,
)
from terminal_protocol.messages import Request, Response

# The server could not decide: the purchase may or may not be recorded, so reverse it.
UNDECIDED_CODES = frozenset({"91", "96"})
DEFAULT_TAP_TIMEOUT_MS = 60_000
# A slower sender pass than this at batch close means the line is down: refuse to close.
CLOSE_FLUSH_TIMEOUT_MS = 15_000
# The last sale may be voided without the supervisor for this long after its answer (the
# customer changes their mind at the till); later, and for refunds and the close, the PIN.
VOID_WITHOUT_PIN_S = 60
# The day's list on the screen: enough for a busy shop's day, short enough to scroll.
TRANSACTIONS_SHOWN_MAX = 200

log = logging.getLogger("hdfpay.terminal")


class Reader(Protocol):
    def wait_for_uid(self, timeout_ms: int, cancel: threading.Event | None = None, *,
                     new_tap: bool = False, on_lift_first=None) -> bytes: ...

    def remember_card_present(self) -> bool: ...


class TerminalAgent:
    def __init__(self, client: TerminalClient, reader: Reader, store: LocalStore, *,
                 max_sale_cents: int, tap_timeout_ms: int = DEFAULT_TAP_TIMEOUT_MS,
                 new_tap_per_sale: bool = True, supervisor: SupervisorPin | None = None,
                 shop_name: str = "", printer: EscposFilePrinter | None = None,
                 metrics_dir: Path | None = None,
                 now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.timezone.utc)) -> None:
        """`new_tap_per_sale` False lets a card left on the reader pay again without being lifted:
        only for measuring latency without pcscd's 400 ms presence poll (loadtest/bench_tap).
        Without `supervisor` (no PIN installed) what needs the PIN is refused."""
        self._client = client
        self._reader = reader
        self.journal = Journal(store)
        self.outbox = Outbox(store, self.journal)
        self._sender = OutboxSender(self.outbox, self._send)
        self._send_lock = asyncio.Lock()
        self._operation_lock = asyncio.Lock()   # one cashier operation at a time
        self._tap_cancel = threading.Event()
        self._max_sale_cents = max_sale_cents
        self._tap_timeout_ms = tap_timeout_ms
        self._new_tap_per_sale = new_tap_per_sale
        self._sender_task: asyncio.Task | None = None
        self._supervisor = supervisor
        self._now = now
        self._tickets = Tickets(self.journal, shop_name=shop_name or client.terminal_id,
                                terminal_id=client.terminal_id, printer=printer, now=now)
        self._metrics_dir = metrics_dir
        self._metrics_task: asyncio.Task | None = None
        self.metrics = AgentMetrics(
            pending=lambda: len(self.outbox.pending()), overdue=self.outbox.overdue,
            oldest_unsent_s=self.outbox.oldest_unsent_s,
            reader_restarts=lambda: getattr(reader, "context_restarts", 0))
        # What the cashier must read while an operation waits (the console prints it; the till
        # API shows it in /v1/status). Called from the reader's thread.
        self.on_screen: Callable[[str], None] = lambda text: None
        self.notice: str | None = None

    async def start(self) -> None:
        """Reverse what a previous run left on the wire, start delivering the outbox, and take
        note of a card already on the reader: it may have paid before a restart, so it must be
        lifted before it pays again (one tap, one sale, across restarts too)."""
        try:
            if await asyncio.to_thread(self._reader.remember_card_present):
                self._show_notice(texts.LIFT_CARD_FIRST)
        except Exception as exc:    # pcscd or the reader not there yet: the first sale looks
            log.warning("no look at the reader at start (%s)", type(exc).__name__)
        for request_id in self.journal.purchases_in_flight():
            log.warning("purchase %s was in flight when the agent stopped: reversing it", request_id)
            self._queue_reversal(request_id, unanswered=True)
            amount = self.journal.message(request_id)["amount_cents"] or 0
            self._show_notice(texts.interrupted_sale(amount))
        self._sender_task = asyncio.create_task(self._sender.run(), name="outbox-sender")
        if self._metrics_dir is not None:
            self._metrics_task = asyncio.create_task(self._write_metrics(), name="agent-metrics")

    async def stop(self) -> None:
        self.cancel_tap()
        for task in (self._sender_task, self._metrics_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def cancel_tap(self) -> None:
        """Stop waiting for a card (the cashier pressed Annuler)."""
        self._tap_cancel.set()

    async def sale(self, amount_cents: int, till_reference: str | None = None) -> Outcome:
        """One sale. A till that retries with the same `till_reference` (after its own timeout,
        a double click) gets the first sale's outcome again, with no new tap and no new debit."""
        return await self._observed("sale", self._sale(amount_cents, till_reference))

    async def _sale(self, amount_cents: int, till_reference: str | None) -> Outcome:
        if not 0 < amount_cents <= self._max_sale_cents:
            return texts.refused(f"Montant refusé : entre 0,01 € et {format_euros(self._max_sale_cents)}")
        async with self._operation_lock:
            if till_reference is not None:
                earlier = self.journal.sale_by_till_reference(till_reference)
                if earlier is not None:
                    return texts.replayed_sale(earlier, amount_cents)
            if self.journal.unanswered_close() is not None:
                return _close_first()
            uid = await self._tap(texts.PRESENT_CARD, amount_cents)
            if isinstance(uid, Outcome):
                return uid
            self.on_screen(texts.SENDING)
            request = self._client.purchase_request(uid, amount_cents, partial_ok=True)
            body = encode_request(request)
            # A purchase is never resent (a reversal follows it instead), so the journal keeps
            # no copy of its bytes, and with them no whole card UID.
            self.journal.record_sending(SentMessage(request.request_id, "purchase", b"",
                                                    amount_cents, masked_uid(uid),
                                                    till_reference=till_reference))
            try:
                response = await self._send(body)
            except Exception as exc:
                log.warning("purchase %s without answer (%s): reversing it", request.request_id,
                            type(exc).__name__)
                response = None
            at = self._now().astimezone()
            if response is None or response.rc in UNDECIDED_CODES:
                self._queue_reversal(request.request_id, unanswered=True)
                outcome = texts.sale_without_answer(amount_cents, request.request_id)
            else:
                self.journal.record_answer(request.request_id, response)
                outcome = texts.answered(response, amount_cents)
            outcome = texts.with_card_and_time(outcome, masked_uid(uid), at)
            return await self._tickets.issue(outcome, request.request_id, "purchase", masked_uid(uid))

    def void_preview(self) -> Outcome:
        """What "void the last sale" would do, for the cashier to confirm (status `confirm`,
        details `needs_pin`), or why it cannot be done."""
        sale = self._voidable_sale()
        if isinstance(sale, Outcome):
            return sale
        return texts.confirm_void(sale, self._void_needs_pin(sale))

    async def void_last(self, supervisor_pin: str | None = None) -> Outcome:
        return await self._observed("void", self._void_last(supervisor_pin))

    async def _void_last(self, supervisor_pin: str | None) -> Outcome:
        async with self._operation_lock:
            sale = self._voidable_sale()
            if isinstance(sale, Outcome):
                return sale
            if self._void_needs_pin(sale):
                refusal = self._pin_refusal(supervisor_pin, texts.VOID_NEEDS_PIN)
                if refusal is not None:
                    return refusal
            outcome = await self._deliver_now(self._queue_reversal(sale["request_id"]),
                                              sale["approved_cents"])
            if outcome.status == "queued":
                return outcome
            return await self._tickets.issue(outcome, outcome.request_id, "reversal", sale["card"],
                                       original_rrn=sale["rrn"])

    async def refund(self, original_rrn: str, amount_cents: int,
                     supervisor_pin: str | None = None) -> Outcome:
        """A refund, with the supervisor's PIN, to the card the customer taps (the server
        checks it is a card of the student who paid)."""
        return await self._observed("refund", self._refund(original_rrn, amount_cents,
                                                           supervisor_pin))

    async def _refund(self, original_rrn: str, amount_cents: int,
                      supervisor_pin: str | None) -> Outcome:
        if not 0 < amount_cents <= self._max_sale_cents:
            return texts.refused(f"Montant refusé : entre 0,01 € et {format_euros(self._max_sale_cents)}")
        if not texts.RRN.fullmatch(original_rrn):
            return texts.refused("Référence invalide : les 12 chiffres du ticket")
        async with self._operation_lock:
            if self.journal.unanswered_close() is not None:
                return _close_first()
            refusal = self._pin_refusal(supervisor_pin, texts.REFUND_NEEDS_PIN)
            if refusal is not None:
                return refusal
            uid = await self._tap(texts.PRESENT_CARD_FOR_REFUND, amount_cents)
            if isinstance(uid, Outcome):
                return uid
            self.on_screen(texts.SENDING)
            request = self._client.refund_request(original_rrn, amount_cents, uid)
            # Kept until the answer (a retry resends the same bytes), then erased: the journal
            # keeps no whole card UID (Outbox.acknowledge).
            self.outbox.enqueue(SentMessage(request.request_id, "refund", encode_request(request),
                                            amount_cents, masked_uid(uid),
                                            original_rrn=original_rrn))
            outcome = await self._deliver_now(request, amount_cents)
            if outcome.status == "queued":
                return outcome
            outcome = texts.with_card_and_time(outcome, masked_uid(uid), self._now().astimezone())
            return await self._tickets.issue(outcome, request.request_id, "refund", masked_uid(uid),
                                       original_rrn=original_rrn)

    async def reprint_last(self) -> Outcome:
        return await self._tickets.reprint_last()

    def transactions(self) -> Outcome:
        """The open batch's operations, newest first: a refund finds its sale's RRN here."""
        return texts.transactions(self.journal.batch_operations(TRANSACTIONS_SHOWN_MAX))

    def totals(self) -> Outcome:
        return texts.totals(self.journal.batch_totals(), len(self.outbox.pending()),
                            self.outbox.overdue())

    def close_preview(self) -> Outcome:
        """The totals the close would send, for the cashier to confirm (the PIN is needed)."""
        return texts.confirm_close(self.journal.batch_totals())

    async def close_batch(self, supervisor_pin: str | None = None) -> Outcome:
        return await self._observed("close", self._close_batch(supervisor_pin))

    async def _close_batch(self, supervisor_pin: str | None) -> Outcome:
        async with self._operation_lock:
            refusal = self._pin_refusal(supervisor_pin, texts.CLOSE_NEEDS_PIN)
            if refusal is not None:
                return refusal
            try:
                left = await asyncio.wait_for(self._sender.deliver_due(everything=True),
                                              CLOSE_FLUSH_TIMEOUT_MS / 1000)
            except asyncio.TimeoutError:
                left = len(self.outbox.pending())
            if left:
                return texts.refused(f"Clôture impossible : {left} opération(s) en attente d'envoi",
                                     "Vérifiez la connexion puis recommencez")
            pending_close = self.journal.unanswered_close()
            if pending_close is None:
                totals = self.journal.batch_totals()
                request = self._client.batch_close_request(totals)
                body = encode_request(request)
                self.journal.record_sending(SentMessage(request.request_id, "batch_close", body))
                request_id = request.request_id
            else:   # same bytes as the close that got no answer
                request_id, body = pending_close["request_id"], pending_close["body"]
                totals = decode_request(body).totals
            try:
                response, raw = await self._send_with_body(body)
            except aiohttp.ClientConnectorError:     # refused before a byte left: not pending
                self.journal.record_not_sent(request_id)
                return texts.refused("Clôture non envoyée : serveur injoignable",
                                     "Les ventes restent possibles ; relancez la clôture plus tard")
            except Exception:
                return texts.refused("Réponse de clôture non reçue : relancez la clôture",
                                     "Aucune vente avant la réponse du serveur")
            if response.rc in ("00", "95"):
                self.journal.close_batch(request_id, response, raw)
            return texts.batch_closed(response, totals)

    def status(self) -> dict:
        return {"outbox": self.outbox.counts(), "pending": len(self.outbox.pending()),
                "overdue": self.outbox.overdue(), "batch": self.journal.open_batch_id(),
                "notice": self.notice}

    async def _observed(self, kind: str, operation) -> Outcome:
        """Run a cashier operation; log it (JSON line, no card UID) and count it."""
        started = time.perf_counter()
        outcome = await operation
        seconds = time.perf_counter() - started
        self.metrics.observe(kind, outcome.status, seconds)
        log.info("%s: %s", kind, outcome.status, extra={"fields": {
            "operation": kind, "status": outcome.status, "rc": outcome.rc,
            "requested_cents": outcome.requested_cents, "approved_cents": outcome.approved_cents,
            "rrn": outcome.rrn, "request_id": outcome.request_id,
            "card": outcome.details.get("card"), "duration_ms": round(seconds * 1000, 1)}})
        if self._metrics_dir is not None:
            self.metrics.write(self._metrics_dir)
        return outcome

    async def _write_metrics(self) -> None:
        """agent.prom, every METRICS_FILE_INTERVAL_S: the outbox's age grows while idle."""
        while True:
            self.metrics.write(self._metrics_dir)
            await asyncio.sleep(METRICS_FILE_INTERVAL_S)

    async def _tap(self, prompt: str, amount_cents: int) -> bytes | Outcome:
        """The UID of the card tapped now, or the outcome that ends the operation."""
        self._tap_cancel.clear()
        self._show_notice(prompt)        # once the amount, the batch and the PIN allow it
        try:
            return await asyncio.to_thread(self._reader.wait_for_uid, self._tap_timeout_ms,
                                           self._tap_cancel, new_tap=self._new_tap_per_sale,
                                           on_lift_first=self._lift_card_first)
        except Exception as exc:
            if self._tap_cancel.is_set():
                return texts.cancelled(amount_cents)
            return texts.card_error(getattr(exc, "message_fr", "Erreur du lecteur de cartes"))
        finally:
            self.notice = None

    def _voidable_sale(self):
        """The open batch's last sale if it can be voided, else the outcome that says why."""
        if self.journal.unanswered_close() is not None:
            return _close_first()
        last = self.journal.last_sale()
        if last is None:
            return texts.refused("Aucune vente dans ce lot : rien à annuler")
        sale, voided = last
        if voided or sale["state"] != "answered" or sale["approved_cents"] <= 0:
            return texts.not_voidable(sale, voided)
        return sale

    def _void_needs_pin(self, sale) -> bool:
        answered = dt.datetime.fromisoformat(sale["answered_at"])
        return (self._now() - answered).total_seconds() > VOID_WITHOUT_PIN_S

    def _pin_refusal(self, pin: str | None, why: str) -> Outcome | None:
        """None when the supervisor's PIN allows the operation, else the outcome refusing it."""
        if self._supervisor is None:
            return texts.refused("Aucun code superviseur n'est installé sur ce terminal",
                                 "Faites installer le code : hdfpay terminal set-pin")
        if not pin:
            return texts.pin_required(why)
        check = self._supervisor.check(pin)
        return None if check.ok else texts.pin_refused(check)

    def _lift_card_first(self) -> None:
        self._show_notice(texts.LIFT_CARD_FIRST)

    def _show_notice(self, text: str) -> None:
        self.notice = text if self.notice is None or self._sender_task is not None \
            else f"{self.notice}\n{text}"          # at start, every notice is kept for the screen
        self.on_screen(text)

    def _queue_reversal(self, original_request_id: str, *, unanswered: bool = False) -> Request:
        request = self._client.reversal_request(original_request_id)
        self.outbox.enqueue(SentMessage(request.request_id, "reversal", encode_request(request),
                                        original_request_id=original_request_id),
                            unanswered_purchase=original_request_id if unanswered else None)
        return request

    async def _deliver_now(self, request: Request, amount_cents: int) -> Outcome:
        """Send an outbox item at once for the cashier; left queued when there is no answer."""
        await self._sender.deliver(request.request_id)
        row = self.journal.message(request.request_id)
        if row["state"] != "answered":
            return texts.queued(row["kind"], amount_cents, request.request_id)
        return texts.answered(self.journal.answer(request.request_id), amount_cents)

    async def _send(self, body: bytes) -> Response:
        return (await self._send_with_body(body))[0]

    async def _send_with_body(self, body: bytes) -> tuple[Response, bytes]:
        async with self._send_lock:
            raw = await self._client.send_raw(body)
        return decode_response(raw), raw


def _close_first() -> Outcome:
    return texts.refused("Clôture en attente de réponse : relancez la clôture d'abord")
