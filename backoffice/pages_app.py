"""The back office's pages as a sub-application of the operator listener, under /bureau/: its own
middlewares (security headers, a strict CSP and CSRF on every form; the operator's cookie
session), templates and stylesheet. The API beside it keeps bearer tokens and JSON."""

from __future__ import annotations

from pathlib import Path

import asyncpg
from aiohttp import web

from backoffice import (pages_accounts, pages_audit, pages_bulk_reload, pages_dashboard,
                        pages_expiry, pages_partners, pages_renewal, pages_requests,
                        pages_settlement, pages_students)
from backoffice.operator_auth import POOL
from backoffice.page_session import BASE, cookie_session
from backoffice.pages_partners import HSM
from backoffice.pages_requests import PHOTO_DIR
from hsm.interface import Hsm
from web.security import SECURE_COOKIES, security_middleware
from web.templates import add_shared_static, setup_templates

HERE = Path(__file__).parent
PAGE_GROUPS = (pages_students, pages_audit, pages_requests, pages_partners, pages_dashboard,
               pages_renewal, pages_bulk_reload, pages_expiry, pages_settlement, pages_accounts)


def build_pages_app(pool: asyncpg.Pool, *, secure_cookies: bool,
                    photo_dir: Path | None = None, hsm: Hsm | None = None) -> web.Application:
    app = web.Application(middlewares=[security_middleware, cookie_session])
    app[POOL], app[SECURE_COOKIES], app[PHOTO_DIR] = pool, secure_cookies, photo_dir
    app[HSM] = hsm
    setup_templates(app, HERE / "templates")
    pages = web.RouteTableDef()
    for module in PAGE_GROUPS:       # routes written with their full path, mounted under BASE
        for route in module.routes:
            pages.route(route.method, route.path.removeprefix(BASE), **route.kwargs)(route.handler)
    app.add_routes(pages)
    add_shared_static(app, "/static/web")
    app.router.add_static("/static", HERE / "static")
    return app


def is_page(request: web.Request) -> bool:
    """A page's errors are pages, not the API's JSON."""
    return request.path == BASE or request.path.startswith(BASE + "/")
