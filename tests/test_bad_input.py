"""Hostile and broken requests: a clear JSON error with a response code, never a 500, never a
debit; and the server's own limits (in-flight requests, request timeout) answer 91."""

from __future__ import annotations

import asyncio
import dataclasses
import json

import aiohttp
import asyncpg
import pytest

from authorizer.listener import METRICS
from hdfpay.server import running_server
from ledger.demo_region import card_uid
from terminal_protocol.client import TerminalClient
from terminal_protocol.codec import MAX_REQUEST_BODY_BYTES
from terminal_protocol.terminal_keys import ForgedResponse
from terminal_protocol.transport import KSN_HEADER, MAC_HEADER, TERMINAL_ID_HEADER, TERMINAL_PATH

from concurrency_helpers import lock_wallet
from conftest import ACTIVE_TERMINAL, CROWD_TERMINALS

GOOD = {"v": 1, "type": "purchase", "request_id": "bad-input-0001", "stan": 1,
        "card_uid": card_uid(5).hex().upper(), "amount_cents": 1_00,
        "local_time": "2026-11-26T10:00:00", "partial_ok": True}


def _with(**changes) -> bytes:
    body = dict(GOOD)
    for key, value in changes.items():
        if value is None:
            body.pop(key)
        else:
            body[key] = value
    return json.dumps(body).encode()


CASES = {
    "malformed json": b'{"v": 1, "type": "purchase",',
    "not an object": b"[1, 2, 3]",
    "empty body": b"",
    "missing field": _with(amount_cents=None),
    "extra field": _with(pin="1234"),
    "negative amount": _with(amount_cents=-5),
    "zero amount": _with(amount_cents=0),
    "absurd amount": _with(amount_cents=10**15),
    "amount as float": _with(amount_cents=12.5),
    "amount as string": _with(amount_cents="100"),
    "unknown message type": _with(type="withdrawal"),
    "wrong version": _with(v=2),
    "bad card uid": _with(card_uid="04-00-00"),
    "lowercase card uid": _with(card_uid=card_uid(0xAB).hex()),
    "request id too long": _with(request_id="x" * 65),
    "stan out of range": _with(stan=1_000_000),
    "time with zone": _with(local_time="2026-11-26T10:00:00+01:00"),
    "nul bytes": b'{"v": 1, "type": "purchase\x00"}',
    "invalid utf-8": b'{"v": 1, "type": "\xff\xfe"}',
    "request id with a trailing newline": _with(request_id="bad-input-0001\n"),
    "card uid with a trailing newline": _with(card_uid=card_uid(5).hex().upper() + "\n"),
    # A terminal whose parser keeps the first key would read 1,00 € where the server read 99,00 €.
    "duplicate key": _with()[:-1] + b', "amount_cents": 9900}',
    "duplicate key in a nested object": json.dumps(
        {"v": 1, "type": "batch_close", "request_id": "dup-close-0001", "stan": 1,
         "totals": {"purchases_count": 0, "purchases_cents": 0, "reversals_count": 0,
                    "reversals_cents": 0, "refunds_count": 0, "refunds_cents": 0}}
    ).encode()[:-2] + b', "refunds_cents": 5}}',
    "reversal of itself": json.dumps({"v": 1, "type": "reversal", "request_id": "self-rev-0001",
                                      "stan": 1, "original_request_id": "self-rev-0001"}).encode(),
}


def _signed(keys, body: bytes, content_type: str = "application/json") -> dict:
    """Genuine terminal headers for these bytes: the body is what is wrong, not the MAC."""
    ksn, mac = keys.sign_request("POST", TERMINAL_PATH, body)
    return {TERMINAL_ID_HEADER: ACTIVE_TERMINAL, KSN_HEADER: ksn.hex().upper(),
            MAC_HEADER: mac.hex().upper(), "Content-Type": content_type}


async def _post(url: str, body: bytes, headers: dict) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as session:
        async with session.post(url + TERMINAL_PATH, data=body, headers=headers) as reply:
            return reply.status, json.loads(await reply.read())


async def _assert_nothing_recorded(conn) -> None:
    assert await conn.fetchval("SELECT count(*) FROM authorizations") == 0
    assert await conn.fetchval("SELECT count(*) FROM transfers WHERE code = 'PURCHASE'") == 0


@pytest.mark.parametrize("case", sorted(CASES))
async def test_bad_body_gets_a_format_error(server, conn, keys_for, case):
    status, answer = await _post(server.url, CASES[case], _signed(keys_for(ACTIVE_TERMINAL), CASES[case]))
    assert status == 400
    assert (answer["type"], answer["rc"]) == ("error", "30") and answer["detail"]
    await _assert_nothing_recorded(conn)


async def test_oversized_body(server, conn, keys_for):
    body = _with(request_id="x" * 60)[:-1] + b"," + b'"pad": "' + b"y" * MAX_REQUEST_BODY_BYTES + b'"}'
    status, answer = await _post(server.url, body, _signed(keys_for(ACTIVE_TERMINAL), body))
    assert (status, answer["rc"]) == (413, "30")
    await _assert_nothing_recorded(conn)


async def test_oversized_chunked_body(server, conn):
    async def chunks():
        for _ in range(64):
            yield b" " * 1024
    async with aiohttp.ClientSession() as session:
        async with session.post(server.url + TERMINAL_PATH, data=chunks(),
                                headers={TERMINAL_ID_HEADER: ACTIVE_TERMINAL,
                                         "Content-Type": "application/json"}) as reply:
            assert reply.status == 413
            assert json.loads(await reply.read())["rc"] == "30"
    await _assert_nothing_recorded(conn)


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded"])
async def test_bad_content_type(server, conn, keys_for, content_type):
    status, answer = await _post(server.url, _with(),
                                 _signed(keys_for(ACTIVE_TERMINAL), _with(), content_type))
    assert (status, answer["rc"]) == (415, "30")
    await _assert_nothing_recorded(conn)


@pytest.mark.parametrize("method, path, status", [
    ("GET", TERMINAL_PATH, 405), ("POST", "/v1/nothing-here", 404), ("PUT", TERMINAL_PATH, 405),
])
async def test_unknown_paths_and_methods_answer_in_json(server, conn, method, path, status):
    async with aiohttp.ClientSession() as session:
        async with session.request(method, server.url + path, data=_with()) as reply:
            assert reply.status == status
            assert reply.content_type == "application/json"
            assert json.loads(await reply.read())["rc"] == "30"
    await _assert_nothing_recorded(conn)


@pytest.mark.parametrize("headers", [{}, {TERMINAL_ID_HEADER: "bad id!"}, {TERMINAL_ID_HEADER: "x" * 40}])
async def test_missing_or_malformed_terminal_id(server, conn, headers):
    status, answer = await _post(server.url, _with(), {**headers, "Content-Type": "application/json"})
    assert (status, answer["rc"]) == (400, "30")
    await _assert_nothing_recorded(conn)


async def _wait_until(predicate, timeout_s: float = 10.0) -> None:
    """Wait for a condition the test does not control the timing of, bounded in time."""
    async with asyncio.timeout(timeout_s):
        while not await predicate():
            await asyncio.sleep(0.01)


async def _waiting_on_a_lock(conn) -> bool:
    return await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                               " AND datname = current_database()") > 0


async def test_beyond_the_in_flight_limit_the_server_answers_91_at_once(settings, dsn, conn, hsm,
                                                                         keys_for):
    limited = dataclasses.replace(settings, max_in_flight_requests=1)
    watcher = await asyncpg.connect(dsn)
    try:
        async with running_server(limited, dsn, hsm) as server, \
                   TerminalClient(server.url, ACTIVE_TERMINAL, keys_for(ACTIVE_TERMINAL)) as client, \
                   TerminalClient(server.url, CROWD_TERMINALS[0], keys_for(CROWD_TERMINALS[0])) as other:
            lock = await lock_wallet(conn, card_uid(5))
            blocked = asyncio.ensure_future(client.purchase(card_uid(5), 1_00))
            await _wait_until(lambda: _waiting_on_a_lock(watcher))
            body = _with(card_uid=card_uid(6).hex().upper(), request_id="shed-0000001")
            status, answer = await _post(server.url, body, _signed(keys_for(CROWD_TERMINALS[0]), body))
            assert (status, answer["rc"]) == (503, "91")      # at once, before authentication
            with pytest.raises(ForgedResponse):               # so a terminal reverses it
                await other.purchase(card_uid(6), 1_00)
            assert server.app[METRICS].registry.get_sample_value("hdfpay_requests_shed_total") == 2
            await lock.rollback()
            assert (await blocked).rc == "00"
    finally:
        await watcher.close()


async def test_a_request_over_its_time_limit_answers_91_and_debits_nothing(settings, dsn, conn, hsm,
                                                                            keys_for):
    hurried = dataclasses.replace(settings, request_timeout_ms=300)
    watcher = await asyncpg.connect(dsn)
    try:
        async with running_server(hurried, dsn, hsm) as server, \
                   TerminalClient(server.url, ACTIVE_TERMINAL, keys_for(ACTIVE_TERMINAL)) as client:
            lock = await lock_wallet(conn, card_uid(5))
            request = client.purchase_request(card_uid(5), 1_00)
            answer = await client.send(request)
            assert answer.rc == "91"
            await lock.rollback()
            await _wait_until(lambda: _no_query_running(watcher))
    finally:
        await watcher.close()
    # Nothing but the server's own void of it (authorizer/server_voids.py): a tombstone, so that
    # the same purchase arriving late debits nothing either.
    assert [tuple(r) for r in await conn.fetch(
        "SELECT message_type, request_hash IS NULL, amount_approved_cents FROM authorizations"
        " ORDER BY id")] == [("PURCHASE", True, 0), ("SERVER_VOID", True, 0)]
    assert await conn.fetchval("SELECT count(*) FROM transfers WHERE code = 'PURCHASE'") == 0
    assert await conn.fetchval("SELECT request_id FROM authorizations WHERE request_hash IS NULL"
                               " AND message_type = 'PURCHASE'") == request.request_id


async def _no_query_running(conn) -> bool:
    return await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE state = 'active'"
                               " AND datname = current_database() AND pid <> pg_backend_pid()") == 0
