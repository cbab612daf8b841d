"""authorizer/server_voids.py's queue with a store that fails on demand: a void is tried until
it lands, one stuck void holds back no other, the queue is bounded, a malfunction costs only
its own void, and what is left at stop is counted and named in the log."""

from __future__ import annotations

import asyncio
import logging

from authorizer.metrics import Metrics
from authorizer.server_voids import ServerVoids
from ledger.authorization_store import LedgerFailure, LedgerUnavailable

from concurrency_helpers import until

QUICK_RETRY_MS = 1
SHORT_DRAIN_MS = 50


class Store:
    """server_void() answers from a script per request id: an exception is raised, a string is
    the effect; past the script, "credited". `gate`, when set, holds every call until opened."""

    def __init__(self, scripts: dict[str, list] | None = None) -> None:
        self.scripts = scripts or {}
        self.calls: list[tuple[str, bool]] = []
        self.gate: asyncio.Event | None = None

    async def server_void(self, terminal_id: str, request_id: str, fingerprint: bytes,
                          may_have_committed: bool) -> str:
        self.calls.append((request_id, may_have_committed))
        if self.gate is not None:
            await self.gate.wait()
        script = self.scripts.get(request_id, [])
        outcome = script.pop(0) if script else "credited"
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


def sample(metrics: Metrics, name: str, **labels) -> float:
    return metrics.registry.get_sample_value(name, labels)


def voids(store: Store, **limits) -> tuple[ServerVoids, Metrics]:
    metrics = Metrics()
    limits = {"first_retry_ms": QUICK_RETRY_MS, "max_retry_ms": QUICK_RETRY_MS, **limits}
    return ServerVoids(store, metrics, **limits), metrics


async def test_a_void_is_tried_until_it_lands():
    store = Store({"sale-0001": [LedgerUnavailable("down"), LedgerUnavailable("down")]})
    queue, metrics = voids(store)
    queue.enqueue("TERM-1", "sale-0001", b"h", False)
    assert queue.pending("TERM-1", "sale-0001")
    await until(lambda: sample(metrics, "hdfpay_server_voids_landed_total", effect="credited"),
                "the void landed")
    assert not queue.pending("TERM-1", "sale-0001")
    assert sample(metrics, "hdfpay_server_void_retries_total") == 2
    assert sample(metrics, "hdfpay_server_voids_pending") == 0
    assert await queue.drain() == 0


async def test_a_second_91_of_the_same_purchase_is_one_void_the_stronger_kind():
    store = Store()
    store.gate = asyncio.Event()
    queue, metrics = voids(store)
    queue.enqueue("TERM-1", "sale-0001", b"h", False)
    queue.enqueue("TERM-1", "sale-0002", b"h", False)
    queue.enqueue("TERM-1", "sale-0002", b"h", True)        # its retry timed out in flight
    queue.enqueue("TERM-1", "sale-0002", b"other", False)   # other content: not this purchase
    assert sample(metrics, "hdfpay_server_voids_pending") == 2
    store.gate.set()
    await until(lambda: sample(metrics, "hdfpay_server_voids_pending") == 0, "both landed")
    assert store.calls == [("sale-0001", False), ("sale-0002", True)]


async def test_a_void_that_cannot_land_holds_back_no_other(caplog):
    store = Store({"stuck-0001": [LedgerUnavailable("55P03")] * 10_000})
    queue, metrics = voids(store)
    queue.enqueue("TERM-1", "stuck-0001", b"h", True)
    queue.enqueue("TERM-2", "sale-0002", b"h", True)
    await until(lambda: sample(metrics, "hdfpay_server_voids_landed_total", effect="credited"),
                "the other void landed")
    with caplog.at_level(logging.ERROR, logger="hdfpay.server_voids"):
        assert await queue.drain(SHORT_DRAIN_MS) == 1
    assert sample(metrics, "hdfpay_server_voids_failed_total", reason="shutdown") == 1
    assert "stopping with 1 server voids not landed" in caplog.text
    assert "TERM-1/stuck-0001" in caplog.text


async def test_the_queue_is_bounded():
    store = Store()
    store.gate = asyncio.Event()
    queue, metrics = voids(store, queue_max_voids=1)
    queue.enqueue("TERM-1", "sale-0001", b"h", True)
    queue.enqueue("TERM-1", "sale-0002", b"h", True)
    assert sample(metrics, "hdfpay_server_voids_failed_total", reason="queue_full") == 1
    assert not queue.pending("TERM-1", "sale-0002")
    store.gate.set()
    await until(lambda: sample(metrics, "hdfpay_server_voids_pending") == 0, "the first landed")


async def test_a_malfunction_gives_up_only_its_own_void(caplog):
    store = Store({"bad-0001": [LedgerFailure("CheckViolationError")]})
    queue, metrics = voids(store)
    with caplog.at_level(logging.ERROR, logger="hdfpay.server_voids"):
        queue.enqueue("TERM-1", "bad-0001", b"h", True)
        queue.enqueue("TERM-1", "sale-0002", b"h", True)
        await until(lambda: sample(metrics, "hdfpay_server_voids_pending") == 0, "both done")
    assert sample(metrics, "hdfpay_server_voids_failed_total", reason="malfunction") == 1
    assert sample(metrics, "hdfpay_server_voids_landed_total", effect="credited") == 1
    assert "bad-0001" in caplog.text and "LedgerFailure" in caplog.text
