"""Failover with a synchronous standby (issue 17): the primary's postmaster is killed while
terminals buy; Patroni promotes the standby, the server reconnects by itself through the
multi-host DSN, and meanwhile terminals get 91 within the request's deadline, never 96. Every
91 is reversed until the reversal lands (00, or 25 when the purchase never committed). At the
end every approval a terminal saw is on the new primary, no 91'd purchase still debits, each
wallet holds exactly its start minus its approvals, and the ledger balances.

When the synchronous standby is lost instead, strict synchronous mode makes commits wait:
terminals get 91 (never an approval that lives on one machine) until it is back.

Real etcd, Patroni and PostgreSQL (ledger/ha_cluster.py), one cluster for the module.
HDFPAY_HA_FAILOVERS=N kills the primary N times (default 1, for CI's budget) and prints each gap.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import pytest

from backoffice.provisioning import new_bdk, provision_unkeyed_terminals
from hdfpay.server import running_server
from hsm.software_backend import SoftwareHsm
from ledger.clock import pin_clock
from ledger.demo_region import card_uid, seed_demo_region, terminal_id
from ledger.database import PER_HOST_CONNECT_TIMEOUT_MS, create_pool, ping
from ledger.embedded import THROWAWAY_HA_DIR, throwaway_workdir
from ledger.ha_cluster import CLUSTER_READY_TIMEOUT_S, HaCluster
from ledger.invariants import ledger_violations
from ledger.migrate import migrate
from terminal_protocol.client import TerminalClient
from terminal_protocol.ksn_counter import MemoryCounter
from terminal_protocol.terminal_keys import TerminalKeys

from conftest import SCHOOL_DAY, TEST_SCHOOL_YEAR

FAILOVERS = int(os.environ.get("HDFPAY_HA_FAILOVERS", "1"))
BENEFICIARIES = 20
# One terminal per card (a terminal has one message in flight), each on an ordinary seeded card.
TERMINAL_CARDS = {terminal_id(2, 1): 5, terminal_id(2, 2): 6, terminal_id(3, 1): 7,
                  terminal_id(3, 2): 8}
PURCHASE_CENTS = 1                 # thousands of approvals fit in a seeded wallet
PURCHASE_INTERVAL_S = 0.02         # each terminal's pace: load, not synchronisation
WARMUP_APPROVALS = 5               # per terminal, before the first kill
FAILOVER_TIMEOUT_S = 30            # kill -> approvals again; measured 2-10 s
REVERSAL_TIMEOUT_S = 60            # a 91's reversal retried until it lands, at most this long
COMMAND_TIMEOUT_S = 120           # 'db start --ha' waits for the cluster itself (90 s bound)
DEADLINE_MARGIN_S = 1.0            # HTTP and scheduling on top of the server's request deadline
SILENT_HOST_POOL_SIZE = 2
# Each of the pool's connections may spend PER_HOST_CONNECT_TIMEOUT_MS on the silent host, then
# connects to a real one (asyncpg's own bound, 60 s, is what fails without the per-host bound).
SILENT_HOST_BOUND_S = 5.0


@dataclass
class Till:
    """What one terminal saw."""
    approved: dict[str, int] = field(default_factory=dict)       # request id -> cents
    unavailable: list[str] = field(default_factory=list)         # purchases answered 91
    reversal_codes: list[str] = field(default_factory=list)      # each landed reversal's code
    answers: list[tuple[float, float, str]] = field(default_factory=list)   # sent, answered, rc
    odd: list[tuple[str, str, str | None]] = field(default_factory=list)    # type, rc, detail


async def _sell(client: TerminalClient, card: int, till: Till, stop: asyncio.Event) -> None:
    while not stop.is_set():
        sent = time.monotonic()
        request = client.purchase_request(card_uid(card), PURCHASE_CENTS)
        response = await client.send(request)
        till.answers.append((sent, time.monotonic(), response.rc))
        if response.rc not in ("00", "91"):
            till.odd.append((response.type, response.rc, response.detail))
        if response.rc in ("00", "10"):
            till.approved[request.request_id] = response.approved_cents
        elif response.rc == "91":       # a 91's answer may carry no request id: ours is known
            till.unavailable.append(request.request_id)
            till.reversal_codes.append(await _reverse(client, request.request_id, till))
        await asyncio.sleep(PURCHASE_INTERVAL_S)


async def _reverse(client: TerminalClient, original: str, till: Till) -> str:
    """The terminal's duty after a 91: the same reversal again until it is answered."""
    request = client.reversal_request(original)
    deadline = time.monotonic() + REVERSAL_TIMEOUT_S
    while time.monotonic() < deadline:
        sent = time.monotonic()
        response = await client.send(request)
        till.answers.append((sent, time.monotonic(), response.rc))
        if response.rc not in ("00", "91", "25"):
            till.odd.append((response.type, response.rc, response.detail))
        if response.rc != "91":
            return response.rc
        await asyncio.sleep(PURCHASE_INTERVAL_S)
    return "91"


async def _first_approval_after(tills: list[Till], since: float) -> float:
    deadline = time.monotonic() + FAILOVER_TIMEOUT_S
    while time.monotonic() < deadline:
        answered = [a for t in tills for s, a, rc in list(t.answers) if s > since and rc == "00"]
        if answered:
            return min(answered)
        await asyncio.sleep(PURCHASE_INTERVAL_S)
    raise AssertionError(f"no approval within {FAILOVER_TIMEOUT_S} s of killing the primary")


async def _roles_after(cluster: HaCluster, old_leader: str, since: float) -> tuple[float, float]:
    """Seconds from `since` until another node leads, then until it has a sync standby again
    (strict mode: commits wait until then)."""
    promoted_s = None
    deadline = time.monotonic() + FAILOVER_TIMEOUT_S
    while time.monotonic() < deadline:
        members = await asyncio.to_thread(cluster.members)
        leader = next((m["name"] for m in members if m["role"] == "leader"
                       and m["state"] == "running"), None)
        if promoted_s is None and leader not in (None, old_leader):
            promoted_s = time.monotonic() - since
        if promoted_s is not None and any(m["role"] == "sync_standby" and m["state"] == "running"
                                          for m in members):
            return promoted_s, time.monotonic() - since
        await asyncio.sleep(PURCHASE_INTERVAL_S)
    raise AssertionError(f"no new leader with a sync standby {FAILOVER_TIMEOUT_S} s after the kill")


async def _wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what} not within {timeout_s} s"
        await asyncio.sleep(PURCHASE_INTERVAL_S)


@pytest.fixture(scope="module")
async def ha_region():
    """A migrated, seeded region on a fresh HA cluster, with its terminals' keys."""
    with throwaway_workdir("ha-test") as throwaway:   # a killed run's cluster is stopped later
        async for region in _ha_region(throwaway / THROWAWAY_HA_DIR):
            yield region


async def _ha_region(workdir: Path):
    cluster = HaCluster(workdir)
    hsm = SoftwareHsm(workdir.parent / "keys.json", passphrase=os.urandom(16).hex(), create=True)
    new_bdk(hsm)
    try:
        # Through the command a person uses: it prints the URL, and 'db stop --ha' ends it.
        started = await asyncio.to_thread(_hdfpay, workdir, "db", "start", "--ha")
        assert started.returncode == 0, started.stderr
        dsn = started.stdout.split("DATABASE_URL=")[1].strip()
        assert dsn == cluster.dsn()
        conn = await asyncpg.connect(dsn)
        try:
            await migrate(conn)
            await pin_clock(conn, SCHOOL_DAY)
            await seed_demo_region(conn, beneficiaries=BENEFICIARIES, school_year=TEST_SCHOOL_YEAR)
            delivered = await provision_unkeyed_terminals(conn, hsm)
        finally:
            await conn.close()
        keys = {t: TerminalKeys.from_key_block(delivered[t][0].key_block, delivered[t][1],
                                               MemoryCounter(), delivered[t][0].initial_key_id)
                for t in TERMINAL_CARDS}
        yield cluster, dsn, hsm, keys
    finally:
        hsm.close()
        stopped = await asyncio.to_thread(_hdfpay, workdir, "db", "stop", "--ha")
        await asyncio.to_thread(cluster.stop)     # whatever the command left, e.g. if it failed
    assert stopped.stdout.strip() == "stopped", stopped.stderr
    assert not cluster.is_running()


def _hdfpay(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hdfpay.cli", *args], capture_output=True,
                          text=True, timeout=COMMAND_TIMEOUT_S, stdin=subprocess.DEVNULL,
                          env={**os.environ, "HDFPAY_HA_DIR": str(workdir)})


async def _balances(conn: asyncpg.Connection) -> dict[int, int]:
    return {card: await conn.fetchval(
        "SELECT a.credits_posted - a.debits_posted FROM cards c JOIN wallets w"
        " ON w.beneficiary_id = c.beneficiary_id AND w.school_year = $2"
        " JOIN accounts a ON a.id = w.account_id WHERE c.uid = $1", card_uid(card),
        TEST_SCHOOL_YEAR) for card in TERMINAL_CARDS.values()}


@contextlib.asynccontextmanager
async def _selling(ha_region, settings):
    """The server on the multi-host DSN and every terminal selling until the block ends; then
    the terminals' answers are checked against the primary's ledger."""
    cluster, dsn, hsm, keys = ha_region
    await asyncio.to_thread(cluster.wait_ready)
    conn = await asyncpg.connect(dsn)
    try:
        start_balances = await _balances(conn)
    finally:
        await conn.close()
    tills = {t: Till() for t in TERMINAL_CARDS}
    stop = asyncio.Event()
    async with running_server(settings, dsn, hsm) as server:
        clients = [TerminalClient(server.url, t, keys[t]) for t in TERMINAL_CARDS]
        for client in clients:
            await client.__aenter__()
        sellers = [asyncio.create_task(_sell(c, TERMINAL_CARDS[c.terminal_id],
                                             tills[c.terminal_id], stop)) for c in clients]
        try:
            await _wait_for(lambda: all(len(t.approved) >= WARMUP_APPROVALS
                                        for t in tills.values()), FAILOVER_TIMEOUT_S, "warm-up")
            yield tills
        finally:
            stop.set()
            await asyncio.gather(*sellers)
            for client in clients:
                await client.__aexit__(None, None, None)
    await _check_answers(tills, settings)
    await _check_ledger(dsn, tills, start_balances)


async def _check_answers(tills: dict[str, Till], settings) -> None:
    deadline_s = settings.request_timeout_ms / 1000 + DEADLINE_MARGIN_S
    answers = [a for t in tills.values() for a in t.answers]
    assert {rc for _, _, rc in answers} <= {"00", "91", "25"}, \
        f"only approvals, 91s and landed reversals: {[set(t.odd) for t in tills.values()]}"
    assert max(answered - sent for sent, answered, _ in answers) <= deadline_s
    assert all(code in ("00", "25") for t in tills.values() for code in t.reversal_codes)


async def _check_ledger(dsn: str, tills: dict[str, Till], start_balances: dict[int, int]) -> None:
    conn = await asyncpg.connect(dsn)     # whichever node is the primary now
    try:
        for terminal, till in tills.items():
            rows = {r["request_id"]: r for r in await conn.fetch(
                "SELECT request_id, response_code, amount_approved_cents, amount_reversed_cents"
                " FROM authorizations WHERE terminal_id = $1 AND message_type = 'PURCHASE'",
                terminal)}
            lost = [rid for rid in till.approved if rid not in rows
                    or rows[rid]["response_code"] not in ("00", "10")]
            assert lost == [], f"{terminal}: approvals the terminal saw are gone: {lost}"
            still_debiting = [rid for rid in till.unavailable if rid in rows
                              and rows[rid]["amount_approved_cents"]
                              != rows[rid]["amount_reversed_cents"]]
            assert still_debiting == [], f"{terminal}: 91s not reversed: {still_debiting}"
        end_balances = await _balances(conn)
        for terminal, card in TERMINAL_CARDS.items():
            spent = sum(tills[terminal].approved.values())
            assert end_balances[card] == start_balances[card] - spent, terminal
        assert await ledger_violations(conn) == []
    finally:
        await conn.close()


async def test_no_approval_is_lost_when_the_primary_dies(ha_region, settings):
    cluster = ha_region[0]
    gaps_s, timings = [], []
    async with _selling(ha_region, settings) as tills:
        for _ in range(FAILOVERS):
            old_leader, _standby = await asyncio.to_thread(cluster.wait_ready)
            killed_at = time.monotonic()
            assert cluster.kill_postmaster(old_leader) is not None
            roles = asyncio.create_task(_roles_after(cluster, old_leader, killed_at))
            gaps_s.append(await _first_approval_after(list(tills.values()), killed_at)
                          - killed_at)
            timings.append(await roles)
            new_leader, _ = await asyncio.to_thread(cluster.wait_ready, CLUSTER_READY_TIMEOUT_S)
            assert new_leader != old_leader, "Patroni restarted the primary in place"
    print(f"\ngaps without approvals after killing the primary: "
          f"{', '.join(f'{g:.2f}' for g in gaps_s)} s (p50 {statistics.median(gaps_s):.2f} s, "
          f"max {max(gaps_s):.2f} s); new leader / sync standby after "
          f"{', '.join(f'{p:.2f}/{s:.2f}' for p, s in timings)} s; "
          f"91s: {sum(len(t.unavailable) for t in tills.values())}")


async def test_without_its_standby_the_primary_approves_nothing(ha_region, settings):
    """Strict synchronous mode: with the standby's machine gone, a commit waits; the terminal
    gets 91 after the statement timeout. Non-strict mode would approve on the primary alone
    within a second (ha.md), which this test would see."""
    cluster = ha_region[0]
    async with _selling(ha_region, settings) as tills:
        _leader, standby = await asyncio.to_thread(cluster.wait_ready)
        await asyncio.to_thread(cluster.crash_node, standby)
        lost_at = time.monotonic()
        await _wait_for(lambda: all(any(s > lost_at and rc == "91" for s, _, rc in list(t.answers))
                                    for t in tills.values()), FAILOVER_TIMEOUT_S,
                        "a 91 on every terminal")
        await asyncio.to_thread(cluster.restart_node, standby)
        back_at = time.monotonic()
        approved_alone = [a for t in tills.values() for s, a, rc in list(t.answers)
                          if s > lost_at and a < back_at and rc == "00"]
        assert approved_alone == [], "approved while the primary had no standby"
        await _first_approval_after(list(tills.values()), back_at)
        await asyncio.to_thread(cluster.wait_ready)


async def test_a_silent_first_host_does_not_keep_the_pool_from_the_primary(ha_region):
    """A host that accepts TCP and never answers (a machine that hangs, or drops packets) is
    given up after its own bound, and the pool reaches the primary behind it."""
    cluster = ha_region[0]
    silent = await asyncio.start_server(lambda reader, writer: None, "127.0.0.1", 0)
    silent_port = silent.sockets[0].getsockname()[1]
    hosts = ",".join(f"127.0.0.1:{p}" for p in (silent_port, *cluster.ports().postgres))
    dsn = f"postgresql://postgres@{hosts}/hdfpay?target_session_attrs=read-write"
    try:
        async with asyncio.timeout(SILENT_HOST_BOUND_S):
            pool = await create_pool(dsn, SILENT_HOST_POOL_SIZE)
        try:
            await ping(pool, PER_HOST_CONNECT_TIMEOUT_MS / 1000)
        finally:
            await pool.close()
    finally:
        silent.close()
