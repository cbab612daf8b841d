"""Jinja2 templates through aiohttp-jinja2, autoescaped, each room with its own folder; the CSRF
token is a global every form calls."""

from __future__ import annotations

from pathlib import Path

SHARED_STATIC = Path(__file__).parent / "static"      # the stylesheet every web space uses

import aiohttp_jinja2
import jinja2
from aiohttp import web

from terminal_protocol.amounts import format_euros
from web.security import CSRF_FIELD, csrf_token


def setup_templates(app: web.Application, folder: Path) -> None:
    environment = aiohttp_jinja2.setup(
        app, loader=jinja2.FileSystemLoader(folder), autoescape=True,
        undefined=jinja2.StrictUndefined, context_processors=[_request_context])
    environment.filters["euros"] = format_euros
    environment.filters["date_fr"] = lambda day: day.strftime("%d/%m/%Y")
    environment.filters["datetime_fr"] = _datetime_fr


async def _request_context(request: web.Request) -> dict:
    return {"csrf_field": CSRF_FIELD, "csrf_token": lambda: csrf_token(request),
            "request": request}


def _datetime_fr(at, zone=None) -> str:
    """An instant as a French reader reads it; `zone` (the business time zone) for instants the
    database gives in UTC."""
    return (at.astimezone(zone) if zone is not None else at).strftime("%d/%m/%Y à %H:%M")


def add_shared_static(app: web.Application, prefix: str) -> None:
    """The shared stylesheet at `prefix` (e.g. /static/web), before the room's own files."""
    app.router.add_static(prefix, SHARED_STATIC)
