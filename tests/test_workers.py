"""`hdfpay serve --workers 2` as an operator runs it: two processes on one port, each with its own
/metrics, a worker killed with SIGKILL replaced by the supervisor while the other keeps
approving, and SIGTERM stopping everything (issue 17 §1)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import aiohttp
import pytest

from loadtest.chaos_setup import free_ports
from ledger.demo_region import NO_RIGHTS_EVERY, OPPOSITION_EVERY, card_uid
from terminal_protocol.client import TerminalClient

from conftest import CROWD_TERMINALS

WORKERS = 2
# Enough separate connections that both workers get some: the kernel hashes each connection to
# a worker, so all 24 on one worker has a chance of 2 / 2**24.
CONNECTIONS = 24
READY_TIMEOUT_S = 60
STOP_TIMEOUT_S = 40
POLL_S = 0.1


async def _get(session: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    try:
        async with session.get(url) as reply:
            return reply.status, await reply.text()
    except aiohttp.ClientError:
        return 0, ""


async def _until(condition, what: str) -> None:
    async with asyncio.timeout(READY_TIMEOUT_S):
        while not await condition():
            await asyncio.sleep(POLL_S)


def _approved_count(metrics_text: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics_text.splitlines()
               if line.startswith("hdfpay_authorizations_total{")
               and 'message_type="purchase"' in line and 'response_code="00"' in line)


def _children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(entry.name))
    return found


def _ordinary_cards(first: int, count: int) -> list[bytes]:
    """Seeded cards with rights and no opposition (ledger/demo_region.py's pattern)."""
    numbers = (n for n in range(first, first + 10 * count)
               if n % NO_RIGHTS_EVERY and n % OPPOSITION_EVERY not in (1, 2, 3))
    return [card_uid(next(numbers)) for _ in range(count)]


async def _purchases(url: str, keys_for, terminals: list[str], first_card: int) -> list[str]:
    cards = _ordinary_cards(first_card, len(terminals))

    async def one(n: int, terminal_id: str) -> str:
        try:
            async with TerminalClient(url, terminal_id, keys_for(terminal_id)) as client:
                return (await client.purchase(cards[n], 1_00)).rc
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return "no answer"
    return await asyncio.gather(*(one(n, t) for n, t in enumerate(terminals)))


async def test_two_workers_share_the_port_and_a_killed_one_is_replaced(dsn, keystore_env, keys_for,
                                                                       conn, tmp_path):
    port, ops_port, portal_port = free_ports(3)
    metrics_base = free_ports(WORKERS, consecutive=True)[0]
    env = {**os.environ, **keystore_env, "DATABASE_URL": dsn, "HDFPAY_PORT": str(port),
           "HDFPAY_OPS_PORT": str(ops_port), "HDFPAY_PORTAL_PORT": str(portal_port),
           "HDFPAY_WORKER_METRICS_PORT": str(metrics_base), "HDFPAY_DRAIN_NOTICE_MS": "0",
           "HDFPAY_PHOTO_DIR": str(tmp_path / "photos")}
    log = (tmp_path / "serve.log").open("wb")
    supervisor = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hdfpay", "serve", "--workers", str(WORKERS), env=env,
        stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    metrics_urls = [f"http://127.0.0.1:{metrics_base + i}/metrics" for i in range(WORKERS)]
    try:
        async with aiohttp.ClientSession() as session:
            async def all_up() -> bool:
                answers = [await _get(session, u) for u in metrics_urls]
                return all(status == 200 for status, _ in answers) and \
                    (await _get(session, url + "/readyz"))[0] == 200
            await _until(all_up, "both workers ready")
            workers = _children(supervisor.pid)
            assert len(workers) == WORKERS

            codes = await _purchases(url, keys_for, CROWD_TERMINALS[:CONNECTIONS], 100)
            assert codes == ["00"] * CONNECTIONS
            served = [_approved_count((await _get(session, u))[1]) for u in metrics_urls]
            assert all(n > 0 for n in served) and sum(served) == CONNECTIONS, served

            victim = sorted(workers)[0]
            os.kill(victim, signal.SIGKILL)
            # Meanwhile the other worker answers; a connection that reached the dead one gets
            # no answer (the terminal reverses, as after any network loss), never a wrong one.
            during = await _purchases(url, keys_for, CROWD_TERMINALS[CONNECTIONS:2 * CONNECTIONS], 140)
            assert set(during) <= {"00", "no answer"} and "00" in during, during

            async def replaced() -> bool:
                now = _children(supervisor.pid)
                return len(now) == WORKERS and victim not in now and await all_up()
            await _until(replaced, "the killed worker replaced")
            after = await _purchases(url, keys_for, CROWD_TERMINALS[2 * CONNECTIONS:3 * CONNECTIONS], 180)
            assert after == ["00"] * CONNECTIONS
    finally:
        if supervisor.returncode is None:
            supervisor.send_signal(signal.SIGTERM)
        async with asyncio.timeout(STOP_TIMEOUT_S):
            code = await supervisor.wait()
        log.close()
    assert code == 0, (tmp_path / "serve.log").read_text()[-3000:]
    assert _children(supervisor.pid) == set()
    approved = await conn.fetchval(
        "SELECT count(*) FROM authorizations WHERE message_type = 'PURCHASE' AND response_code = '00'")
    assert approved == 2 * CONNECTIONS + during.count("00")


@pytest.mark.parametrize("workers", ["0", "65"])
async def test_a_worker_count_out_of_bounds_is_refused(workers, tmp_path):
    refused = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hdfpay", "serve", "--workers", workers,
        env={**os.environ, "DATABASE_URL": "postgresql://nobody@/nothing"},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await refused.communicate()
    assert refused.returncode != 0 and b"--workers must be between 1 and 64" in err
