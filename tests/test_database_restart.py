"""A restarted database loses nothing that was approved, and the server recovers by itself: the
requests caught by the restart get 91 (the terminal reverses them), later ones are served."""

from __future__ import annotations

import asyncio

import asyncpg

from hdfpay.server import running_server
from ledger.demo_region import card_uid
from ledger.invariants import ledger_violations
from terminal_protocol.client import TerminalClient

from conftest import ACTIVE_TERMINAL
from own_cluster import own_cluster_region

RECOVERY_ATTEMPTS = 20


async def test_approvals_survive_a_database_restart(settings):
    async with own_cluster_region("hdfpay-restart-") as region:
        cluster, dsn = region.cluster, region.dsn
        async with running_server(settings, dsn, region.hsm) as server, \
                   TerminalClient(server.url, ACTIVE_TERMINAL, region.keys) as client:
            before = [await client.purchase(card_uid(5), 1_00) for _ in range(3)]
            assert [r.rc for r in before] == ["00"] * 3
            await asyncio.to_thread(cluster.stop)
            during = await client.purchase(card_uid(5), 1_00)
            assert during.rc == "91"
            await asyncio.to_thread(cluster.start)
            codes = []
            for _ in range(RECOVERY_ATTEMPTS):
                codes.append((await client.purchase(card_uid(5), 1_00)).rc)
                if codes[-1] == "00":
                    break
            assert codes[-1] == "00" and set(codes) <= {"91", "00"}

        conn = await asyncpg.connect(dsn)
        try:
            recorded = {r["request_id"] for r in await conn.fetch(
                "SELECT request_id FROM authorizations WHERE response_code = '00'")}
            assert {r.request_id for r in before} <= recorded
            assert len(recorded) == 4
            assert await ledger_violations(conn) == []
        finally:
            await conn.close()
