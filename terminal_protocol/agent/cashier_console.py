"""The cashier's screen in a terminal: a numbered menu in French, one operation at a time."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import termios
import tty

from terminal_protocol.agent.agent import TerminalAgent
from terminal_protocol.agent.cashier_texts import PRESENT_CARD, Outcome
from terminal_protocol.amounts import AmountError, parse_euros

ESCAPE = b"\x1b"               # Échap, alone (an arrow key sends it followed by more)
KEY_READ_BYTES = 64
MENU = ("1 Vente   2 Annuler la dernière vente   3 Remboursement   4 Totaux du jour"
        "   5 Clôture   q Quitter")


async def _ask(prompt: str) -> str | None:
    """One line typed by the cashier; None at the end of input."""
    try:
        return (await asyncio.to_thread(input, prompt)).strip()
    except EOFError:
        return None


def _show(outcome: Outcome) -> None:
    print("\n".join(outcome.lines), flush=True)


async def _amount(prompt: str) -> int | None:
    text = await _ask(prompt)
    if not text:
        return None
    try:
        return parse_euros(text)
    except AmountError as exc:
        print(exc.cashier_text, flush=True)
        return None


async def _confirmed(preview: Outcome) -> bool:
    """Show what would be done and ask; a refusal (nothing to void…) is shown instead."""
    _show(preview)
    if preview.status != "confirm":
        return False
    return (await _ask("Confirmer ? (o/n) : ") or "").lower() == "o"


async def _with_pin(operation) -> Outcome:
    """Run `operation(pin)`; when it asks for the supervisor's PIN, ask for it and run again."""
    outcome = await operation(None)
    while outcome.status == "pin_required":
        _show(outcome)
        pin = await _ask("Code superviseur : ")
        if not pin:
            return outcome
        outcome = await operation(pin)
    return outcome


@contextlib.contextmanager
def _keys_while_waiting(agent: TerminalAgent):
    """While a sale waits for the card: Échap cancels it, and any other key is dropped, as are
    the keys typed meanwhile when it ends (TCSAFLUSH), so that nothing typed ahead runs later as
    a menu choice (a stray 2 would void the last sale). Only on a terminal: piped input is a
    script, read as written."""
    if not sys.stdin.isatty():
        yield
        return
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    loop = asyncio.get_running_loop()

    def on_key() -> None:
        if os.read(fd, KEY_READ_BYTES) == ESCAPE:
            agent.cancel_tap()

    tty.setcbreak(fd)
    loop.add_reader(fd, on_key)
    try:
        yield
    finally:
        loop.remove_reader(fd)
        termios.tcsetattr(fd, termios.TCSAFLUSH, saved)


def _on_screen(text: str) -> None:
    """What the agent says while an operation waits; the keys the cashier may use with it."""
    print(f"{text}   (Échap : abandonner la vente)" if text == PRESENT_CARD else text, flush=True)


async def run_console(agent: TerminalAgent, terminal_id: str) -> None:
    print(f"Terminal {terminal_id} — carte Génération #HDF", flush=True)
    agent.on_screen = _on_screen
    if agent.notice:               # a card was on the reader at start: it must be lifted first
        print(agent.notice, flush=True)
    while True:
        print(MENU, flush=True)
        choice = await _ask("Choix : ")
        if choice is None or choice.lower() == "q":
            return
        if choice == "1":
            amount = await _amount("Montant (€) : ")
            if amount is not None:
                with _keys_while_waiting(agent):
                    _show(await agent.sale(amount))
        elif choice == "2":
            if await _confirmed(agent.void_preview()):
                _show(await _with_pin(agent.void_last))
        elif choice == "3":
            rrn = await _ask("Référence du ticket (12 chiffres) : ")
            amount = await _amount("Montant à rembourser (€) : ") if rrn else None
            if amount is not None:
                _show(await _with_pin(lambda pin: agent.refund(rrn, amount, pin)))
        elif choice == "4":
            _show(agent.totals())
        elif choice == "5":
            if await _confirmed(agent.close_preview()):
                _show(await _with_pin(agent.close_batch))
        else:
            print("Choix inconnu", flush=True)
