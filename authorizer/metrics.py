"""What operators watch, in Prometheus conventions (base units, `_total`, `_seconds`).

No label carries a card UID, a beneficiary, a terminal id or anything else unbounded: labels are
the message type, the response code, the partner category and a short fixed reason.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import ProcessCollector, PlatformCollector

# Buckets around the 5 ms target of an authorization, up to the request timeout.
LATENCY_BUCKETS_SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25,
                           0.5, 1.0, 2.5, 5.0)
# Messages per group-commit batch, up to GROUP_COMMIT_BATCH_MAX_MESSAGES.
BATCH_SIZE_BUCKETS_MESSAGES = (1, 2, 4, 8, 16, 32)
SECURITY_REASONS = ("mac", "replay")
# Refused before the sender is proven (authorizer/http_refusals.py).
REFUSAL_REASONS = ("malformed_http", "content_type", "too_large", "identity", "timeout")
# What a server void did (ledger/sql/functions/server_void_purchase.sql), and why one was given up
# (authorizer/server_voids.py).
SERVER_VOID_EFFECTS = ("credited", "tombstoned", "was_reversed", "declined", "not_ours", "repeated",
                       "unknown_terminal")
SERVER_VOID_FAILURES = ("queue_full", "malfunction", "shutdown")


class Metrics:
    """One registry per server (tests run several servers in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self.authorizations = Counter(
            "hdfpay_authorizations_total", "Terminal messages answered, by type and response code",
            ["message_type", "response_code"], registry=self.registry)
        self.duration = Histogram(
            "hdfpay_authorization_duration_seconds",
            "Time from request received to answer sent, in the server",
            ["message_type"], buckets=LATENCY_BUCKETS_SECONDS, registry=self.registry)
        self.db_round_trip = Histogram(
            "hdfpay_db_round_trip_seconds",
            "One database call: a message's, or a group-commit batch's",
            buckets=LATENCY_BUCKETS_SECONDS, registry=self.registry)
        self.in_flight = Gauge(
            "hdfpay_requests_in_flight", "Terminal requests being processed",
            registry=self.registry)
        self.shed = Counter(
            "hdfpay_requests_shed_total", "Requests answered 91 at once: too many in flight",
            registry=self.registry)
        self.card_busy = Counter(
            "hdfpay_card_busy_total", "Purchases answered 91 at once: their card had "
            "MAX_IN_FLIGHT_PER_CARD purchases in flight already", registry=self.registry)
        self.pool_size = Gauge(
            "hdfpay_db_pool_connections", "Connections of the database pool",
            registry=self.registry)
        self.pool_waiters = Gauge(
            "hdfpay_db_pool_waiters", "Requests waiting for a database connection",
            registry=self.registry)
        self.security = Counter(
            "hdfpay_security_rejections_total",
            "Requests refused with 63: MAC that does not verify, or replayed / stale KSN",
            ["reason"], registry=self.registry)
        self.approved_amount = Counter(
            "hdfpay_approved_amount_cents_total",
            "Cents approved by purchases (partial approvals count what was approved)",
            ["partner_category"], registry=self.registry)
        self.draining = Gauge(
            "hdfpay_draining", "1 while the server finishes in-flight requests before exiting",
            registry=self.registry)
        self.refused = Counter(
            "hdfpay_requests_refused_total",
            "Requests refused before authentication: unparseable HTTP, wrong content type, body "
            "too large, missing or malformed terminal identity, no body in time",
            ["reason"], registry=self.registry)
        self.batch_messages = Histogram(
            "hdfpay_group_commit_batch_messages",
            "Messages decided by one group-commit round trip and commit",
            buckets=BATCH_SIZE_BUCKETS_MESSAGES, registry=self.registry)
        self.queue_expired = Counter(
            "hdfpay_group_commit_expired_total",
            "Messages answered 91 without being run: their deadline passed while queued",
            registry=self.registry)
        self.queued = Gauge(
            "hdfpay_group_commit_queued", "Messages waiting for a group-commit batch",
            registry=self.registry)
        self.server_voids_pending = Gauge(
            "hdfpay_server_voids_pending",
            "Purchases answered 91 or 96 whose void by the server has not landed yet",
            registry=self.registry)
        self.server_voids_landed = Counter(
            "hdfpay_server_voids_landed_total",
            "Server voids of purchases answered 91 or 96 that landed, by what they did: credited "
            "the wallet back, left a tombstone, found it reversed or declined already, ...",
            ["effect"], registry=self.registry)
        self.server_voids_failed = Counter(
            "hdfpay_server_voids_failed_total",
            "Server voids given up (queue full, a malfunction, left at stop): the terminal's own "
            "reversal is all that is left", ["reason"], registry=self.registry)
        self.server_void_retries = Counter(
            "hdfpay_server_void_retries_total",
            "Server void attempts that found the database unavailable, tried again later",
            registry=self.registry)
        for effect in SERVER_VOID_EFFECTS:
            self.server_voids_landed.labels(effect)
        for reason in SERVER_VOID_FAILURES:
            self.server_voids_failed.labels(reason)
        for reason in SECURITY_REASONS:
            self.security.labels(reason)
        for reason in REFUSAL_REASONS:
            self.refused.labels(reason)
