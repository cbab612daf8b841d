"""Terminal keys for `hdfpay bench`: a software HSM in the bench's work directory, a BDK, and
terminals of the bench's own, each with its AES-DUKPT initial key delivered as a TR-31 block.

A terminal has one message in flight at a time (its KSN counter must strictly increase, else 63),
so every load worker and every pgbench client is a terminal of its own: BENCH-E2E-nnnn for the
load generator, BENCH-PGB-nnnn for pgbench (two sets, so that neither tool's counters can collide
with the other's), spread over the active partners. The load generator reads its keys from a 0600
JSON file in the work directory. Every run reuses the same terminals, so run r starts its counters
at counter_start(r), above every counter of the runs before it.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from backoffice.provisioning import new_bdk, provision_unkeyed_terminals
from hsm.dukpt import MAX_COUNTER
from hsm.software_backend import SoftwareHsm
from terminal_protocol.ksn_counter import MemoryCounter
from terminal_protocol.terminal_keys import TerminalKeys

E2E_TERMINAL = "BENCH-E2E-{:04d}"
PGBENCH_TERMINAL = "BENCH-PGB-{:04d}"
MAX_BENCH_TERMINALS = 1000            # per tool: the largest concurrency the bench provisions for
# Run r uses counters (r << 24) + 1, + 2, ...: 16 million messages per terminal and run, far more
# than any run sends; 255 runs fit under the 32-bit counter.
COUNTER_RUN_SHIFT = 24
MAX_RUNS = MAX_COUNTER >> COUNTER_RUN_SHIFT
KEYSTORE_FILE = "keystore.json"
KEY_FILE = "terminal-keys.json"
KEY_FILE_MODE = 0o600


def counter_start(run: int) -> int:
    """Above every counter of runs 1..run-1 (the first counter of run r is this + 1)."""
    if not 1 <= run <= MAX_RUNS:
        raise ValueError(f"run {run}: the bench counts at most {MAX_RUNS} runs")
    return run << COUNTER_RUN_SHIFT


@dataclass(frozen=True)
class BenchKeys:
    """What the runs need: the keystore (for the server), the load generator's key file, and
    pgbench's terminals with their initial key ids (pgbench sends no MAC, only the KSN)."""
    keystore: Path
    passphrase: str = field(repr=False)
    key_file: Path
    bdk: str
    e2e_terminals: list[str]
    pgbench_terminals: list[str]
    pgbench_key_ids: list[bytes]
    provision_s: float

    @property
    def terminals(self) -> list[str]:
        return self.e2e_terminals + self.pgbench_terminals

    def server_env(self, mac: bool, metrics: bool = True,
                   group_commit: bool = True) -> dict[str, str]:
        """The server's keystore (hsm/config.py), whether it checks the terminals' MACs, whether
        it keeps its per-request metrics, whether it commits in groups (said either way: never
        inherited)."""
        return {"HDFPAY_HSM_BACKEND": "software", "HDFPAY_KEYSTORE": str(self.keystore),
                "HDFPAY_KEYSTORE_PASSPHRASE": self.passphrase,
                "HDFPAY_TERMINAL_AUTHENTICATION": "dukpt" if mac else "none",
                "HDFPAY_METRICS": "on" if metrics else "off",
                "HDFPAY_GROUP_COMMIT": "on" if group_commit else "off"}


async def provision_bench_terminals(conn: asyncpg.Connection, workdir: Path,
                                    count: int) -> BenchKeys:
    """`count` ACTIVE terminals per tool over the ACTIVE partners; a keystore under a random
    passphrase with a BDK; every unkeyed terminal keyed (the seeded ones too, as a region would)."""
    started = time.perf_counter()
    partners = [r["id"] for r in await conn.fetch(
        "SELECT id FROM partners WHERE status = 'ACTIVE' ORDER BY id")]
    e2e = [E2E_TERMINAL.format(n) for n in range(1, count + 1)]
    pgb = [PGBENCH_TERMINAL.format(n) for n in range(1, count + 1)]
    await conn.executemany(
        "INSERT INTO terminals (id, partner_id, status) VALUES ($1, $2, 'ACTIVE')",
        [(t, partners[i % len(partners)]) for names in (e2e, pgb) for i, t in enumerate(names)])
    passphrase = secrets.token_hex(16)
    keystore = workdir / KEYSTORE_FILE
    hsm = SoftwareHsm(keystore, passphrase=passphrase, create=True)
    try:
        bdk = new_bdk(hsm)
        deliveries = await provision_unkeyed_terminals(conn, hsm)
    finally:
        hsm.close()
    key_file = workdir / KEY_FILE
    _write_private(key_file, {t: {"initial_key_id": deliveries[t][0].initial_key_id.hex(),
                                  "key_block": deliveries[t][0].key_block,
                                  "transport_key": deliveries[t][1].hex()} for t in e2e})
    return BenchKeys(keystore, passphrase, key_file, f"{bdk.alias} (KCV {bdk.kcv})", e2e, pgb,
                     [deliveries[t][0].initial_key_id for t in pgb],
                     round(time.perf_counter() - started, 2))


def _write_private(path: Path, document: dict) -> None:
    """Created 0600 (the work directory is world-readable for PostgreSQL), never overwritten."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, KEY_FILE_MODE)
    with os.fdopen(fd, "w") as handle:
        json.dump(document, handle)


def load_terminal_keys(key_file: Path | str, terminals: list[str],
                       start: int) -> list[TerminalKeys]:
    """Each terminal's keys as the terminal holds them, unwrapped from its TR-31 block with its
    transport key, its counter starting above `start`."""
    document = json.loads(Path(key_file).read_text())
    missing = [t for t in terminals if t not in document]
    if missing:
        raise ValueError(f"no key for terminal(s) {', '.join(missing)} in {key_file}")
    return [TerminalKeys.from_key_block(document[t]["key_block"],
                                        bytes.fromhex(document[t]["transport_key"]),
                                        MemoryCounter(start),
                                        bytes.fromhex(document[t]["initial_key_id"]))
            for t in terminals]
