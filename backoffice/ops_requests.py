"""Small helpers every operator API handler uses: a pool connection with a bounded wait, a JSON
object body with a bounded size (the listener's own limit is for CSV uploads), and integer ids
from paths or bodies. Hostile input gets a 400 with a JSON error, never a 500."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
from typing import AsyncIterator

import asyncpg
from aiohttp import web

from backoffice.operator_auth import POOL, json_error

OPS_POOL_ACQUIRE_TIMEOUT_MS = 5000
JSON_BODY_MAX_BYTES = 64 * 1024
# Every id the operator API takes (path or body) fits PostgreSQL's integer: 1 to 2**31 - 1.
MAX_ID = 2**31 - 1
_ID_TEXT = re.compile(r"[0-9]{1,10}")            # ASCII digits only (str.isdigit() is not)


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
        body = json.loads(raw, parse_constant=_no_constant, parse_float=_finite_float)
    except (ValueError, RecursionError):
        # ValueError: not JSON, not UTF-8, NaN/Infinity, or an integer beyond Python's digit
        # limit (int_max_str_digits); RecursionError: nested too deep.
        raise json_error(web.HTTPBadRequest, "the body is not valid JSON (or a number in it is "
                                             "too long, or it is nested too deep)") from None
    if not isinstance(body, dict):
        raise json_error(web.HTTPBadRequest, "the body must be a JSON object")
    if not _plain_text(body):
        raise json_error(web.HTTPBadRequest, "the body's strings must be Unicode text without "
                                             "NUL characters or lone surrogates")
    return body


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of range")
    return value


def plain_text(text: str) -> bool:
    """Text PostgreSQL can store: no NUL, no lone surrogate (it must encode to UTF-8)."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _plain_text(value) -> bool:
    """Every string (keys included) of a parsed JSON value is plain_text; iterative, so that
    a deeply nested body cannot exhaust the stack."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if not plain_text(item):
                return False
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return True


def parse_id(text: str, name: str) -> int:
    """An id written in ASCII digits, 1 to MAX_ID; 400 otherwise."""
    if not _ID_TEXT.fullmatch(text) or not 1 <= int(text) <= MAX_ID:
        raise json_error(web.HTTPBadRequest, f"{name} must be an integer from 1 to {MAX_ID}")
    return int(text)


def path_id(request: web.Request, name: str) -> int:
    """The id in the path parameter `name` (the route admits ASCII digits only)."""
    return parse_id(request.match_info[name], name)


def json_id(body: dict, name: str) -> int | None:
    """The id in the body's optional field `name`: a JSON integer from 1 to MAX_ID, or null or
    absent (None); 400 otherwise."""
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_ID:
        raise json_error(web.HTTPBadRequest, f"{name} must be an integer from 1 to {MAX_ID}")
    return value


def _too_large(max_bytes: int, actual_bytes: int) -> web.HTTPRequestEntityTooLarge:
    return web.HTTPRequestEntityTooLarge(
        max_bytes, actual_bytes, content_type="application/json",
        text=json.dumps({"error": f"body of {actual_bytes} bytes, above {max_bytes} bytes"}))
