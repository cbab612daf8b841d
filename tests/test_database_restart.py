"""A restarted database loses nothing that was approved, and the server recovers by itself: the
requests caught by the restart get 91 (the terminal reverses them), later ones are served."""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path

import asyncpg

from backoffice.provisioning import new_bdk, provision_unkeyed_terminals
from hdfpay.server import running_server
from hsm.software_backend import SoftwareHsm
from ledger.clock import pin_clock
from ledger.demo_region import card_uid, seed_demo_region
from ledger.embedded import EmbeddedPostgres, remove_cluster
from ledger.invariants import ledger_violations
from ledger.migrate import migrate
from terminal_protocol.client import TerminalClient
from terminal_protocol.ksn_counter import MemoryCounter
from terminal_protocol.terminal_keys import TerminalKeys

from conftest import ACTIVE_TERMINAL, SCHOOL_DAY, TEST_SCHOOL_YEAR

RECOVERY_ATTEMPTS = 20


async def test_approvals_survive_a_database_restart(settings):
    workdir = Path(tempfile.mkdtemp(prefix="hdfpay-restart-"))
    workdir.chmod(0o755)
    cluster = EmbeddedPostgres(workdir / "pgdata")
    # An HSM of its own: provisioning here must not replace the session's transport keys.
    hsm = SoftwareHsm(workdir / "keys.json", passphrase=os.urandom(16).hex(), create=True)
    new_bdk(hsm)
    try:
        dsn = cluster.start()
        conn = await asyncpg.connect(dsn)
        await migrate(conn)
        await pin_clock(conn, SCHOOL_DAY)
        await seed_demo_region(conn, beneficiaries=20, school_year=TEST_SCHOOL_YEAR)
        delivered, transport_key = (await provision_unkeyed_terminals(conn, hsm))[ACTIVE_TERMINAL]
        await conn.close()
        keys = TerminalKeys.from_key_block(delivered.key_block, transport_key, MemoryCounter(),
                                           delivered.initial_key_id)

        async with running_server(settings, dsn, hsm) as server, \
                   TerminalClient(server.url, ACTIVE_TERMINAL, keys) as client:
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
    finally:
        hsm.close()
        cluster.stop()
        remove_cluster(workdir)
