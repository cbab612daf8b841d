"""The students' web space as an aiohttp application: its pages, its middlewares (security
headers and CSRF, then the session), its templates, its stylesheet and its one script. Served by `hdfpay serve`
on its own listener (HDFPAY_PORTAL_HOST, HDFPAY_PORTAL_PORT) with its own database pool."""

from __future__ import annotations

from pathlib import Path

import asyncpg
from aiohttp import web

from portal import (pages_application, pages_card, pages_login, pages_new_card,
                    pages_partners, pages_password_reset)
from portal.photos import PHOTO_MAX_BYTES
from portal.portal_links import LINKS, PortalLinks
from portal.student_session import PHOTO_DIR, POOL, session_middleware
from web.security import SECURE_COOKIES, security_middleware
from web.http_face import plain_server_header
from web.templates import add_shared_static, setup_templates

HERE = Path(__file__).parent
# The largest form is the applicant's photo; every other is a few hundred bytes.
MAX_FORM_OVERHEAD_BYTES = 64 * 1024
MAX_REQUEST_BODY_BYTES = PHOTO_MAX_BYTES + MAX_FORM_OVERHEAD_BYTES


def build_portal_app(pool: asyncpg.Pool, *, secure_cookies: bool, photo_dir: Path,
                     links: PortalLinks | None = None) -> web.Application:
    """`secure_cookies`: False only for a listener on loopback (tests, the demo). `links`: the
    public address for e-mailed links, and the mail sender's nudge."""
    app = web.Application(middlewares=[security_middleware, session_middleware],
                          client_max_size=MAX_REQUEST_BODY_BYTES)
    plain_server_header(app)
    app[POOL], app[SECURE_COOKIES] = pool, secure_cookies
    app[LINKS] = links or PortalLinks()
    app[PHOTO_DIR] = photo_dir
    setup_templates(app, HERE / "templates")
    app.add_routes(pages_login.routes)
    app.add_routes(pages_card.routes)
    app.add_routes(pages_password_reset.routes)
    app.add_routes(pages_new_card.routes)
    app.add_routes(pages_partners.routes)
    app.add_routes(pages_application.routes)
    add_shared_static(app, "/static/web")
    app.router.add_static("/static", HERE / "static")
    return app
