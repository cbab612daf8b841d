"""The server's own void of every purchase it answered 91 or 96 (issue 17 §4).

A terminal reverses a purchase answered 91/96 until its reversal is answered; one that gives up
(a load driver after five tries, a till thrown away) used to leave the student debited for goods
never handed over whenever the ledger had committed the purchase all the same (the deadline
passed mid-commit, the answer could not be MAC'd, the connection broke after the commit). The
server knows which answers it sent: it voids each such purchase itself, after the answer and off
its path, through server_void_purchase() (ledger/sql/functions/server_void_purchase.sql): once,
whatever the attempts, servers and the terminal's own reversal.

In memory, bounded: at most SERVER_VOID_QUEUE_MAX_VOIDS waiting, one at the database at a time
(one pool connection at most, in queue order). A void that finds the database unavailable goes
to the back of the queue and the queue waits, from SERVER_VOID_FIRST_RETRY_MS doubling up to
SERVER_VOID_MAX_RETRY_MS, tried again until it lands. At stop the queue gets up to
SERVER_VOID_DRAIN_WAIT_MS. What a process loses (a full queue, a stop past that wait, a kill) is
logged with each purchase's terminal and request id and left to the terminal's own rule, reverse
until answered, as before; nothing is written to disk: the authorizer keeps no state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from dataclasses import dataclass

from authorizer.metrics import Metrics
from ledger.authorization_store import AuthorizationStore, LedgerUnavailable

SERVER_VOID_QUEUE_MAX_VOIDS = 10_000
SERVER_VOID_FIRST_RETRY_MS = 100
SERVER_VOID_MAX_RETRY_MS = 5_000
SERVER_VOID_DRAIN_WAIT_MS = 5_000
# Voids named one by one in the log line of those left at stop (the count is always there).
SERVER_VOIDS_NAMED_AT_STOP_MAX = 50

log = logging.getLogger("hdfpay.server_voids")


@dataclass
class _Void:
    terminal_id: str
    request_id: str
    fingerprint: bytes
    # The call answered 91/96 may have committed: void the purchase, not only tombstone its id.
    may_have_committed: bool
    attempts: int = 0


class ServerVoids:
    def __init__(self, store: AuthorizationStore, metrics: Metrics, *,
                 queue_max_voids: int = SERVER_VOID_QUEUE_MAX_VOIDS,
                 first_retry_ms: int = SERVER_VOID_FIRST_RETRY_MS,
                 max_retry_ms: int = SERVER_VOID_MAX_RETRY_MS) -> None:
        self._store = store
        self._metrics = metrics
        self._queue_max = queue_max_voids
        self._first_retry_ms = first_retry_ms
        self._max_retry_ms = max_retry_ms
        self._queue: deque[_Void] = deque()
        self._by_key: dict[tuple[str, str], _Void] = {}
        self._task: asyncio.Task | None = None
        metrics.server_voids_pending.set_function(lambda: len(self._queue))

    def pending(self, terminal_id: str, request_id: str) -> bool:
        """A void of this purchase is waiting to land (a retry of it must not be decided)."""
        return (terminal_id, request_id) in self._by_key

    def enqueue(self, terminal_id: str, request_id: str, fingerprint: bytes,
                may_have_committed: bool) -> None:
        """Owe the ledger this void; returns at once (the answer is not kept waiting)."""
        queued = self._by_key.get((terminal_id, request_id))
        if queued is not None:
            if queued.fingerprint == fingerprint:
                queued.may_have_committed |= may_have_committed
            return
        if len(self._queue) >= self._queue_max:
            self._metrics.server_voids_failed.labels("queue_full").inc()
            log.error("server void queue full (%d): purchase %s of terminal %s not voided; its "
                      "terminal's reversal is all that is left", self._queue_max, request_id,
                      terminal_id)
            return
        void = _Void(terminal_id, request_id, fingerprint, may_have_committed)
        self._queue.append(void)
        self._by_key[(terminal_id, request_id)] = void
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        """The queue, head first, until empty."""
        failures = 0
        while self._queue:
            void = self._queue[0]
            try:
                effect = await self._store.server_void(void.terminal_id, void.request_id,
                                                       void.fingerprint, void.may_have_committed)
            except LedgerUnavailable as exc:
                void.attempts += 1
                self._metrics.server_void_retries.inc()
                if void.attempts == 1:
                    log.warning("server void of purchase %s of terminal %s waits for the "
                                "database: %s", void.request_id, void.terminal_id, exc)
                self._queue.rotate(-1)          # one held wallet holds back no other void
                await asyncio.sleep(min(self._first_retry_ms * 2 ** min(failures, 16),
                                        self._max_retry_ms) / 1000)
                failures += 1
                continue
            except Exception as exc:    # noqa: BLE001 - a malfunction: that void only
                self._forget()
                self._metrics.server_voids_failed.labels("malfunction").inc()
                log.error("server void of purchase %s of terminal %s failed (%s): its terminal's "
                          "reversal is all that is left", void.request_id, void.terminal_id,
                          type(exc).__name__)
                continue
            failures = 0
            self._forget()
            self._metrics.server_voids_landed.labels(effect).inc()
            log.info("server void", extra={"fields": {
                "request_id": void.request_id, "terminal": void.terminal_id, "effect": effect,
                "may_have_committed": void.may_have_committed, "retries": void.attempts}})

    def _forget(self) -> None:
        void = self._queue.popleft()
        del self._by_key[(void.terminal_id, void.request_id)]

    async def drain(self, wait_ms: int = SERVER_VOID_DRAIN_WAIT_MS) -> int:
        """At stop: up to wait_ms for the queue to land, then what is left is counted and
        logged (its terminals' reversals cover it). Returns how many were left."""
        task = self._task
        if task is not None and not task.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), wait_ms / 1000)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        left = list(self._queue)
        if left:
            self._metrics.server_voids_failed.labels("shutdown").inc(len(left))
            named = ", ".join(f"{v.terminal_id}/{v.request_id}"
                              for v in left[:SERVER_VOIDS_NAMED_AT_STOP_MAX])
            log.error("stopping with %d server voids not landed (terminal/request id: %s%s); "
                      "their terminals' reversals are all that is left", len(left), named,
                      " …" if len(left) > SERVER_VOIDS_NAMED_AT_STOP_MAX else "")
        self._queue.clear()
        self._by_key.clear()
        return len(left)
