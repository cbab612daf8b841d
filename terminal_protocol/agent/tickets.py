"""The agent's tickets: written for each sale, void and refund the server decided (or that got no
answer), kept in the journal, printed when the shop has a printer, reprinted as a copy. A printer
that fails never fails the operation: the outcome says the ticket was not printed."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from typing import Callable

from terminal_protocol.agent import cashier_texts as texts
from terminal_protocol.agent.cashier_texts import Outcome
from terminal_protocol.agent.journal import Journal
from terminal_protocol.agent.receipt_printer import EscposFilePrinter, PrinterError
from terminal_protocol.agent.receipts import as_copy, receipt_text


class Tickets:
    def __init__(self, journal: Journal, *, shop_name: str, terminal_id: str,
                 printer: EscposFilePrinter | None, now: Callable[[], dt.datetime]) -> None:
        self._journal = journal
        self._shop_name = shop_name
        self._terminal_id = terminal_id
        self._printer = printer
        self._now = now

    async def issue(self, outcome: Outcome, request_id: str, kind: str, card: str | None, *,
                    original_rrn: str | None = None) -> Outcome:
        """The outcome with its ticket (details `receipt`, `printed`)."""
        text = receipt_text(shop=self._shop_name, terminal_id=self._terminal_id, kind=kind,
                            at=self._now().astimezone(), card=card,
                            amount_cents=outcome.requested_cents,
                            answer=self._journal.answer(request_id), original_rrn=original_rrn)
        self._journal.record_receipt(request_id, text)
        return await self._print(dataclasses.replace(
            outcome, details={**outcome.details, "receipt": text}), text)

    async def reprint_last(self) -> Outcome:
        """The last ticket again, marked as a copy."""
        text = self._journal.last_receipt()
        if text is None:
            return texts.refused("Aucun ticket à réimprimer")
        copy = as_copy(text)
        return await self._print(Outcome("receipt", tuple(copy.rstrip("\n").split("\n")),
                                         details={"receipt": copy}), copy)

    async def _print(self, outcome: Outcome, text: str) -> Outcome:
        if self._printer is None:
            return outcome
        try:
            await asyncio.to_thread(self._printer.print_receipt, text)
        except PrinterError:
            return dataclasses.replace(outcome, lines=outcome.lines + (texts.NOT_PRINTED,),
                                       details={**outcome.details, "printed": False})
        return dataclasses.replace(outcome, details={**outcome.details, "printed": True})
