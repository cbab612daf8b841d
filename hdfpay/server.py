"""Wires the listeners: the terminal listener (authorizer) and the operator API (backoffice),
each with its own pool, and runs them until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import ssl
from dataclasses import dataclass
from typing import AsyncIterator

from aiohttp import web

from authorizer.http_refusals import TerminalAppRunner
from authorizer.listener import READINESS, REFUSALS, ListenerLimits, build_terminal_app
from backoffice.openapi import OPENAPI_PATH
from backoffice.ops_app import OpsAppRunner, build_ops_app
from portal.app import build_portal_app
from portal.mail_sender import MailSender, SmtpSettings
from portal.portal_links import PortalLinks
from hdfpay.config import LOOPBACK_HOSTS, Settings
from hdfpay.heap import freeze_startup_heap
from hsm.interface import Hsm
from ledger import roles
from ledger.database import create_ops_pool, create_pool
from ledger.roles import role_dsn
from hdfpay.workers import worker_metrics_listener
from web.http_face import QuietErrorsAppRunner
from terminal_protocol.transport import TERMINAL_PATH

# How long a stopping server lets in-flight requests finish.
SHUTDOWN_GRACE_S = 10.0
MAIL_SENDER_STOP_TIMEOUT_S = 5.0     # the mail in hand, at stop


def listener_limits(settings: Settings) -> ListenerLimits:
    return ListenerLimits(
        pool_acquire_timeout_ms=settings.pool_acquire_timeout_ms,
        db_statement_timeout_ms=settings.db_statement_timeout_ms,
        max_in_flight_requests=settings.max_in_flight_requests,
        request_timeout_ms=settings.request_timeout_ms,
        terminal_authentication=settings.terminal_authentication,
        metrics_enabled=settings.metrics_enabled,
        max_in_flight_per_card=settings.max_in_flight_per_card,
        group_commit=settings.group_commit,
    )


@dataclass
class RunningServer:
    url: str                  # the terminal listener
    app: web.Application
    ops_url: str = ""         # the operator listener (login, accounts, region operations)
    ops_app: web.Application | None = None
    portal_url: str = ""      # the students' web space


@contextlib.asynccontextmanager
async def _listening(app: web.Application, host: str, port: int,
                     tls: ssl.SSLContext | None, runner: web.AppRunner | None = None,
                     reuse_port: bool = False) -> AsyncIterator[str]:
    """The app served on host:port (0: a free port) until exit; yields its base URL. Without
    its own runner, unparseable HTTP gets a plain 400 and its bytes are never logged."""
    runner = runner or QuietErrorsAppRunner(app, access_log=None,
                                            shutdown_timeout=SHUTDOWN_GRACE_S)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, backlog=1024, ssl_context=tls,
                           reuse_port=reuse_port or None)
        await site.start()
        bound_host, bound_port = runner.addresses[0][:2]
        if ":" in bound_host:
            bound_host = f"[{bound_host}]"
        yield f"{'https' if tls else 'http'}://{bound_host}:{bound_port}"
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def running_server(settings: Settings, dsn: str, hsm: Hsm | None = None, *,
                         smtp: SmtpSettings | None = None) -> AsyncIterator[RunningServer]:
    """The three listeners, each with its pool, and the students' mail sender when `smtp` is
    given (without it mail stays queued, nothing is lost); all closed on exit. Port 0 picks a
    free port. `dsn` is the administrator's: each pool logs in as its own role (ledger/roles.py),
    never as the owner of the tables."""
    settings.check_transport()
    tls = _tls_context(settings)
    async with contextlib.AsyncExitStack() as stack:
        pool = await create_pool(role_dsn(dsn, roles.TERMINAL), settings.db_pool_size)
        stack.push_async_callback(pool.close)
        ops_pool = await create_ops_pool(role_dsn(dsn, roles.OPS), settings.ops_db_pool_size)
        stack.push_async_callback(ops_pool.close)
        app = build_terminal_app(listener_limits(settings), pool, hsm)
        runner = TerminalAppRunner(app, app[REFUSALS], access_log=None,
                                   shutdown_timeout=SHUTDOWN_GRACE_S)
        url = await stack.enter_async_context(
            _listening(app, settings.host, settings.port, tls, runner, settings.reuse_port))
        ops_app = build_ops_app(ops_pool, secure_cookies=settings.ops_host not in LOOPBACK_HOSTS,
                                photo_dir=settings.photo_dir, hsm=hsm,
                                bulk_reload_chunk_rows=settings.bulk_reload_chunk_rows)
        ops_runner = OpsAppRunner(ops_app, access_log=None, shutdown_timeout=SHUTDOWN_GRACE_S)
        ops_url = await stack.enter_async_context(
            _listening(ops_app, settings.ops_host, settings.ops_listen_port, tls, ops_runner,
                       settings.reuse_port))
        portal_pool = await create_ops_pool(role_dsn(dsn, roles.PORTAL),
                                            settings.portal_db_pool_size)
        stack.push_async_callback(portal_pool.close)
        links = PortalLinks()
        portal_app = build_portal_app(portal_pool, links=links, photo_dir=settings.photo_dir,
                                      secure_cookies=settings.portal_host not in LOOPBACK_HOSTS)
        portal_url = await stack.enter_async_context(
            _listening(portal_app, settings.portal_host, settings.portal_listen_port, tls,
                       reuse_port=settings.reuse_port))
        links.public_url = settings.portal_public_url or portal_url
        if smtp is not None:
            sender = MailSender(portal_pool, smtp)
            links.mail_queued = sender.wake
            stack.push_async_callback(_stopped, sender, asyncio.create_task(sender.run()))
        yield RunningServer(url=url, app=app, ops_url=ops_url, ops_app=ops_app,
                            portal_url=portal_url)


async def _stopped(sender: MailSender, task: asyncio.Task) -> None:
    sender.stop()
    try:
        await asyncio.wait_for(task, MAIL_SENDER_STOP_TIMEOUT_S)
    except TimeoutError:      # a message in hand past the bound: its lease brings it back later
        task.cancel()


def _tls_context(settings: Settings) -> ssl.SSLContext | None:
    if not settings.tls_cert_file:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    return context


async def serve_forever(settings: Settings, dsn: str, hsm: Hsm | None, announce=print,
                        smtp: SmtpSettings | None = None, metrics_port: int | None = None) -> None:
    """Serve until SIGINT/SIGTERM, then drain. `metrics_port`: a worker's own /metrics."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with running_server(settings, dsn, hsm, smtp=smtp) as server, \
            (worker_metrics_listener(server.app, metrics_port) if metrics_port
             else contextlib.nullcontext()):
        freeze_startup_heap()     # before the first request: see hdfpay/heap.py
        announce(f"hdfpay authorizer listening on {server.url}{TERMINAL_PATH}")
        announce(f"hdfpay operator API listening on {server.ops_url}/v1/ops/ "
                 f"(OpenAPI: {server.ops_url}{OPENAPI_PATH})")
        announce(f"hdfpay students' space (Mon espace Génération #HDF) on {server.portal_url}/")
        if smtp is None:
            announce("no HDFPAY_SMTP_HOST: the students' e-mails stay queued in the database"
                     " until a server with SMTP settings sends them")
        await stop.wait()
        # /readyz turns false first and the server keeps serving for the drain notice, so that a
        # load balancer stops sending; leaving the context then stops accepting and lets
        # in-flight requests finish (SHUTDOWN_GRACE_S at most).
        server.app[READINESS].start_draining()
        announce(f"draining: /readyz says no for {settings.drain_notice_ms} ms, then stopping")
        await asyncio.sleep(settings.drain_notice_ms / 1000)
        announce("stopping: finishing requests in flight")
