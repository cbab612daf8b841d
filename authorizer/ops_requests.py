"""Small helpers every operator API handler uses: a pool connection with a bounded wait, and a
JSON object body with a bounded size (the listener's own limit is for CSV uploads)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import AsyncIterator

import asyncpg
from aiohttp import web

from authorizer.operator_auth import POOL, json_error

OPS_POOL_ACQUIRE_TIMEOUT_MS = 5000
JSON_BODY_MAX_BYTES = 64 * 1024


@contextlib.asynccontextmanager
async def acquire(request: web.Request) -> AsyncIterator[asyncpg.Connection]:
    """A connection of the operator pool; 503 (JSON) when none frees up in time."""
    pool = request.app[POOL]
    try:
        conn = await pool.acquire(timeout=OPS_POOL_ACQUIRE_TIMEOUT_MS / 1000)
    except asyncio.TimeoutError:
        raise json_error(web.HTTPServiceUnavailable, "the database is busy: retry shortly",
                         headers={"Retry-After": "1"}) from None
    try:
        yield conn
    finally:
        await pool.release(conn)


async def read_json_object(request: web.Request, max_bytes: int = JSON_BODY_MAX_BYTES) -> dict:
    """The body as a JSON object: 413 above max_bytes, 400 if it is not a JSON object."""
    if request.content_length is not None and request.content_length > max_bytes:
        raise _too_large(max_bytes, request.content_length)
    raw = await request.read()
    if len(raw) > max_bytes:
        raise _too_large(max_bytes, len(raw))
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise json_error(web.HTTPBadRequest, "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise json_error(web.HTTPBadRequest, "the body must be a JSON object")
    return body


def _too_large(max_bytes: int, actual_bytes: int) -> web.HTTPRequestEntityTooLarge:
    return web.HTTPRequestEntityTooLarge(
        max_bytes, actual_bytes, content_type="application/json",
        text=json.dumps({"error": f"body of {actual_bytes} bytes, above {max_bytes} bytes"}))
