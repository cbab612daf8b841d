"""A PostgreSQL cluster of a test's own, for the tests that stop and start the database under a
running server (the session's cluster must never stop): migrated, clock pinned, the demo region
seeded, and the active terminal keyed from an HSM of its own (provisioning here must not replace
the session's transport keys)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator

import asyncpg

from backoffice.provisioning import new_bdk, provision_unkeyed_terminals
from hsm.software_backend import SoftwareHsm
from ledger.clock import pin_clock
from ledger.demo_region import seed_demo_region
from ledger.embedded import EmbeddedPostgres, remove_cluster
from ledger.migrate import migrate
from terminal_protocol.ksn_counter import MemoryCounter
from terminal_protocol.terminal_keys import TerminalKeys

from conftest import ACTIVE_TERMINAL, SCHOOL_DAY, TEST_SCHOOL_YEAR

OWN_REGION_BENEFICIARIES = 20


@dataclass
class OwnRegion:
    cluster: EmbeddedPostgres
    dsn: str
    hsm: SoftwareHsm
    keys: TerminalKeys          # the active terminal's


@contextlib.asynccontextmanager
async def own_cluster_region(prefix: str) -> AsyncIterator[OwnRegion]:
    """The cluster, its HSM and the active terminal's keys; all removed afterwards."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    workdir.chmod(0o755)
    cluster = EmbeddedPostgres(workdir / "pgdata")
    hsm = SoftwareHsm(workdir / "keys.json", passphrase=os.urandom(16).hex(), create=True)
    new_bdk(hsm)
    try:
        dsn = cluster.start()
        conn = await asyncpg.connect(dsn)
        try:
            await migrate(conn)
            await pin_clock(conn, SCHOOL_DAY)
            await seed_demo_region(conn, beneficiaries=OWN_REGION_BENEFICIARIES,
                                   school_year=TEST_SCHOOL_YEAR)
            delivered, transport_key = (
                await provision_unkeyed_terminals(conn, hsm))[ACTIVE_TERMINAL]
        finally:
            await conn.close()
        keys = TerminalKeys.from_key_block(delivered.key_block, transport_key, MemoryCounter(),
                                           delivered.initial_key_id)
        yield OwnRegion(cluster, dsn, hsm, keys)
    finally:
        hsm.close()
        cluster.stop()
        remove_cluster(workdir)
