"""The server voids every purchase it answered 91 or 96 (issue 17 §4, authorizer/server_voids.py,
server_void_purchase.sql): one the ledger committed all the same is credited back once, one it
did not gets a tombstone; a retry of it is then answered 94, never 00; the terminal's own
reversal afterwards moves nothing and is answered 25; the batch totals still agree."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json

import aiohttp
import asyncpg
import pytest

from authorizer.listener import METRICS
from hdfpay.server import running_server
from hsm.interface import HsmError
from ledger.demo_region import card_uid
from ledger.invariants import ledger_violations
from terminal_protocol.client import TerminalClient
from terminal_protocol.codec import decode_response, encode_request
from terminal_protocol.messages import BatchTotals
from terminal_protocol.transport import KSN_HEADER, MAC_HEADER, TERMINAL_ID_HEADER, TERMINAL_PATH

from concurrency_helpers import lock_wallet, until
from conftest import ACTIVE_TERMINAL, CROWD_TERMINALS, balance_of, set_balance

CARD = card_uid(5)
# The advisory lock a test trigger waits on at commit: the purchase commits when the test says.
COMMIT_GATE_LOCK = 170_004
HURRIED_REQUEST_TIMEOUT_MS = 400
PATIENT_STATEMENT_TIMEOUT_MS = 30_000


def server_voids(server, effect: str) -> float:
    return server.app[METRICS].registry.get_sample_value(
        "hdfpay_server_voids_landed_total", {"effect": effect})


async def voids_of(conn, request_id: str) -> list[tuple]:
    """The SERVER_VOID row of a purchase: its code, what it gave back, its transfer."""
    return [tuple(r) for r in await conn.fetch(
        "SELECT v.response_code, v.amount_approved_cents, t.code, t.amount_cents"
        " FROM authorizations v LEFT JOIN transfers t ON t.authorization_id = v.id"
        " WHERE v.message_type = 'SERVER_VOID' AND v.request_id = 'server-void:' || $1",
        request_id)]


async def post_signed(url: str, keys, body: bytes, terminal: str = ACTIVE_TERMINAL) -> bytes:
    """Signed by the terminal's keys; the answer read whatever its MAC (or none)."""
    ksn, mac = keys.sign_request("POST", TERMINAL_PATH, body)
    headers = {TERMINAL_ID_HEADER: terminal, KSN_HEADER: ksn.hex().upper(),
               MAC_HEADER: mac.hex().upper(), "Content-Type": "application/json"}
    async with aiohttp.ClientSession() as session:
        async with session.post(url + TERMINAL_PATH, data=body, headers=headers) as reply:
            return await reply.read()


class HsmThatCannotMacTheFirstAnswer:
    """The session's HSM, except that MAC'ing the first answer fails (a token unplugged just
    after the ledger approved); `before_failing` runs first."""

    def __init__(self, hsm, before_failing=lambda: None) -> None:
        self._hsm = hsm
        self._before_failing = before_failing
        self.failed = False

    def __getattr__(self, name):
        return getattr(self._hsm, name)

    def generate_dukpt_response_mac(self, *args) -> bytes:
        if self.failed:
            return self._hsm.generate_dukpt_response_mac(*args)
        self.failed = True
        self._before_failing()
        raise HsmError("token removed")


async def assert_voided_for_good(client, conn, request_id: str, body: bytes,
                                 balance_cents: int) -> None:
    """What the terminal sees after the server's void: a retry of the purchase is 94 (the same
    bytes each time), its reversal 25 moving nothing (the same on a retry), its batch closes in
    balance counting the purchase nowhere (as the agent counts: terminal_protocol/agent)."""
    retried, again = await client.send_raw(body), await client.send_raw(body)
    assert retried == again
    assert (decode_response(retried).rc, decode_response(retried).approved_cents) == ("94", 0)
    reversal_body = encode_request(client.reversal_request(request_id))
    reversal, reversal_again = await client.send_raw(reversal_body), await client.send_raw(reversal_body)
    assert reversal == reversal_again
    reversal = decode_response(reversal)
    assert (reversal.rc, reversal.requested_cents, reversal.approved_cents) == ("25", 0, 0)
    assert await balance_of(conn, CARD) == balance_cents
    sale = await client.purchase(CARD, 5_00)
    closed = await client.batch_close(BatchTotals(purchases_count=1, purchases_cents=5_00))
    assert (sale.rc, closed.rc, closed.differences) == ("00", "00", ())
    assert await ledger_violations(conn) == []


@pytest.mark.parametrize("group_commit", [True, False], ids=["grouped", "alone"])
async def test_an_approval_whose_answer_could_not_be_macd_is_voided_by_the_server(
        settings, dsn, hsm, keys_for, conn, client, group_commit):
    """The ledger approved and committed; the answer went out as an unsigned 91, so the
    terminal never saw it approved. The server gives the money back by itself."""
    await set_balance(conn, CARD, 50_00)
    request = client.purchase_request(CARD, 20_00)
    body = encode_request(request)
    failing = HsmThatCannotMacTheFirstAnswer(hsm)
    async with running_server(dataclasses.replace(settings, group_commit=group_commit), dsn,
                              failing) as server:
        answer = json.loads(await post_signed(server.url, keys_for(ACTIVE_TERMINAL), body))
        assert (answer["rc"], failing.failed) == ("91", True)
        await until(lambda: server_voids(server, "credited") == 1, "the void landed")
    assert await balance_of(conn, CARD) == 50_00
    assert await voids_of(conn, request.request_id) == [("00", 20_00, "REVERSAL", 20_00)]
    await assert_voided_for_good(client, conn, request.request_id, body, 50_00)


@pytest.mark.parametrize("group_commit", [True, False], ids=["grouped", "alone"])
async def test_a_purchase_committing_after_its_91_is_voided(settings, dsn, hsm, keys_for, conn,
                                                            client, group_commit):
    """The purchase is decided in time, but its commit is held (a test trigger waits on an
    advisory lock the test holds, as a frozen disk would) past the request's deadline: the
    terminal gets 91. Grouped, the batch commits afterwards; alone, the cancelled call may or
    may not. Either way the purchase ends having moved nothing."""
    await set_balance(conn, CARD, 50_00)
    await conn.execute(
        "CREATE FUNCTION test_commit_gate() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        " PERFORM set_config('lock_timeout', '0', true);"
        f" PERFORM pg_advisory_xact_lock({COMMIT_GATE_LOCK}); RETURN NULL; END $$")
    await conn.execute(
        "CREATE CONSTRAINT TRIGGER test_commit_gate AFTER INSERT ON authorizations"
        " DEFERRABLE INITIALLY DEFERRED FOR EACH ROW"
        " WHEN (NEW.message_type = 'PURCHASE' AND NEW.request_hash IS NOT NULL)"
        " EXECUTE FUNCTION test_commit_gate()")
    hurried = dataclasses.replace(settings, group_commit=group_commit,
                                  request_timeout_ms=HURRIED_REQUEST_TIMEOUT_MS,
                                  db_statement_timeout_ms=PATIENT_STATEMENT_TIMEOUT_MS)
    request = client.purchase_request(CARD, 20_00)
    gate = await asyncpg.connect(dsn)
    try:
        await gate.execute("SELECT pg_advisory_lock($1)", COMMIT_GATE_LOCK)
        async with running_server(hurried, dsn, hsm) as server, \
                TerminalClient(server.url, ACTIVE_TERMINAL, keys_for(ACTIVE_TERMINAL)) as till:
            answer = await till.send(request)
            assert (answer.type, answer.rc) == ("error", "91")
            await gate.execute("SELECT pg_advisory_unlock($1)", COMMIT_GATE_LOCK)
            await until(lambda: server_voids(server, "credited") + server_voids(server, "tombstoned")
                        == 1, "the void landed")
            effect = "credited" if server_voids(server, "credited") else "tombstoned"
    finally:
        await gate.close()
    await conn.execute("DROP TRIGGER test_commit_gate ON authorizations")
    assert group_commit is False or effect == "credited"     # a batch is never cancelled
    assert await balance_of(conn, CARD) == 50_00
    assert await voids_of(conn, request.request_id) == (
        [("00", 20_00, "REVERSAL", 20_00)] if effect == "credited" else [("25", 0, None, None)])
    await assert_voided_for_good(client, conn, request.request_id, encode_request(request), 50_00)


@pytest.fixture
def one_purchase_per_card(settings):
    return dataclasses.replace(settings, max_in_flight_per_card=1)


@contextlib.asynccontextmanager
async def card_held_by_a_purchase(conn, dsn, server, keys_for):
    """A sale of CARD from another till waits on the wallet a session holds, so the card's one
    place in flight is taken. Yields a list that gets the sale's answer once the wallet is let
    go (00, or 91 if its lock wait ran out first)."""
    holder = await asyncpg.connect(dsn)
    answers: list = []
    try:
        async with TerminalClient(server.url, CROWD_TERMINALS[0],
                                  keys_for(CROWD_TERMINALS[0])) as other:
            held = await lock_wallet(holder, CARD)
            sale = asyncio.ensure_future(other.purchase(CARD, 1_00, partial_ok=False))
            try:
                await until(lambda: conn.fetchval(
                    "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE datname ="
                    " current_database() AND $1 = ANY (pg_blocking_pids(pid)))",
                    holder.get_server_pid()), "the other sale waits")
                yield answers
            finally:
                await held.rollback()
                answers.append(await sale)
    finally:
        await holder.close()


def taken_by(answers: list) -> int:
    return answers[0].approved_cents if answers[0].rc == "00" else 0


async def test_a_purchase_answered_91_before_the_ledger_leaves_a_tombstone(
        one_purchase_per_card, dsn, hsm, keys_for, conn, client):
    """"Card busy": it never reached the ledger. Its id is tombstoned, so that the same bytes
    sent again later are declined 94 and debit nothing, though the card is free by then."""
    await set_balance(conn, CARD, 50_00)
    request = client.purchase_request(CARD, 20_00)
    async with running_server(one_purchase_per_card, dsn, hsm) as server, \
            TerminalClient(server.url, ACTIVE_TERMINAL, keys_for(ACTIVE_TERMINAL)) as till:
        async with card_held_by_a_purchase(conn, dsn, server, keys_for) as other:
            busy = await till.send(request)
            await until(lambda: voids_of(conn, request.request_id), "the tombstone")
    assert (busy.rc, busy.detail) == ("91", "card busy, retry later")
    assert await voids_of(conn, request.request_id) == [("25", 0, None, None)]
    assert server_voids(server, "tombstoned") >= 1
    await assert_voided_for_good(client, conn, request.request_id, encode_request(request),
                                 50_00 - taken_by(other))


async def test_a_replayed_approved_sale_answered_91_is_not_voided(one_purchase_per_card, dsn, hsm,
                                                                 keys_for, conn):
    """Someone replays the exact bytes and headers of a sale its terminal saw approved while the
    card is busy: 91 before the ledger (which would have said 63). That transmission committed
    nothing, so the server's void must not give the sale back."""
    await set_balance(conn, CARD, 50_00)
    keys = keys_for(ACTIVE_TERMINAL)
    async with running_server(one_purchase_per_card, dsn, hsm) as server, \
            TerminalClient(server.url, ACTIVE_TERMINAL, keys) as till, \
            aiohttp.ClientSession() as session:
        body = encode_request(till.purchase_request(CARD, 20_00))
        ksn, mac = keys.sign_request("POST", TERMINAL_PATH, body)
        headers = {TERMINAL_ID_HEADER: ACTIVE_TERMINAL, KSN_HEADER: ksn.hex().upper(),
                   MAC_HEADER: mac.hex().upper(), "Content-Type": "application/json"}

        async def send() -> dict:
            async with session.post(server.url + TERMINAL_PATH, data=body, headers=headers) as r:
                return json.loads(await r.read())
        assert (await send())["rc"] == "00"
        async with card_held_by_a_purchase(conn, dsn, server, keys_for) as other:
            replayed = await send()
            await until(lambda: server_voids(server, "not_ours") == 1, "the void landed")
    assert (replayed["rc"], replayed["detail"]) == ("91", "card busy, retry later")
    assert await balance_of(conn, CARD) == 50_00 - 20_00 - taken_by(other)
    assert await voids_of(conn, json.loads(body)["request_id"]) == []
