"""The cashier's screen in a terminal: a numbered menu in French, one operation at a time."""

from __future__ import annotations

import asyncio

from terminal_protocol.agent.agent import TerminalAgent
from terminal_protocol.agent.cashier_texts import PRESENT_CARD, Outcome
from terminal_protocol.amounts import AmountError, parse_euros

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


async def run_console(agent: TerminalAgent, terminal_id: str) -> None:
    print(f"Terminal {terminal_id} — carte Génération #HDF", flush=True)
    agent.on_screen = lambda text: print(text, flush=True)
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
                print(PRESENT_CARD, flush=True)
                _show(await agent.sale(amount))
        elif choice == "2":
            _show(await agent.void_last())
        elif choice == "3":
            rrn = await _ask("Référence du ticket (12 chiffres) : ")
            amount = await _amount("Montant à rembourser (€) : ") if rrn else None
            if amount is not None:
                _show(await agent.refund(rrn, amount))
        elif choice == "4":
            _show(agent.totals())
        elif choice == "5":
            _show(await agent.close_batch())
        else:
            print("Choix inconnu", flush=True)
