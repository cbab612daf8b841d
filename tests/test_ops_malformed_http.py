"""HTTP the operator listener cannot parse: answered 400 in JSON, and nothing of the request
reaches a log. aiohttp's own error quotes the offending header line in an error-level record
(and in its answer): with `Authorization: Bearer <token>` on that line, a live token would land
in the log in clear."""

from __future__ import annotations

import asyncio
import json
import logging
from urllib.parse import urlsplit

import pytest

from backoffice.operator_auth import Role

from operator_fixtures import add_test_operator


async def raw_exchange(url: str, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Sends `data` on a fresh connection to the listener at `url`; (status, headers, body)."""
    address = urlsplit(url)
    reader, writer = await asyncio.open_connection(address.hostname, address.port)
    try:
        writer.write(data)
        await writer.drain()
        raw = await reader.read()
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


def _requests(token: str) -> list[bytes]:
    start = b"GET /v1/ops/me HTTP/1.1\r\nHost: x\r\n"
    bearer = f"Authorization: Bearer {token}".encode()
    return [start + bearer + b"\x01\r\n\r\n",                   # the bad byte on the token's line
            start + bearer + b"\r\nX-Bad\x01: y\r\n\r\n",       # on a later line
            b"GET /v1/ops/me?" + token.encode() + b"\x7f HTTP/1.1\r\nHost: x\r\n\r\n"]


@pytest.mark.parametrize("case", range(3))
async def test_a_token_in_unparseable_http_is_never_logged(server, dsn, caplog, case):
    caplog.set_level(logging.DEBUG)
    _, token, _ = await add_test_operator(dsn, Role.REGION_OPERATOR)
    status, headers, body = await raw_exchange(server.ops_url, _requests(token)[case])
    assert status == 400 and headers["Content-Type"].startswith("application/json")
    assert json.loads(body) == {"error": "malformed HTTP request"}
    logged = [caplog.text] + [f"{r.getMessage()} {r.exc_text} {r.exc_info} {r.__dict__}"
                              for r in caplog.records]
    assert not [text for text in logged if token in text]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
