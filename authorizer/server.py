"""Assembles the aiohttp application and runs it until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import ssl
from dataclasses import dataclass
from typing import AsyncIterator

import asyncpg
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from authorizer.config import Settings
from authorizer.database import APPLICATION_NAME, create_pool
from authorizer.metrics import Metrics
from authorizer.openapi import OPENAPI_PATH
from authorizer.ops_app import build_ops_app
from authorizer.outcomes import OutcomeRecorder, PartnerCategories
from authorizer.readiness import Readiness
from authorizer.pipeline import AuthorizationPipeline
from authorizer.terminal_endpoint import TerminalEndpoint
from authorizer.terminal_authentication import DeclaredTerminals, DukptMacAuthenticator
from hsm.interface import Hsm
from ledger.authorization_store import AuthorizationStore
from terminal_protocol.codec import MAX_REQUEST_BODY_BYTES, error_body
from terminal_protocol.transport import JSON_CONTENT_TYPE, TERMINAL_PATH

# How long a stopping server lets in-flight requests finish.
SHUTDOWN_GRACE_S = 10.0
METRICS = web.AppKey("metrics", Metrics)
READINESS = web.AppKey("readiness", Readiness)


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


def build_app(settings: Settings, pool: asyncpg.Pool, hsm: Hsm | None) -> web.Application:
    metrics = Metrics()
    store = AuthorizationStore(
        pool,
        pool_acquire_timeout_s=settings.pool_acquire_timeout_ms / 1000,
        statement_timeout_s=settings.db_statement_timeout_ms / 1000,
        observe_round_trip_s=(metrics.db_round_trip.observe if settings.metrics_enabled
                              else lambda seconds: None),
    )
    metrics.pool_size.set_function(pool.get_size)
    metrics.pool_waiters.set_function(lambda: store.waiting_for_connection)
    if settings.terminal_authentication == "dukpt":
        if hsm is None:
            raise ValueError("terminal authentication needs an HSM")
        authenticator = DukptMacAuthenticator(hsm)
    else:
        authenticator = DeclaredTerminals()
    endpoint = TerminalEndpoint(
        AuthorizationPipeline(store), authenticator, metrics,
        OutcomeRecorder(metrics, PartnerCategories(pool), counting=settings.metrics_enabled),
        max_in_flight_requests=settings.max_in_flight_requests,
        request_timeout_ms=settings.request_timeout_ms,
    )
    # Slack above the largest valid message so that aiohttp itself never buffers more.
    app = web.Application(client_max_size=MAX_REQUEST_BODY_BYTES + 1,
                          middlewares=[_json_http_errors])
    app[METRICS] = metrics
    app.router.add_post(TERMINAL_PATH, endpoint.handle)
    app.router.add_get("/healthz", _healthz)
    app[READINESS] = Readiness(pool, metrics)
    app.router.add_get("/readyz", app[READINESS].handle)
    app.router.add_get("/metrics", _exposition)
    return app


async def _exposition(request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(request.app[METRICS].registry),
                        headers={"Content-Type": CONTENT_TYPE_LATEST})


@dataclass
class RunningServer:
    url: str                  # the terminal listener
    app: web.Application
    ops_url: str = ""         # the operator listener (login, accounts, region operations)
    ops_app: web.Application | None = None


@contextlib.asynccontextmanager
async def _listening(app: web.Application, host: str, port: int,
                     tls: ssl.SSLContext | None) -> AsyncIterator[str]:
    """The app served on host:port (0: a free port) until exit; yields its base URL."""
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_GRACE_S)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, backlog=1024, ssl_context=tls)
        await site.start()
        bound_host, bound_port = runner.addresses[0][:2]
        if ":" in bound_host:
            bound_host = f"[{bound_host}]"
        yield f"{'https' if tls else 'http'}://{bound_host}:{bound_port}"
    finally:
        await runner.cleanup()


async def create_ops_pool(dsn: str, size: int) -> asyncpg.Pool:
    """The operator API's own connections: long bulk statements there never take a
    connection the terminals need. asyncpg's default reset, since handlers use transactions."""
    return await asyncpg.create_pool(dsn, min_size=1, max_size=size, server_settings={
        "application_name": f"{APPLICATION_NAME}-ops"})


@contextlib.asynccontextmanager
async def running_server(settings: Settings, dsn: str,
                         hsm: Hsm | None = None) -> AsyncIterator[RunningServer]:
    """Both listeners, each with its pool; all closed on exit. Port 0 picks a free port."""
    settings.check_transport()
    tls = _tls_context(settings)
    async with contextlib.AsyncExitStack() as stack:
        pool = await create_pool(dsn, settings.db_pool_size)
        stack.push_async_callback(pool.close)
        ops_pool = await create_ops_pool(dsn, settings.ops_db_pool_size)
        stack.push_async_callback(ops_pool.close)
        app = build_app(settings, pool, hsm)
        url = await stack.enter_async_context(_listening(app, settings.host, settings.port, tls))
        ops_app = build_ops_app(settings, ops_pool)
        ops_url = await stack.enter_async_context(
            _listening(ops_app, settings.ops_host, settings.ops_listen_port, tls))
        yield RunningServer(url=url, app=app, ops_url=ops_url, ops_app=ops_app)


def _tls_context(settings: Settings) -> ssl.SSLContext | None:
    if not settings.tls_cert_file:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    return context


async def serve_forever(settings: Settings, dsn: str, hsm: Hsm | None, announce=print) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with running_server(settings, dsn, hsm) as server:
        announce(f"hdfpay authorizer listening on {server.url}{TERMINAL_PATH}")
        announce(f"hdfpay operator API listening on {server.ops_url}/v1/ops/ "
                 f"(OpenAPI: {server.ops_url}{OPENAPI_PATH})")
        await stop.wait()
        # /readyz turns false first and the server keeps serving for the drain notice, so that a
        # load balancer stops sending; leaving the context then stops accepting and lets
        # in-flight requests finish (SHUTDOWN_GRACE_S at most).
        server.app[READINESS].start_draining()
        announce(f"draining: /readyz says no for {settings.drain_notice_ms} ms, then stopping")
        await asyncio.sleep(settings.drain_notice_ms / 1000)
        announce("stopping: finishing requests in flight")
