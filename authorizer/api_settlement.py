"""Operator API routes for settlement (issue 6). Mounted on the operator listener by ops_app."""

from __future__ import annotations

from aiohttp import web

# OpenAPI 3.1 path items of these routes, merged into the served document by authorizer.openapi.
OPENAPI_PATHS: dict = {}


def add_routes(app: web.Application) -> None:
    """Register this area's routes on the operator application."""
