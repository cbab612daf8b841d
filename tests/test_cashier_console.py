"""The cashier's screen as a shop installs and uses it: `hdfpay terminal init` from the TR-31
block, then `hdfpay terminal run` driven through its standard input, a card on the reader."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

from ledger.demo_region import card_uid

from agent_fixtures import AGENT_ENV, SUPERVISOR_PIN, TEST_ANSWER_TIMEOUT_MS, free_port
from conftest import CROWD_TERMINALS, balance_of
from pcsc_fixtures import READER_0, wait_reader_state

CARD = card_uid(14)
CONSOLE_TIMEOUT_S = 60
TMUX_TIMEOUT_S = 10
TMUX_COLUMNS, TMUX_ROWS = 120, 50
SCREEN_POLL_S = 0.05     # how often the test reads the tmux screen (bounded by CONSOLE_TIMEOUT_S)


class Console:
    """`hdfpay terminal run` driven as a cashier would: type, read the screen, act on it."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.screen = ""

    @classmethod
    async def start(cls, *args: str) -> "Console":
        return cls(await asyncio.create_subprocess_exec(
            sys.executable, "-m", "hdfpay.cli", "terminal", "run", *args,
            env={**os.environ, **AGENT_ENV}, stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT))

    async def expect(self, text: str) -> None:
        """Read the screen until `text` appears after what was already matched."""
        async def read() -> None:
            while text not in self.screen:
                chunk = await self.process.stdout.read(1024)
                assert chunk, f"the terminal ended without showing {text!r}:\n{self.screen}"
                self.screen += chunk.decode()
        await asyncio.wait_for(read(), CONSOLE_TIMEOUT_S)
        self.screen = self.screen[self.screen.index(text) + len(text):]

    async def send(self, keys: bytes) -> None:
        self.process.stdin.write(keys)
        await self.process.stdin.drain()

    async def finish(self, keys: bytes) -> str:
        """Type the last keys, wait for the end; returns what the screen showed since."""
        output, _ = await asyncio.wait_for(self.process.communicate(keys), CONSOLE_TIMEOUT_S)
        assert self.process.returncode == 0, self.screen + output.decode()
        return self.screen + output.decode()


class TmuxTill:
    """`hdfpay terminal run` on a real terminal (tmux): keys as a cashier types them, the screen
    as the cashier reads it."""

    def __init__(self, name: str, command: list[str], env: dict[str, str]) -> None:
        self.name = name
        environment = [f"{key}={value}" for key, value in env.items()]
        subprocess.run(["tmux", "new-session", "-d", "-s", name, "-x", str(TMUX_COLUMNS),
                        "-y", str(TMUX_ROWS), "env", *environment, *command], check=True,
                       timeout=TMUX_TIMEOUT_S)

    def keys(self, *keys: str) -> None:
        subprocess.run(["tmux", "send-keys", "-t", self.name, *keys], check=True,
                       timeout=TMUX_TIMEOUT_S)

    def screen(self) -> str:
        return subprocess.run(["tmux", "capture-pane", "-p", "-S", "-", "-t", self.name],
                              capture_output=True, text=True, timeout=TMUX_TIMEOUT_S).stdout

    async def expect(self, text: str, count: int = 1) -> str:
        """Wait until `text` is on the screen `count` times (bounded); returns the screen."""
        deadline = time.monotonic() + CONSOLE_TIMEOUT_S
        while (screen := self.screen()).count(text) < count:
            assert time.monotonic() < deadline, f"never showed {text!r} x{count}:\n{screen}"
            await asyncio.sleep(SCREEN_POLL_S)
        return screen

    def close(self) -> None:
        subprocess.run(["tmux", "kill-session", "-t", self.name], timeout=TMUX_TIMEOUT_S)


def _config_file(tmp_path, server_url: str, terminal: str):
    state_dir = tmp_path / "till"
    path = tmp_path / "till.toml"
    path.write_text(f'server_url = "{server_url}"\nterminal_id = "{terminal}"\n'
                    f'state_dir = "{state_dir}"\nreader = "{READER_0}"\n'
                    f"answer_timeout_ms = {TEST_ANSWER_TIMEOUT_MS}\ntill_api_port = {free_port()}\n")
    return path, state_dir


def _install_env(transport_key: bytes) -> dict[str, str]:
    return {"HDFPAY_TERMINAL_TRANSPORT_KEY": transport_key.hex(),
            "HDFPAY_TERMINAL_SUPERVISOR_PIN": SUPERVISOR_PIN}


async def _hdfpay(*args: str, stdin: bytes = b"", env: dict | None = None) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hdfpay.cli", *args, env={**os.environ, **(env or {})},
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    output, _ = await asyncio.wait_for(process.communicate(stdin), CONSOLE_TIMEOUT_S)
    return process.returncode, output.decode()


async def test_install_then_sell_and_read_the_totals(server, deliveries, pcscd, virtual_card,
                                                     conn, tmp_path):
    terminal = CROWD_TERMINALS[4]
    config, state_dir = _config_file(tmp_path, server.url, terminal)
    delivered, transport_key = deliveries[terminal]
    code, output = await _hdfpay(
        "terminal", "init", "--config", str(config), "--key-block", delivered.key_block,
        env={**AGENT_ENV, **_install_env(transport_key)})
    assert code == 0, output
    assert f"key {delivered.initial_key_id.hex().upper()} installed" in output
    sealed = (state_dir / "dukpt-state.sealed").read_bytes()
    assert transport_key not in sealed and delivered.key_block.encode() not in sealed

    before = await balance_of(conn, CARD)
    card = virtual_card(0)
    console = await Console.start("--config", str(config))
    await console.expect("Choix : ")
    card.insert(CARD)                                   # placed once the terminal runs
    output = await console.finish(b"1\n12,50\n1\nabc\n4\nq\n")
    assert "Présentez la carte" in output
    assert "ACCEPTÉ  12,50\u00a0€" in output
    assert "Montant invalide : 'abc' (exemple : 12,50)" in output
    assert "Ventes : 1  12,50\u00a0€" in output
    assert await balance_of(conn, CARD) == before - 12_50

    # The card stays on the reader; the cashier restarts the terminal and sells again: the card
    # is not charged until lifted and presented again.
    console = await Console.start("--config", str(config))
    await console.expect("Retirez la carte puis présentez-la à nouveau")
    await console.send(b"1\n0,20\n")
    await console.expect("Retirez la carte puis présentez-la à nouveau")
    assert await balance_of(conn, CARD) == before - 12_50
    card.remove()
    await asyncio.to_thread(wait_reader_state, READER_0, present=False)
    card.insert()
    await console.expect("ACCEPTÉ  0,20\u00a0€")
    await console.finish(b"q\n")
    assert await balance_of(conn, CARD) == before - 12_50 - 20


async def test_init_refuses_a_wrong_transport_key_and_a_second_install(server, deliveries,
                                                                       tmp_path):
    terminal = CROWD_TERMINALS[5]
    config, _ = _config_file(tmp_path, server.url, terminal)
    delivered, transport_key = deliveries[terminal]
    init = ("terminal", "init", "--config", str(config), "--key-block", delivered.key_block)
    wrong = bytes(b ^ 1 for b in transport_key).hex()
    code, output = await _hdfpay(*init, env={**AGENT_ENV, "HDFPAY_TERMINAL_TRANSPORT_KEY": wrong})
    assert code != 0 and "hdfpay: error:" in output and "Traceback" not in output
    good = {**AGENT_ENV, **_install_env(transport_key)}
    assert (await _hdfpay(*init, env=good))[0] == 0
    code, output = await _hdfpay(*init, env=good)
    assert code != 0 and "already holds a terminal state" in output


async def test_keys_typed_while_the_card_is_awaited_are_dropped_and_escape_cancels(
        server, deliveries, pcscd, virtual_card, conn, tmp_path):
    """On a real terminal: keys typed during "Présentez la carte" never run later as menu
    choices (a stray 2 would void the last sale), and Échap abandons the sale."""
    terminal = CROWD_TERMINALS[8]
    config, _ = _config_file(tmp_path, server.url, terminal)
    delivered, transport_key = deliveries[terminal]
    code, output = await _hdfpay(
        "terminal", "init", "--config", str(config), "--key-block", delivered.key_block,
        env={**AGENT_ENV, **_install_env(transport_key)})
    assert code == 0, output
    till = TmuxTill(f"hdfpay-till-{os.getpid()}",
                    [sys.executable, "-m", "hdfpay.cli", "terminal", "run", "--config", str(config)],
                    {**AGENT_ENV, "PYTHONPATH": os.getcwd()})
    try:
        await till.expect("Choix :")
        card = virtual_card(0)
        card.insert(CARD)
        till.keys("1", "Enter", "2,00", "Enter")
        await till.expect("ACCEPTÉ  2,00\u00a0€")
        await till.expect("Choix :", 2)
        card.remove()
        till.keys("1", "Enter", "5,00", "Enter")
        await till.expect("Présentez la carte   (Échap : abandonner la vente)")
        till.keys("2", "Enter", "1", "Enter", "4", "Enter")      # typed ahead while it waits
        till.keys("Escape")
        screen = await till.expect("VENTE ABANDONNÉE")
        screen = await till.expect("Choix :", 3)
        after = screen[screen.index("VENTE ABANDONNÉE"):]
        assert "ANNULATION" not in after and "Montant (€)" not in after and "Ventes :" not in after
        till.keys("4", "Enter")                                  # what the cashier types now runs
        await till.expect("Ventes : 1  2,00\u00a0€")
        till.keys("q", "Enter")
    finally:
        till.close()
    purchases = await conn.fetch("SELECT message_type, amount_approved_cents FROM authorizations"
                                 " WHERE terminal_id = $1 ORDER BY id", terminal)
    assert [tuple(r) for r in purchases] == [("PURCHASE", 2_00)]      # no void, no second sale
