"""The terminal listener's aiohttp application: POST /v1/terminal, health, readiness, metrics.

It knows the terminal path and nothing else; the composition root (hdfpay.server) gives it a
pool, an HSM and the limits below, and runs it beside the operator listener.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from authorizer.card_gate import MAX_IN_FLIGHT_PER_CARD
from authorizer.group_commit import GroupCommitter
from authorizer.http_refusals import Refusals
from authorizer.metrics import Metrics
from authorizer.outcomes import OutcomeRecorder, PartnerCategories
from authorizer.pipeline import AuthorizationPipeline
from authorizer.readiness import Readiness
from authorizer.server_voids import ServerVoids
from authorizer.terminal_authentication import DeclaredTerminals, DukptMacAuthenticator
from authorizer.terminal_endpoint import TerminalEndpoint
from hsm.interface import Hsm
from ledger.authorization_store import AuthorizationStore
from terminal_protocol.codec import MAX_REQUEST_BODY_BYTES, error_body
from terminal_protocol.transport import JSON_CONTENT_TYPE, TERMINAL_PATH
from web.http_face import plain_server_header

METRICS = web.AppKey("metrics", Metrics)
READINESS = web.AppKey("readiness", Readiness)
SERVER_VOIDS = web.AppKey("server_voids", ServerVoids)
# For TerminalAppRunner (authorizer.http_refusals), which the composition root serves the app with.
REFUSALS = web.AppKey("refusals", Refusals)


@dataclass(frozen=True)
class ListenerLimits:
    """What the terminal listener needs from the settings, each limit with its unit."""
    pool_acquire_timeout_ms: int
    db_statement_timeout_ms: int
    # Beyond this many requests in progress the server answers 91 at once instead of queueing.
    max_in_flight_requests: int
    request_timeout_ms: int
    # "dukpt" (MAC'd, replay-proof terminal messages) or "none" (loopback benchmarking only).
    terminal_authentication: str
    metrics_enabled: bool
    # Purchases of one card in progress beyond which 91 "card busy" (authorizer/card_gate.py).
    max_in_flight_per_card: int = MAX_IN_FLIGHT_PER_CARD
    # Purchases, reversals and refunds decided in batches, one commit each (group_commit.py);
    # False: one call and one commit per message.
    group_commit: bool = True


async def _healthz(_: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


@web.middleware
async def _json_http_errors(request: web.Request, handler) -> web.StreamResponse:
    """Unknown paths and methods answer in the protocol's JSON too (rc 30), not in text/plain."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return web.Response(status=exc.status, content_type=JSON_CONTENT_TYPE,
                            body=error_body("30", exc.reason), headers=allow)


def build_terminal_app(limits: ListenerLimits, pool: asyncpg.Pool,
                       hsm: Hsm | None) -> web.Application:
    metrics = Metrics()
    store = AuthorizationStore(
        pool,
        pool_acquire_timeout_s=limits.pool_acquire_timeout_ms / 1000,
        statement_timeout_s=limits.db_statement_timeout_ms / 1000,
        observe_round_trip_s=(metrics.db_round_trip.observe if limits.metrics_enabled
                              else lambda seconds: None),
    )
    metrics.pool_size.set_function(pool.get_size)
    metrics.pool_waiters.set_function(lambda: store.waiting_for_connection)
    if limits.terminal_authentication == "dukpt":
        if hsm is None:
            raise ValueError("terminal authentication needs an HSM")
        authenticator = DukptMacAuthenticator(hsm)
    else:
        authenticator = DeclaredTerminals()
    refusals = Refusals(metrics)
    committer = None
    if limits.group_commit:
        committer = GroupCommitter(
            store, count_expired=metrics.queue_expired.inc,
            observe_batch_messages=(metrics.batch_messages.observe if limits.metrics_enabled
                                    else lambda n: None))
        metrics.queued.set_function(committer.queued)
    voids = ServerVoids(store, metrics)
    endpoint = TerminalEndpoint(
        AuthorizationPipeline(store, committer), authenticator, metrics,
        OutcomeRecorder(metrics, PartnerCategories(pool), counting=limits.metrics_enabled),
        refusals, voids,
        max_in_flight_requests=limits.max_in_flight_requests,
        max_in_flight_per_card=limits.max_in_flight_per_card,
        request_timeout_ms=limits.request_timeout_ms,
    )
    # Slack above the largest valid message so that aiohttp itself never buffers more.
    app = web.Application(client_max_size=MAX_REQUEST_BODY_BYTES + 1,
                          middlewares=[_json_http_errors])
    plain_server_header(app)
    app[METRICS] = metrics
    app[REFUSALS] = refusals
    app[SERVER_VOIDS] = voids
    # Once the requests in flight are answered, before the pool closes: voids still owed land.
    app.on_cleanup.append(_drain_server_voids)
    app.router.add_post(TERMINAL_PATH, endpoint.handle)
    app.router.add_get("/healthz", _healthz)
    app[READINESS] = Readiness(pool, metrics)
    app.router.add_get("/readyz", app[READINESS].handle)
    app.router.add_get("/metrics", _exposition)
    return app


async def _drain_server_voids(app: web.Application) -> None:
    await app[SERVER_VOIDS].drain()


async def _exposition(request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(request.app[METRICS].registry),
                        headers={"Content-Type": CONTENT_TYPE_LATEST})
