"""The server's void of a purchase survives the database being down when it is owed: the
ledger approves, the database stops before the answer is MAC'd (so the terminal gets an unsigned
91 and the void finds no database), and the void lands once the database is back. Meanwhile a
copy of the purchase is answered 91 and never run; afterwards it is 94."""

from __future__ import annotations

import asyncio
import json

import asyncpg

from authorizer.listener import METRICS
from hdfpay.server import running_server
from ledger.demo_region import card_uid
from ledger.invariants import ledger_violations
from terminal_protocol.client import TerminalClient
from terminal_protocol.codec import decode_response, encode_request

from conftest import ACTIVE_TERMINAL, balance_of
from own_cluster import own_cluster_region
from test_server_voids import HsmThatCannotMacTheFirstAnswer, post_signed, server_voids, until

CARD = card_uid(5)


def _sample(server, name: str) -> float:
    return server.app[METRICS].registry.get_sample_value(name)


async def test_a_void_owed_while_the_database_is_down_lands_when_it_is_back(settings):
    async with own_cluster_region("hdfpay-void-restart-") as region:
        cluster, dsn, keys = region.cluster, region.dsn, region.keys
        conn = await asyncpg.connect(dsn)
        try:
            before = await balance_of(conn, CARD)
        finally:
            await conn.close()
        failing = HsmThatCannotMacTheFirstAnswer(region.hsm, before_failing=cluster.stop)

        async with running_server(settings, dsn, failing) as server, \
                TerminalClient(server.url, ACTIVE_TERMINAL, keys) as client:
            request = client.purchase_request(CARD, 20_00)
            body = encode_request(request)
            assert json.loads(await post_signed(server.url, keys, body))["rc"] == "91"
            await until(lambda: _sample(server, "hdfpay_server_void_retries_total") >= 1,
                        "the void found the database down")
            assert _sample(server, "hdfpay_server_voids_pending") == 1
            copy = decode_response(await client.send_raw(body))
            assert (copy.rc, copy.detail) == ("91", "being voided, reverse it")
            await asyncio.to_thread(cluster.start)
            await until(lambda: server_voids(server, "credited") == 1, "the void landed")
            assert _sample(server, "hdfpay_server_voids_pending") == 0
            retried = decode_response(await client.send_raw(body))
            assert (retried.rc, retried.approved_cents) == ("94", 0)

        conn = await asyncpg.connect(dsn)
        try:
            assert await balance_of(conn, CARD) == before
            assert [tuple(r) for r in await conn.fetch(
                "SELECT message_type, response_code, amount_approved_cents,"
                " amount_server_voided_cents FROM authorizations ORDER BY id")] == [
                ("PURCHASE", "00", 20_00, 20_00), ("SERVER_VOID", "00", 20_00, 0)]
            assert await ledger_violations(conn) == []
        finally:
            await conn.close()
