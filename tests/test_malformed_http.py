"""HTTP that aiohttp itself cannot parse gets the protocol's JSON answer too, and refusals before
authentication are counted, and logged at warning at most once an interval: an unauthenticated
client cannot fill the disk with tracebacks."""

from __future__ import annotations

import asyncio
import json
import logging

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from terminal_protocol.transport import TERMINAL_PATH

from flaky_link import server_port as server_port_of

GARBAGE_CONNECTIONS = 30
BAD_LENGTH = (f"POST {TERMINAL_PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              "Content-Length: -1\r\n\r\n").encode()


async def _raw(port: int, data: bytes) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
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


async def test_a_negative_content_length_gets_a_json_format_error(server):
    status, headers, body = await _raw(server_port_of(server), BAD_LENGTH)
    assert status == 400 and headers["Content-Type"].startswith("application/json")
    assert json.loads(body)["rc"] == "30"


async def test_garbage_is_counted_and_logged_quietly(server, caplog):
    caplog.set_level(logging.DEBUG)
    for _ in range(GARBAGE_CONNECTIONS):
        await _raw(server_port_of(server), BAD_LENGTH)
    records = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not [r for r in records if r.levelno >= logging.ERROR or r.exc_info]
    assert 1 <= len(records) < GARBAGE_CONNECTIONS / 2
    async with aiohttp.ClientSession() as session:
        async with session.get(server.url + "/metrics") as reply:
            text = await reply.text()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    assert samples[("hdfpay_requests_refused_total", (("reason", "malformed_http"),))] == \
        GARBAGE_CONNECTIONS


async def test_refusals_before_authentication_are_counted(server):
    async with aiohttp.ClientSession() as session:
        await (await session.post(server.url + TERMINAL_PATH, data=b"{}",
                                  headers={"Content-Type": "text/plain"})).read()
        await (await session.post(server.url + TERMINAL_PATH, data=b"x" * 4096,
                                  headers={"Content-Type": "application/json"})).read()
        await (await session.post(server.url + TERMINAL_PATH, data=b"{}",
                                  headers={"Content-Type": "application/json"})).read()
        async with session.get(server.url + "/metrics") as reply:
            text = await reply.text()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    for reason in ("content_type", "too_large", "identity"):
        assert samples[("hdfpay_requests_refused_total", (("reason", reason),))] == 1, reason
