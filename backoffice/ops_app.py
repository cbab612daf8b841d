"""The operator listener's application: its own port, pool and body limit, apart from the
terminals' (a slow CSV upload or a bulk job must never hold up a till). Every area mounts its
routes here; every answer, errors included, is JSON, even to HTTP aiohttp cannot parse
(OpsAppRunner), whose bytes never reach a log: they may hold a bearer token."""

from __future__ import annotations

import logging
from pathlib import Path

import asyncpg
from aiohttp import web

from backoffice import api_school_year
from backoffice.areas import AREAS, openapi_document
from backoffice.openapi import OPENAPI_DOCUMENT
from backoffice.operator_auth import POOL, json_error, resolve_operator
from backoffice.ops_requests import plain_text
from backoffice.pages_app import build_pages_app, is_page
from backoffice.page_session import BASE
from hsm.interface import Hsm
from ledger.bulk_reload import BULK_RELOAD_CHUNK_ROWS
from web.http_face import QuietErrorsAppRunner, plain_server_header

log = logging.getLogger("hdfpay.ops")
# Room for the CSV files of rights renewal; JSON bodies have their own, smaller limit
# (backoffice.ops_requests.JSON_BODY_MAX_BYTES).
OPS_MAX_BODY_BYTES = 8 * 1024 * 1024
# The database going away mid-request: 503, the client may retry.
_UNAVAILABLE = (OSError, TimeoutError, asyncpg.InterfaceError, asyncpg.PostgresConnectionError,
                asyncpg.OperatorInterventionError)


@web.middleware
async def json_errors(request: web.Request, handler) -> web.StreamResponse:
    """aiohttp's own errors (404, 405, 413) in JSON too, and no traceback ever sent."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == "application/json" or is_page(request):
            raise
        message = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else exc.reason
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return web.json_response({"error": message}, status=exc.status, headers=headers)
    except _UNAVAILABLE as exc:
        log.warning("operator request: database unavailable", extra={"fields": {
            "path": request.path, "error": type(exc).__name__}})
        return web.json_response({"error": "database unavailable: retry shortly"}, status=503)
    except Exception:
        log.exception("operator request failed", extra={"fields": {"path": request.path}})
        return web.json_response({"error": "internal error"}, status=500)


@web.middleware
async def plain_text_urls(request: web.Request, handler) -> web.StreamResponse:
    """A NUL character (%00) or a lone surrogate in the path or the query is a 400 here, before
    any handler passes it on to PostgreSQL (which would refuse it with an error); so is a query
    parameter given twice."""
    texts = [request.path, *request.match_info.values(), *request.query.keys(),
             *request.query.values()]
    if not all(plain_text(text) for text in texts):
        raise json_error(web.HTTPBadRequest, "the URL must not contain NUL characters or "
                                             "invalid UTF-8")
    if len(request.query) != len(set(request.query.keys())):
        # Handlers read one value; the OpenAPI document takes one: a second is refused, not
        # silently dropped.
        raise json_error(web.HTTPBadRequest, "a query parameter may be given once")
    return await handler(request)


def answer_malformed_http(status: int, exc: BaseException | None) -> web.Response:
    """aiohttp's parse error quotes the offending line (a bearer token with it): the log keeps
    the error's class only, at debug (anyone can send garbage), and the answer echoes nothing."""
    log.debug("malformed HTTP refused", extra={"fields": {
        "status": status, "error": type(exc).__name__ if exc else None}})
    return web.json_response({"error": "malformed HTTP request"}, status=status)


class OpsAppRunner(QuietErrorsAppRunner):
    """The operator listener's runner: unparseable HTTP answered by answer_malformed_http."""

    def __init__(self, app: web.Application, **kwargs) -> None:
        super().__init__(app, answer_malformed_http, **kwargs)


def build_ops_app(pool: asyncpg.Pool, *, secure_cookies: bool = True,
                  photo_dir: Path | None = None, hsm: Hsm | None = None,
                  bulk_reload_chunk_rows: int = BULK_RELOAD_CHUNK_ROWS) -> web.Application:
    """Routes of every area, then the OpenAPI document built once from what they declare; the
    back office's pages under /bureau/ (`secure_cookies` False only on loopback; `photo_dir`:
    the applicants' photos the region checks, None where there are none; `hsm`: where the
    terminals' transport keys' check values are read, None to show none)."""
    app = web.Application(client_max_size=OPS_MAX_BODY_BYTES,
                          middlewares=[json_errors, plain_text_urls, resolve_operator])
    plain_server_header(app)
    app[POOL] = pool
    for area in AREAS:
        area.add_routes(app)
    app[api_school_year.BULK_RELOAD_CHUNK_ROWS] = bulk_reload_chunk_rows
    app[OPENAPI_DOCUMENT] = openapi_document()
    app.add_subapp(BASE + "/", build_pages_app(pool, secure_cookies=secure_cookies,
                                                  photo_dir=photo_dir, hsm=hsm))
    return app
