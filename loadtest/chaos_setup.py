"""The bank `hdfpay chaos` breaks: a loopback HA cluster in the run's throwaway directory, a
small seeded region with terminals of the run's own, and `hdfpay serve --workers N` on the
multi-host DSN, as an operator would run them (each its own process, so that the nemesis can
kill them)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import signal
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator

import aiohttp

from hdfpay.demo import demo_business_time
from ledger import school_calendar
from ledger.clock import pin_clock
from ledger.database import connection
from ledger.demo_region import seed_demo_region
from ledger.embedded import THROWAWAY_HA_DIR, child_processes
from ledger.ha_cluster import HaCluster
from ledger.migrate import migrate
from loadtest.bank_check import wallet_balances
from loadtest.bench import SERVER_ENV_DROPPED
from loadtest.bench_keys import BenchKeys, provision_bench_terminals
from loadtest.bench_load import approvable

LOOPBACK = "127.0.0.1"
SERVER_LOG = "server.log"
SERVER_READY_TIMEOUT_S = 60       # every worker imports, opens its pools, listens
SERVER_STOP_TIMEOUT_S = 40        # each worker drains (its own bounds) under the supervisor
PROBE_TIMEOUT_S = 1.0
POLL_INTERVAL_S = 0.2
FREE_PORT_ATTEMPTS = 100


@dataclass
class ChaosBank:
    """Everything the run's terminals, nemesis and checks need."""
    workdir: Path
    cluster: HaCluster
    dsn: str
    keys: BenchKeys
    terminals: list[str]
    cards: list[int]
    school_year: int
    business_time: dt.datetime
    balances_before: dict[int, int] = field(default_factory=dict)
    url: str = ""
    metrics_urls: list[str] = field(default_factory=list)
    supervisor_pid: int = 0

    def command_env(self) -> dict[str, str]:
        """What an `hdfpay` command run against this bank needs: the DSN and the keystore."""
        inherited = {k: v for k, v in os.environ.items() if k not in SERVER_ENV_DROPPED}
        return {**inherited, "DATABASE_URL": self.dsn, "PYTHONUNBUFFERED": "1",
                **self.keys.server_env(mac=True)}


async def open_bank(workdir: Path, terminals: int, cards: int,
                    business_time: dt.datetime | None) -> ChaosBank:
    """The cluster started (its primary and synchronous standby), migrated, the clock pinned
    (the wallet window open), the region seeded, the terminals keyed, the balances noted."""
    cluster = HaCluster(workdir / THROWAWAY_HA_DIR)
    dsn = await asyncio.to_thread(cluster.start)
    async with connection(dsn) as conn:
        await migrate(conn)
        if business_time is None:
            business_time, school_year = await demo_business_time(conn)
        else:
            school_year = await school_calendar.school_year_of(conn, business_time)
        await pin_clock(conn, business_time)
        await seed_demo_region(conn, beneficiaries=cards, school_year=school_year)
        keys = await provision_bench_terminals(conn, workdir, terminals)
        numbers = [n for n in range(1, cards + 1) if approvable(n)]
        bank = ChaosBank(workdir, cluster, dsn, keys, keys.e2e_terminals, numbers, school_year,
                         business_time)
        bank.balances_before = await wallet_balances(conn, numbers, school_year)
    return bank


@contextlib.asynccontextmanager
async def serving(bank: ChaosBank, workers: int) -> AsyncIterator[None]:
    """`hdfpay serve --workers N` on the multi-host DSN (target_session_attrs=read-write: each
    connection finds the primary), ready when every worker answers; SIGTERM at the end."""
    port, ops_port, portal_port = free_ports(3)
    metrics_base = free_ports(workers, consecutive=True)[0]
    env = {**bank.command_env(), "HDFPAY_PORT": str(port), "HDFPAY_OPS_PORT": str(ops_port),
           "HDFPAY_PORTAL_PORT": str(portal_port), "HDFPAY_WORKER_METRICS_PORT": str(metrics_base),
           "HDFPAY_DRAIN_NOTICE_MS": "0", "HDFPAY_PHOTO_DIR": str(bank.workdir / "photos")}
    bank.url = f"http://{LOOPBACK}:{port}"
    bank.metrics_urls = [f"http://{LOOPBACK}:{metrics_base + i}/metrics" for i in range(workers)]
    with (bank.workdir / SERVER_LOG).open("ab") as log:
        supervisor = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "hdfpay", "serve", "--host", LOOPBACK, "--workers", str(workers),
            env=env, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log)
    bank.supervisor_pid = supervisor.pid
    try:
        async with asyncio.timeout(SERVER_READY_TIMEOUT_S):
            while not await workers_ready(bank, workers):
                if supervisor.returncode is not None:
                    raise RuntimeError(f"hdfpay serve exited {supervisor.returncode} (see "
                                       f"{SERVER_LOG})")
                await asyncio.sleep(POLL_INTERVAL_S)
        yield
    finally:
        if supervisor.returncode is None:
            supervisor.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(SERVER_STOP_TIMEOUT_S):
                    await supervisor.wait()
            except TimeoutError:
                for pid in [supervisor.pid, *child_processes(supervisor.pid)]:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                await supervisor.wait()


async def workers_ready(bank: ChaosBank, workers: int) -> bool:
    """Every worker process there and answering on its own /metrics."""
    if len(child_processes(bank.supervisor_pid)) != workers:
        return False
    timeout = aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for url in bank.metrics_urls:
            try:
                async with session.get(url) as reply:
                    if reply.status != 200:
                        return False
            except (aiohttp.ClientError, TimeoutError):
                return False
    return True


def free_ports(count: int, consecutive: bool = False) -> list[int]:
    """Ports free now (bound, then released); `consecutive`: `count` ports in a row."""
    for _ in range(FREE_PORT_ATTEMPTS):
        sockets: list[socket.socket] = []
        try:
            first = socket.socket()
            sockets.append(first)
            first.bind((LOOPBACK, 0))
            ports = [first.getsockname()[1]]
            for n in range(1, count):
                extra = socket.socket()
                sockets.append(extra)
                extra.bind((LOOPBACK, ports[0] + n if consecutive else 0))
                ports.append(extra.getsockname()[1])
            return ports
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise RuntimeError(f"no {count} free loopback ports after {FREE_PORT_ATTEMPTS} tries")
