"""Terminal agents on the real stack: keys installed from the seeded terminal's TR-31 block and
sealed under a test key, the journal in the test's folder, the reader a vpcd slot of pcscd."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from dataclasses import replace
from pathlib import Path

import pytest

from ledger.demo_region import terminal_id
from terminal_protocol.agent.agent_config import AgentConfig
from terminal_protocol.agent.future_keys import FutureKeyTerminal
from terminal_protocol.agent.runtime import STATE_KEY_ENV, running_agent, sealed_state
from terminal_protocol.agent.supervisor_pin import write_pin

from pcsc_fixtures import READER_0, wait_reader_state

AGENT_STATE_KEY = os.urandom(32)
AGENT_ENV = {STATE_KEY_ENV: AGENT_STATE_KEY.hex()}
# Short enough to keep the no-answer tests quick, long enough for a loaded 2-core machine.
TEST_ANSWER_TIMEOUT_MS = 2_000
TEST_TAP_TIMEOUT_MS = 10_000
SUPERVISOR_PIN = "4821"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def write_config(config: AgentConfig, path: Path) -> Path:
    lines = [f'server_url = "{config.server_url}"', f'terminal_id = "{config.terminal_id}"',
             f'state_dir = "{config.state_dir}"', f"answer_timeout_ms = {config.answer_timeout_ms}",
             f"tap_timeout_ms = {config.tap_timeout_ms}", f"till_api_port = {config.till_api_port}"]
    if config.reader:
        lines.append(f'reader = "{config.reader}"')
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def agent_config(tmp_path, server, deliveries):
    """agent_config(terminal_id, …) → the configuration of an agent whose keys are installed."""
    def make(terminal_id: str, *, reader: str | None = READER_0, url: str | None = None,
             answer_timeout_ms: int = TEST_ANSWER_TIMEOUT_MS) -> AgentConfig:
        config = AgentConfig(server_url=url or server.url, terminal_id=terminal_id,
                             state_dir=tmp_path / f"agent-{terminal_id}", reader=reader,
                             ca_file=None, answer_timeout_ms=answer_timeout_ms,
                             tap_timeout_ms=TEST_TAP_TIMEOUT_MS, max_sale_cents=300_00,
                             till_api_port=free_port())
        if not config.keys_file.exists():
            config.state_dir.mkdir(mode=0o700)
            delivered, transport_key = deliveries[terminal_id]
            FutureKeyTerminal.install_from_key_block(
                sealed_state(config, AGENT_ENV), delivered.key_block, transport_key,
                delivered.initial_key_id).close()
            write_pin(sealed_state(config, AGENT_ENV, path=config.supervisor_pin_file),
                      SUPERVISOR_PIN)
        return config
    return make


@pytest.fixture
def agent_for(agent_config, pcscd):
    """agent_for(terminal_id, …) → `async with` a started agent reading through pcscd."""
    def make(terminal_id: str, **options):
        return running_agent(agent_config(terminal_id, **options), environ=AGENT_ENV)
    return make


def with_url(config: AgentConfig, url: str) -> AgentConfig:
    return replace(config, server_url=url)


POLL_S = 0.02   # how often a test looks at what the agent showed (bounded by the tap timeout)


async def until_shown(condition) -> None:
    """Poll what the agent showed, at most the agent's tap timeout."""
    deadline = time.monotonic() + TEST_TAP_TIMEOUT_MS / 1000
    while not condition():
        assert time.monotonic() < deadline, "the agent never showed it"
        await asyncio.sleep(POLL_S)


async def purchases_of(conn, terminal: str = terminal_id(1, 1)):   # conftest's ACTIVE_TERMINAL
    return await conn.fetch(
        "SELECT c.uid, a.amount_approved_cents, a.amount_reversed_cents, a.response_code"
        " FROM authorizations a LEFT JOIN cards c ON c.id = a.card_id"
        " WHERE a.terminal_id = $1 AND a.message_type = 'PURCHASE' ORDER BY a.id", terminal)


def tap_again(card) -> None:
    """Lift the card and place it again, once pcscd has seen it leave."""
    card.remove()
    wait_reader_state(READER_0, present=False)
    card.insert()
