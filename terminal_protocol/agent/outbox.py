"""Reversals and refunds the server has not answered yet, kept on disk and resent until it does.

PROTOCOL.md: a reversal or a refund without an answer is resent with the same bytes (under a new
KSN and MAC) until answered; the server applies it once. The queue is the `outbox` table of the
local store, so it survives a restart; a row is written in the same transaction as the journal
change that makes it owed (a purchase left without an answer, a void, a refund).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from typing import Awaitable, Callable

from terminal_protocol.agent.journal import Journal, SentMessage
from terminal_protocol.agent.local_store import LocalStore
from terminal_protocol.messages import Response

# Answers that say "try again later": the server could not decide (91, 96), the message was
# refused before it was read (63: a KSN the server had not expected, e.g. after a restore), or
# the terminal is not allowed now (58: revoked or unknown; a suspended one may still reverse).
RETRYABLE_CODES = frozenset({"58", "63", "91", "96"})
OUTBOX_FIRST_RETRY_MS = 1_000
OUTBOX_MAX_RETRY_MS = 60_000
# Money owed to a student is never given up: past this many attempts (about an hour) the item is
# shown as overdue to the cashier, who calls the region's support; retries go on.
OUTBOX_OVERDUE_ATTEMPTS = 60
SENDER_FAILURE_PAUSE_MS = 5_000

log = logging.getLogger("hdfpay.terminal.outbox")

Send = Callable[[bytes], Awaitable[Response]]


def retry_delay_ms(attempts: int) -> int:
    """Exponential from one second, capped: a shop's line comes back in minutes, not days."""
    return min(OUTBOX_FIRST_RETRY_MS * 2 ** min(attempts, 16), OUTBOX_MAX_RETRY_MS)


class Outbox:
    def __init__(self, store: LocalStore, journal: Journal) -> None:
        self._store = store
        self._journal = journal
        self.changed = asyncio.Event()

    def enqueue(self, message: SentMessage, *, unanswered_purchase: str | None = None) -> None:
        """Owe `message` to the server; a purchase left without its answer is marked with it."""
        with self._store.transaction() as db:
            if unanswered_purchase is not None:
                self._journal.mark_unanswered(db, unanswered_purchase)
            self._journal.insert(db, message, "queued")
            db.execute("INSERT INTO outbox (request_id, next_attempt_at) VALUES (?, ?)",
                       (message.request_id, time.time()))
        self.changed.set()

    def pending(self) -> list[tuple[str, bytes, int, float]]:
        """(request id, body, attempts, next attempt as a Unix time), oldest first."""
        return [tuple(row) for row in self._store.db.execute(
            "SELECT o.request_id, m.body, o.attempts, o.next_attempt_at FROM outbox o"
            " JOIN messages m USING (request_id) WHERE o.state = 'pending'"
            " ORDER BY m.rowid")]          # rowid, not the wall clock, which may step back

    def overdue(self) -> int:
        return self._store.db.execute(
            "SELECT count(*) FROM outbox WHERE state = 'pending' AND attempts >= ?",
            (OUTBOX_OVERDUE_ATTEMPTS,)).fetchone()[0]

    def oldest_unsent_s(self) -> float:
        """How long the oldest message still owed to the server has waited (0 when none)."""
        row = self._store.db.execute(
            "SELECT min(m.created_at) FROM outbox o JOIN messages m USING (request_id)"
            " WHERE o.state = 'pending'").fetchone()
        if row[0] is None:
            return 0.0
        created = dt.datetime.fromisoformat(row[0])
        return max(0.0, (dt.datetime.now(dt.timezone.utc) - created).total_seconds())

    def counts(self) -> dict[str, int]:
        return dict(self._store.db.execute("SELECT state, count(*) FROM outbox GROUP BY state"))

    def acknowledge(self, request_id: str, response: Response) -> None:
        with self._store.transaction() as db:
            self._journal.record_answer(request_id, response, db)
            db.execute("UPDATE outbox SET state = 'done', attempts = attempts + 1 WHERE request_id = ?",
                       (request_id,))
            # A refund's bytes carry the whole card UID: answered, they are never sent again.
            db.execute("UPDATE messages SET body = x'' WHERE request_id = ? AND kind = 'refund'",
                       (request_id,))
        self.changed.set()

    def postpone(self, request_id: str, error: str) -> None:
        with self._store.transaction() as db:
            attempts = db.execute("SELECT attempts FROM outbox WHERE request_id = ?",
                                  (request_id,)).fetchone()[0] + 1
            db.execute("UPDATE outbox SET attempts = ?, next_attempt_at = ?, last_error = ?"
                       " WHERE request_id = ?",
                       (attempts, time.time() + retry_delay_ms(attempts) / 1000, error[:200],
                        request_id))
        if attempts == OUTBOX_OVERDUE_ATTEMPTS:
            log.error("outbox item %s still unanswered after %d attempts: %s", request_id,
                      attempts, error)


class OutboxSender:
    """Delivers the outbox in order, one message at a time (a terminal's KSN counter allows one
    message in flight), waking when an item is queued or the next retry falls due."""

    def __init__(self, outbox: Outbox, send: Send) -> None:
        self._outbox = outbox
        self._send = send
        self._pass = asyncio.Lock()   # the background pass and the cashier's never interleave

    async def deliver_due(self, *, everything: bool = False) -> int:
        """One pass over the due items (every pending item with `everything`): how many are left."""
        async with self._pass:
            now = time.time()
            for request_id, body, _, due_at in self._outbox.pending():
                if everything or due_at <= now:
                    await self._deliver_one(request_id, body)
            return len(self._outbox.pending())

    async def deliver(self, request_id: str) -> None:
        """Try one item now, whatever its schedule (the cashier is waiting for it)."""
        async with self._pass:
            for pending_id, body, *_ in self._outbox.pending():
                if pending_id == request_id:
                    await self._deliver_one(request_id, body)

    async def _deliver_one(self, request_id: str, body: bytes) -> None:
        try:
            response = await self._send(body)
        except Exception as exc:  # any failure to get a MAC'd answer: retry later
            self._outbox.postpone(request_id, f"{type(exc).__name__}: {exc}")
            return
        if response.rc in RETRYABLE_CODES:
            self._outbox.postpone(request_id, f"rc {response.rc}")
        else:
            self._outbox.acknowledge(request_id, response)

    async def run(self) -> None:
        """Deliver forever. The first pass, at start, tries everything pending: the line may
        well be back since the previous run's schedule was written."""
        everything = True
        while True:
            self._outbox.changed.clear()
            try:
                await self.deliver_due(everything=everything)
            except Exception:   # e.g. a full disk: the queue is still on disk, try again later
                log.exception("outbox pass failed")
                await asyncio.sleep(SENDER_FAILURE_PAUSE_MS / 1000)
                continue
            everything = False
            pending = self._outbox.pending()
            wait_s = (max(0.0, min(due for *_, due in pending) - time.time())
                      if pending else None)
            try:
                await asyncio.wait_for(self._outbox.changed.wait(), wait_s)
            except asyncio.TimeoutError:
                pass
