"""Group commit: the purchases, reversals and refunds that arrive while the database is busy are
decided together, one round trip and one commit for many (TigerBeetle's principle; PostgreSQL's
commit flush is the per-message cost that one call per message cannot share).

Natural batching: while fewer than GROUP_COMMIT_BATCHES_IN_FLIGHT_MAX batches are at the
database, a message goes at once (alone at low load: no added latency); beyond, it queues, and
the next batch to leave takes up to GROUP_COMMIT_BATCH_MAX_MESSAGES of the queue. A batch may
wait up to GROUP_COMMIT_WAIT_MAX_US for companions (0: never waits). Each message is answered
only after its batch committed. A message whose deadline passed while queued is answered 91 and
never run; one the caller stopped waiting for (its request timed out) is never run either.
A card's purchases and refunds never go in two batches at once: one whose card is in a batch at
the database stays queued for the next, so batches do not wait for each other's wallet locks (a
hot card's messages share a batch instead). Within a batch they go in card order; what still
fails (a lock timeout, a deadlock with a reversal) fails only its own message, in its own
subtransaction (authorize_batch.sql).
"""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Callable

from ledger.authorization_store import (AuthorizationStore, GroupableCall, LedgerFailure,
                                        LedgerUnavailable)

# Below PostgreSQL's 64 subtransactions cached per backend (PGPROC_MAX_CACHED_SUBXIDS): beyond,
# every snapshot in the cluster gets slower.
GROUP_COMMIT_BATCH_MAX_MESSAGES = 32
# Batches at the database at once: each holds one pool connection; fewer than the pool, so the
# other paths (batch close, readiness) always find one, and enough for both cores.
GROUP_COMMIT_BATCHES_IN_FLIGHT_MAX = 4
# How long a batch that could leave waits for more messages. 0: natural batching only.
GROUP_COMMIT_WAIT_MAX_US = 0
# A message's budget in the database ends this long before its request's deadline: the budget
# is counted from when the batch's statement starts there; the wait for a pooled connection is
# taken off it (AuthorizationStore.group), what is left between the connection and the start
# (a first statement on a connection is prepared first) is this margin's. So a message still
# running when the server answers 91 at the deadline has already been rolled back, not
# committed.
GROUP_COMMIT_DEADLINE_MARGIN_MS = 25


@dataclass
class _Queued:
    deadline: float
    call: GroupableCall = field(compare=False)
    answer: asyncio.Future = field(compare=False)


def _lock_order(item: _Queued) -> tuple:
    """Wallets locked in card order in every batch; reversals (wallet unknown here) last."""
    return (item.call.card_uid is None, item.call.card_uid or b"")


class GroupCommitter:
    def __init__(self, store: AuthorizationStore, *,
                 batch_max_messages: int = GROUP_COMMIT_BATCH_MAX_MESSAGES,
                 batches_in_flight_max: int = GROUP_COMMIT_BATCHES_IN_FLIGHT_MAX,
                 wait_max_us: int = GROUP_COMMIT_WAIT_MAX_US,
                 observe_batch_messages: Callable[[int], None] = lambda n: None,
                 count_expired: Callable[[], None] = lambda: None) -> None:
        self._store = store
        self._batch_max = batch_max_messages
        self._in_flight_max = batches_in_flight_max
        self._wait_max_s = wait_max_us / 1_000_000
        self._observe_batch = observe_batch_messages
        self._count_expired = count_expired
        self._queue: deque[_Queued] = deque()
        self._batches_in_flight = 0
        self._cards_in_flight: Counter[bytes] = Counter()
        self._tasks: set[asyncio.Task] = set()

    def queued(self) -> int:
        return len(self._queue)

    async def decide(self, call: GroupableCall, deadline: float) -> bytes:
        """The message's response once its batch committed; deadline on the loop's clock."""
        loop = asyncio.get_running_loop()
        item = _Queued(deadline, call, loop.create_future())
        self._queue.append(item)
        if self._batches_in_flight < self._in_flight_max:
            self._batches_in_flight += 1
            task = loop.create_task(self._drain())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await item.answer

    async def _drain(self) -> None:
        """Batches from the queue until it is empty; one connection, one batch at a time."""
        try:
            while self._queue:
                if self._wait_max_s and len(self._queue) < self._batch_max:
                    await asyncio.sleep(self._wait_max_s)
                batch = self._take()
                if not batch:       # all queued wait for cards in other batches: theirs drain
                    break
                cards = Counter(item.call.card_uid for item in batch if item.call.card_uid)
                self._cards_in_flight.update(cards)
                try:
                    await self._run(batch)
                finally:
                    self._cards_in_flight.subtract(cards)
                    self._cards_in_flight = +self._cards_in_flight
        finally:
            self._batches_in_flight -= 1

    def _take(self) -> list[_Queued]:
        now = asyncio.get_running_loop().time()
        batch: list[_Queued] = []
        deferred: list[_Queued] = []
        while self._queue and len(batch) < self._batch_max:
            item = self._queue.popleft()
            if item.answer.done():          # its request gave up waiting: never run it
                continue
            if item.deadline <= now:
                self._count_expired()
                item.answer.set_exception(LedgerUnavailable("deadline passed while queued",
                                                            may_have_committed=False))
                continue
            if item.call.card_uid in self._cards_in_flight:
                deferred.append(item)       # its card is in a batch at the database
                continue
            batch.append(item)
        self._queue.extendleft(reversed(deferred))      # first in line for the next batch
        batch.sort(key=_lock_order)
        return batch

    async def _run(self, batch: list[_Queued]) -> None:
        self._observe_batch(len(batch))
        try:
            now = asyncio.get_running_loop().time()
            results = await self._store.group(
                [item.call for item in batch],
                [int((item.deadline - now) * 1000) - GROUP_COMMIT_DEADLINE_MARGIN_MS
                 for item in batch])
        except LedgerFailure:
            # Nothing was committed; one message may be the cause (an argument the driver
            # cannot encode): each alone, so that it fails only itself.
            results = [await self._alone(item.call) for item in batch]
        except Exception as exc:        # noqa: BLE001 - every waiter gets an answer
            results = [exc] * len(batch)
        for item, result in zip(batch, results, strict=True):
            if item.answer.done():
                continue
            if isinstance(result, Exception):
                item.answer.set_exception(result)
            else:
                item.answer.set_result(result)

    async def _alone(self, call: GroupableCall) -> bytes | Exception:
        try:
            return await self._store.single(call)
        except Exception as exc:        # noqa: BLE001 - handed to that message's waiter
            return exc
