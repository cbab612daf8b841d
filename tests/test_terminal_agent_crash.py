"""Nothing lost on a bad network: `hdfpay terminal serve` as a real process, killed with
SIGKILL while it owes the server a reversal, restarted, and the reversal delivered once."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys

import aiohttp

from ledger.demo_region import card_uid

from agent_fixtures import AGENT_ENV, SUPERVISOR_PIN, write_config
from conftest import CROWD_TERMINALS, balance_of
from flaky_link import FlakyLink, server_port

CARD = card_uid(13)
AGENT_START_TIMEOUT_S = 30
DELIVERY_TIMEOUT_S = 30
STATUS_POLL_S = 0.05


def _samples(text: str) -> dict[str, float]:
    """Prometheus text format → {name{labels}: value}."""
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line and not line.startswith("#")}


class AgentProcess:
    """`hdfpay terminal serve` in a child process, and its till API."""

    def __init__(self, config, config_path) -> None:
        self.config, self._config_path = config, config_path
        self.process: asyncio.subprocess.Process | None = None
        self.session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "hdfpay.cli", "terminal", "serve",
            "--config", str(self._config_path), env={**os.environ, **AGENT_ENV},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        seen = []
        async with asyncio.timeout(AGENT_START_TIMEOUT_S):
            while not (line := await self.process.stdout.readline()).startswith(b"till API on"):
                assert line, f"the agent exited: {b''.join(seen).decode()}"
                seen.append(line)
        token = (self.config.state_dir / "till-api.token").read_text().strip()
        self.session = aiohttp.ClientSession(
            f"http://127.0.0.1:{self.config.till_api_port}",
            headers={"Authorization": f"Bearer {token}"})

    async def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        await self.process.wait()
        await self.session.close()

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.terminate()
            await self.process.wait()
        await self.session.close()

    async def status(self) -> dict:
        async with self.session.get("/v1/status") as reply:
            return await reply.json()

    async def wait_for_status(self, predicate, timeout_s: float) -> dict:
        async with asyncio.timeout(timeout_s):
            while not predicate(status := await self.status()):
                await asyncio.sleep(STATUS_POLL_S)      # polling the agent's state, bounded
        return status


async def test_a_queued_reversal_survives_kill_9_and_is_delivered_once(
        agent_config, pcscd, virtual_card, server, conn, tmp_path):
    link = await FlakyLink("127.0.0.1", server_port(server)).start()
    config = agent_config(CROWD_TERMINALS[2], url=link.url)
    agent = AgentProcess(config, write_config(config, tmp_path / "agent.toml"))
    before = await balance_of(conn, CARD)
    try:
        await agent.start()
        async with aiohttp.ClientSession() as stranger:        # no token: no sale
            url = f"http://127.0.0.1:{config.till_api_port}/v1/sale"
            async with stranger.post(url, json={"amount": "9,00"}) as reply:
                assert reply.status == 401
        async with agent.session.post("/v1/sale", json={"amount": 900}) as reply:
            assert reply.status == 400                          # cents or euros? refused
        virtual_card(0).insert(CARD)
        link.mode = "deaf"
        link.after_next_answer(link.go_down)        # the purchase is approved, then the line dies
        async with agent.session.post("/v1/sale", json={"amount": "9,00"}) as reply:
            outcome = await reply.json()
        assert (outcome["status"], outcome["collect_cents"]) == ("no_answer", 9_00)
        assert outcome["lines"][0] == "PAS DE RÉPONSE DU SERVEUR : vente annulée"
        assert await balance_of(conn, CARD) == before - 9_00
        await agent.wait_for_status(lambda s: s["pending"] == 1, DELIVERY_TIMEOUT_S)
        async with agent.session.get("/v1/metrics") as reply:     # for the shop's IT person
            metrics = _samples(await reply.text())
        assert metrics["hdfpay_agent_outbox_pending"] == 1
        assert metrics["hdfpay_agent_outbox_oldest_unsent_seconds"] > 0
        assert metrics['hdfpay_agent_operations_total{kind="sale",status="no_answer"}'] == 1
        assert "hdfpay_agent_reader_restarts" in metrics
        on_disk = _samples((config.state_dir / "agent.prom").read_text())
        assert on_disk['hdfpay_agent_operations_total{kind="sale",status="no_answer"}'] == 1
        await agent.kill()

        link.mode = "forward"
        await agent.start()
        status = await agent.wait_for_status(lambda s: s["pending"] == 0, DELIVERY_TIMEOUT_S)
        assert status["outbox"] == {"done": 1}
        async with agent.session.get("/v1/totals") as reply:
            totals = (await reply.json())["details"]["totals"]
        assert (totals["purchases_cents"], totals["reversals_cents"]) == (9_00, 9_00)
        # The close over the till API wants the supervisor's PIN, like the console.
        async with agent.session.post("/v1/close-batch") as reply:
            assert (await reply.json())["status"] == "pin_required"
        async with agent.session.post("/v1/close-batch", json={"supervisor_pin": 4821}) as reply:
            assert reply.status == 400                          # a PIN is text: "0123"
        async with agent.session.post("/v1/close-batch",
                                      json={"supervisor_pin": SUPERVISOR_PIN}) as reply:
            assert (await reply.json())["status"] == "in_balance"
    finally:
        with contextlib.suppress(Exception):
            await agent.stop()
        await link.close()
    assert await balance_of(conn, CARD) == before
    records = [json.loads(line) for line in (config.state_dir / "agent.log").read_text().splitlines()]
    sales = [r for r in records if r.get("operation") == "sale"]
    assert [(r["status"], r["requested_cents"], r["card"]) for r in sales] == [
        ("no_answer", 9_00, "04••••••••000D")]
    assert all(CARD.hex().upper() not in json.dumps(r) for r in records)
    reversals = await conn.fetch("SELECT amount_approved_cents FROM authorizations"
                                 " WHERE terminal_id = $1 AND message_type = 'REVERSAL'",
                                 CROWD_TERMINALS[2])
    assert [r["amount_approved_cents"] for r in reversals] == [9_00]


async def test_a_purchase_in_flight_at_kill_9_is_reversed_on_restart(
        agent_config, pcscd, virtual_card, server, conn, tmp_path):
    link = await FlakyLink("127.0.0.1", server_port(server)).start()
    config = agent_config(CROWD_TERMINALS[3], url=link.url)
    agent = AgentProcess(config, write_config(config, tmp_path / "agent.toml"))
    before = await balance_of(conn, CARD)
    try:
        await agent.start()
        virtual_card(0).insert(CARD)
        link.mode = "deaf"
        link.after_next_answer(lambda: agent.process.send_signal(signal.SIGKILL))
        with contextlib.suppress(aiohttp.ClientError):
            async with agent.session.post("/v1/sale", json={"amount": "6,00"}) as reply:
                await reply.read()
        await agent.process.wait()
        await agent.session.close()
        assert await balance_of(conn, CARD) == before - 6_00

        link.mode = "forward"
        await agent.start()
        status = await agent.wait_for_status(lambda s: s["pending"] == 0 and s["outbox"],
                                             DELIVERY_TIMEOUT_S)
    finally:
        with contextlib.suppress(Exception):
            await agent.stop()
        await link.close()
    assert await balance_of(conn, CARD) == before
    # The cashier is told in French; the English record goes to the agent's own log file.
    assert "VENTE INTERROMPUE (6,00\u00a0€) par l'arrêt du terminal : annulée" in status["notice"]
    records = [json.loads(line) for line in (config.state_dir / "agent.log").read_text().splitlines()]
    assert any("was in flight when the agent stopped" in r["message"] for r in records)
    assert all(CARD.hex().upper() not in json.dumps(r) for r in records)
