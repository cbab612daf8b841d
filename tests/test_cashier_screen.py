"""The cashier's screen (Textual) as a cashier uses it, a card on a vpcd reader of the real pcscd:
driven through Textual's pilot for the flows, and once in a real terminal (tmux) for what typing
ahead does. The screen's state word, lines and amount are what the cashier reads."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

from textual.keys import _character_to_key
from textual.widgets import Digits, Input

from ledger.demo_region import card_uid
from terminal_protocol.agent.cashier_screen import CashierScreen
from terminal_protocol.agent.runtime import running_agent

from agent_fixtures import AGENT_ENV, SUPERVISOR_PIN, TEST_ANSWER_TIMEOUT_MS, free_port
from conftest import CROWD_TERMINALS, balance_of
from pcsc_fixtures import READER_0, wait_reader_state

CARD = card_uid(14)
SCREEN_TIMEOUT_S = 30         # bound of every wait for the screen to change
SCREEN_POLL_S = 0.05
TMUX_TIMEOUT_S = 10
TMUX_COLUMNS, TMUX_ROWS = 110, 32
SCREEN_SIZE = (110, 32)


class Till:
    """The screen under Textual's pilot: type, press, read."""

    def __init__(self, app: CashierScreen, pilot) -> None:
        self.app, self.pilot = app, pilot

    async def type(self, text: str, *, enter: bool = True) -> None:
        await self.pilot.press(*(_character_to_key(c) for c in text), *(("enter",) if enter else ()))

    async def until(self, condition, what: str) -> None:
        deadline = time.monotonic() + SCREEN_TIMEOUT_S
        while not condition():
            assert time.monotonic() < deadline, (f"the screen never showed {what}: "
                                                 f"{self.app.state_word} {self.app.shown}")
            await self.pilot.pause(SCREEN_POLL_S)

    async def state(self, word: str) -> None:
        await self.until(lambda: self.app.state_word == word, word)

    async def asked(self, question: str) -> Input:
        field = self.app.query_one("#answer", Input)
        await self.until(lambda: field.display and question in str(
            self.app.query_one("#question").render()), question)
        return field

    async def idle(self) -> None:
        await self.until(lambda: not self.app.busy, "the menu back")


async def _tap_again(card) -> None:
    card.remove()
    await asyncio.to_thread(wait_reader_state, READER_0, present=False)
    card.insert()


async def test_a_sale_shows_the_amount_the_state_and_the_card(agent_config, pcscd, virtual_card,
                                                              conn):
    """Items 8 and 11: the amount is checked before the card is asked for; the amount is large;
    the state says what happens; the outcome shows the masked card with the date and time. A
    card left on the reader is not charged again after a restart (item 1)."""
    config, card = agent_config(CROWD_TERMINALS[12]), virtual_card(0)
    before = await balance_of(conn, CARD)
    async with running_agent(config, environ=AGENT_ENV) as agent:
        app = CashierScreen(agent, config.terminal_id)
        async with app.run_test(size=SCREEN_SIZE) as pilot:
            till = Till(app, pilot)
            await pilot.press("1")
            await till.asked("Montant de la vente")
            await till.type("abc")
            await till.state("IMPOSSIBLE")
            assert app.shown == ("Montant invalide : 'abc' (exemple : 12,50)",)
            await till.idle()
            await pilot.press("1")
            await till.asked("Montant de la vente")
            await till.type("12,50")
            await till.state("PRÉSENTEZ LA CARTE")
            assert str(app.query_one("#amount", Digits).value) == "12.50€"
            card.insert(CARD)
            await till.state("ACCEPTÉ")
            assert app.shown[0] == "ACCEPTÉ  12,50\u00a0€"
            assert app.shown[-1].startswith("Carte 04••••••••000E · ")
            await till.idle()
            await pilot.press("4")
            await till.state("TOTAUX DU JOUR")
            assert "Ventes : 1  12,50\u00a0€" in app.shown
            top = str(app.query_one("#top").render())
            assert f"Terminal {CROWD_TERMINALS[12]}" in top and "/20" in top       # date and time
    # Restart with the card still on the reader: it must be lifted before it pays again.
    async with running_agent(config, environ=AGENT_ENV) as agent:
        app = CashierScreen(agent, config.terminal_id)
        async with app.run_test(size=SCREEN_SIZE) as pilot:
            till = Till(app, pilot)
            await till.state("ATTENTION")
            assert app.shown == ("Retirez la carte puis présentez-la à nouveau",)
            await pilot.press("1")
            await till.asked("Montant de la vente")
            await till.type("0,20")
            await till.until(lambda: "Retirez la carte puis présentez-la à nouveau" in app.shown,
                             "lift the card first")
            assert await balance_of(conn, CARD) == before - 12_50
            await _tap_again(card)
            await till.state("ACCEPTÉ")
    assert await balance_of(conn, CARD) == before - 12_50 - 20


async def test_void_and_close_are_confirmed_and_the_close_wants_the_pin(agent_config, pcscd,
                                                                        virtual_card, conn):
    """Item 3 on the screen: 'n' keeps the sale; 'o' voids it (its first minute: no PIN); the
    close shows the totals, asks to confirm, then the PIN, typed masked."""
    config, card = agent_config(CROWD_TERMINALS[13]), virtual_card(0)
    async with running_agent(config, environ=AGENT_ENV) as agent:
        app = CashierScreen(agent, config.terminal_id)
        async with app.run_test(size=SCREEN_SIZE) as pilot:
            till = Till(app, pilot)
            card.insert(CARD)
            await pilot.press("1")
            await till.asked("Montant de la vente")
            await till.type("3,00")
            await till.state("ACCEPTÉ")
            await till.idle()
            await pilot.press("2")
            await till.asked("Confirmer ?")
            assert app.shown[0] == "Annuler la vente de 3,00\u00a0€ ?"
            await till.type("n")
            await till.idle()
            assert await _purchases_reversed(conn, CROWD_TERMINALS[13]) == [0]
            await pilot.press("2")
            await till.asked("Confirmer ?")
            await till.type("o")
            await till.state("ACCEPTÉ")
            assert app.shown[0].startswith("ANNULATION ACCEPTÉE")
            await till.idle()
            await pilot.press("5")
            await till.asked("Confirmer ?")
            assert app.shown[0] == "Clôturer le lot du jour ?"
            await till.type("o")
            field = await till.asked("Code superviseur")
            assert field.password
            await till.type("0000")
            await till.state("CODE REFUSÉ")
            assert app.shown[0] == "CODE SUPERVISEUR ERRONÉ"
            await till.idle()
            await pilot.press("5")
            await till.asked("Confirmer ?")
            await till.type("o")
            await till.asked("Code superviseur")
            await till.type(SUPERVISOR_PIN)
            await till.state("CLÔTURE : TOTAUX CONCORDANTS")
    assert await _purchases_reversed(conn, CROWD_TERMINALS[13]) == [3_00]
    assert await conn.fetchval("SELECT count(*) FROM terminal_batches WHERE terminal_id = $1",
                               CROWD_TERMINALS[13]) == 1


async def test_a_refund_asks_the_pin_and_the_card_then_the_ticket_and_the_day(
        agent_config, pcscd, virtual_card, conn):
    """Item 3 and 9 on the screen: the refund asks the ticket's reference, the amount, the PIN,
    then the card; the ticket reprints; the day's list shows each RRN."""
    config, card = agent_config(CROWD_TERMINALS[14]), virtual_card(0)
    async with running_agent(config, environ=AGENT_ENV) as agent:
        app = CashierScreen(agent, config.terminal_id)
        async with app.run_test(size=SCREEN_SIZE) as pilot:
            till = Till(app, pilot)
            card.insert(CARD)
            await pilot.press("1")
            await till.asked("Montant de la vente")
            await till.type("20,00")
            await till.state("ACCEPTÉ")
            rrn = next(line.split()[2] for line in app.shown if line.startswith("Référence"))
            await till.idle()
            before = await balance_of(conn, CARD)
            await pilot.press("3")
            await till.asked("Référence du ticket")
            await till.type(rrn)
            await till.asked("Montant à rembourser")
            await till.type("5,00")
            await till.asked("Code superviseur")
            await till.type(SUPERVISOR_PIN)
            await till.state("PRÉSENTEZ LA CARTE À REMBOURSER (CELLE DE L'ACHAT)")
            await _tap_again(card)
            await till.state("ACCEPTÉ")
            assert app.shown[0] == "REMBOURSEMENT ACCEPTÉ  5,00\u00a0€"
            await till.idle()
            await pilot.press("6")
            await till.state("TICKET RÉIMPRIMÉ")
            assert app.shown[0].strip() == "*** DUPLICATA ***" and "REMBOURSEMENT" in app.shown
            await till.idle()
            await pilot.press("7")
            await till.state("OPÉRATIONS DU JOUR")
            assert len(app.shown) == 2 and all(rrn in line for line in app.shown)
            assert "REMB." in app.shown[0] and "VENTE" in app.shown[1]
    assert await balance_of(conn, CARD) == before + 5_00


async def _purchases_reversed(conn, terminal: str) -> list[int]:
    return [r[0] for r in await conn.fetch(
        "SELECT amount_reversed_cents FROM authorizations WHERE terminal_id = $1"
        " AND message_type = 'PURCHASE' ORDER BY id", terminal)]


# -- a real terminal -----------------------------------------------------------------------

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
        return subprocess.run(["tmux", "capture-pane", "-p", "-t", self.name],
                              capture_output=True, text=True, timeout=TMUX_TIMEOUT_S).stdout

    async def expect(self, text: str) -> str:
        """Wait until `text` is on the screen (bounded); returns the screen."""
        deadline = time.monotonic() + SCREEN_TIMEOUT_S
        while text not in (screen := self.screen()):
            assert time.monotonic() < deadline, f"never showed {text!r}:\n{screen}"
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


async def _hdfpay(*args: str, env: dict | None = None) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "hdfpay.cli", *args, env={**os.environ, **(env or {})},
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    output, _ = await asyncio.wait_for(process.communicate(), SCREEN_TIMEOUT_S)
    return process.returncode, output.decode()


async def test_init_refuses_a_wrong_transport_key_and_a_second_install(server, deliveries,
                                                                       tmp_path):
    terminal = CROWD_TERMINALS[5]
    config, state_dir = _config_file(tmp_path, server.url, terminal)
    delivered, transport_key = deliveries[terminal]
    init = ("terminal", "init", "--config", str(config), "--key-block", delivered.key_block)
    wrong = bytes(b ^ 1 for b in transport_key).hex()
    code, output = await _hdfpay(*init, env={**AGENT_ENV, **_install_env(transport_key),
                                             "HDFPAY_TERMINAL_TRANSPORT_KEY": wrong})
    assert code != 0 and "hdfpay: error:" in output and "Traceback" not in output
    good = {**AGENT_ENV, **_install_env(transport_key)}
    code, output = await _hdfpay(*init, env=good)
    assert code == 0 and "supervisor PIN set" in output, output
    assert SUPERVISOR_PIN.encode() not in (state_dir / "supervisor-pin.sealed").read_bytes()
    code, output = await _hdfpay(*init, env=good)
    assert code != 0 and "already holds a terminal state" in output
    code, output = await _hdfpay("terminal", "set-pin", "--config", str(config),
                                 env={**AGENT_ENV, "HDFPAY_TERMINAL_SUPERVISOR_PIN": "12ab"})
    assert code != 0 and "4 à 8 chiffres" in output
    code, output = await _hdfpay("terminal", "run", "--config", str(config), env=AGENT_ENV)
    assert code != 0 and "run it in a terminal" in output


async def test_keys_typed_while_the_card_is_awaited_are_dropped_and_escape_cancels(
        server, deliveries, pcscd, virtual_card, conn, tmp_path):
    """On a real terminal: keys typed during "Présentez la carte" never run later as menu
    choices (a stray 2 would void the last sale), and Échap abandons the sale."""
    terminal = CROWD_TERMINALS[8]
    config, state_dir = _config_file(tmp_path, server.url, terminal)
    delivered, transport_key = deliveries[terminal]
    code, output = await _hdfpay(
        "terminal", "init", "--config", str(config), "--key-block", delivered.key_block,
        env={**AGENT_ENV, **_install_env(transport_key)})
    assert code == 0, output
    till = TmuxTill(f"hdfpay-till-{os.getpid()}",
                    [sys.executable, "-m", "hdfpay.cli", "terminal", "run", "--config", str(config)],
                    {**AGENT_ENV, "PYTHONPATH": os.getcwd(), "TERM": "xterm-256color"})
    try:
        await till.expect("Vente")
        card = virtual_card(0)
        card.insert(CARD)
        till.keys("1")
        await till.expect("Montant de la vente")
        till.keys("2,00", "Enter")
        await till.expect("ACCEPTÉ  2,00")
        card.remove()
        till.keys("1")
        await till.expect("Montant de la vente")
        till.keys("5,00", "Enter")
        await till.expect("PRÉSENTEZ LA CARTE")
        till.keys("2", "1", "4", "Enter", "o", "Enter")        # typed ahead while it waits
        till.keys("Escape")
        screen = await till.expect("ABANDONNÉE")
        assert "5,00\u00a0€ : aucun débit" in screen
        till.keys("4")                                          # what the cashier types now runs
        screen = await till.expect("TOTAUX DU JOUR")
        assert "Ventes : 1  2,00" in screen and "Annulations : 0" in screen
        till.keys("q")
    finally:
        till.close()
    purchases = await conn.fetch("SELECT message_type, amount_approved_cents FROM authorizations"
                                 " WHERE terminal_id = $1 ORDER BY id", terminal)
    assert [tuple(r) for r in purchases] == [("PURCHASE", 2_00)]      # no void, no second sale
    records = (state_dir / "agent.log").read_text()
    assert '"operation": "sale"' in records and CARD.hex().upper() not in records
