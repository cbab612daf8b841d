"""The agent's own metrics, for the shop's IT person: what the outbox still owes the server and
since when, how often the reader's PC/SC context was lost, the operations and their durations.

Readable locally two ways: `state_dir/agent.prom`, rewritten atomically after each operation and
every METRICS_FILE_INTERVAL_S (the text format node_exporter's textfile collector reads; also
what `hdfpay terminal run` offers, having no HTTP port), and GET /v1/metrics on the till API.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import write_to_textfile

METRICS_FILE_NAME = "agent.prom"
METRICS_FILE_INTERVAL_S = 15
# From a quick tap (0.1 s) to the tap timeout (60 s): where a cashier's wait falls.
OPERATION_SECONDS_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)

log = logging.getLogger("hdfpay.terminal")


class AgentMetrics:
    def __init__(self, *, pending: Callable[[], int], oldest_unsent_s: Callable[[], float],
                 overdue: Callable[[], int], reader_restarts: Callable[[], int]) -> None:
        self.registry = CollectorRegistry()
        Gauge("hdfpay_agent_outbox_pending", "Reversals and refunds not yet answered by the server",
              registry=self.registry).set_function(pending)
        Gauge("hdfpay_agent_outbox_oldest_unsent_seconds",
              "Age of the oldest message still owed to the server (0 when none)",
              registry=self.registry).set_function(oldest_unsent_s)
        Gauge("hdfpay_agent_outbox_overdue", "Outbox messages unanswered after many attempts",
              registry=self.registry).set_function(overdue)
        Gauge("hdfpay_agent_reader_restarts", "PC/SC contexts lost and replaced (pcscd restarts)",
              registry=self.registry).set_function(reader_restarts)
        self._operations = Counter("hdfpay_agent_operations", "Cashier operations by outcome",
                                   ["kind", "status"], registry=self.registry)
        self._seconds = Histogram("hdfpay_agent_operation_seconds",
                                  "From the cashier's request to the outcome shown",
                                  ["kind"], buckets=OPERATION_SECONDS_BUCKETS,
                                  registry=self.registry)

    def observe(self, kind: str, status: str, seconds: float) -> None:
        self._operations.labels(kind, status).inc()
        self._seconds.labels(kind).observe(seconds)

    def text(self) -> bytes:
        return generate_latest(self.registry)

    def write(self, state_dir: Path) -> None:
        """Rewrite agent.prom (temporary file, then rename); a full disk is logged, not raised."""
        try:
            write_to_textfile(str(state_dir / METRICS_FILE_NAME), self.registry)
        except OSError as exc:
            log.warning("metrics file not written (%s)", type(exc).__name__)
