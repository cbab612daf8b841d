"""No listener tells which aiohttp or Python it runs on (that only helps pick a known flaw):
`Server: hdfpay` on every answer of the terminal listener, the operator API and the students'
space, errors and unparseable HTTP included."""

from __future__ import annotations

import aiohttp
import pytest

from web.http_face import SERVER_HEADER

from test_ops_malformed_http import raw_exchange

GARBAGE = b"GET / HTTP/1.1\r\nHost: x\r\nX-Bad\x01: y\r\n\r\n"


@pytest.mark.parametrize("listener,paths", [
    ("url", ["/healthz", "/nope", "/v1/terminal"]),
    ("ops_url", ["/v1/ops/openapi.json", "/v1/ops/me", "/nope"]),
    ("portal_url", ["/", "/nope"]),
])
async def test_every_answer_says_only_hdfpay(server, listener, paths):
    base = getattr(server, listener)
    async with aiohttp.ClientSession(base_url=base) as session:
        for path in paths:
            async with session.get(path) as reply:
                assert reply.headers.getall("Server") == [SERVER_HEADER], (listener, path)
    _, headers, _ = await raw_exchange(base, GARBAGE)
    assert headers["Server"] == SERVER_HEADER, (listener, "malformed HTTP")
