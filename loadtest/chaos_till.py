"""One shop terminal of `hdfpay chaos`, selling while the nemesis breaks things around it.

It follows the terminal's rule to the letter: one message in flight; a purchase without a
trustworthy answer is written down as owed (loadtest.till_journal) and reversed, the same bytes
resent until answered (loadtest.reversal_duty); owed reversals go out before any new sale, and
after the run's end until none is left. What it saw is journaled, so that the bank checker holds
the ledger to it afterwards, and each approval is timed (Pulse) so that the nemesis can tell when
the bank serves again after a fault.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field

from ledger.demo_region import card_uid
from loadtest.reversal_duty import SETTLED_CODES, exchange, reverse_until_answered, uncertain
from loadtest.till_journal import TillJournal
from terminal_protocol.client import TerminalClient
from terminal_protocol.codec import encode_request
from terminal_protocol.response_codes import APPROVED_CODES

# Small sales: a 30-minute run of a few terminals never empties a seeded 100 € wallet.
CHAOS_AMOUNT_CENTS = (1, 100)
# Business answers a purchase may get here (51 once a wallet runs dry); anything else is odd.
PURCHASE_ANSWERS = frozenset({*APPROVED_CODES, "51"})
ODD_ANSWERS_KEPT = 50             # the first ones, for the report; all are counted


class Pulse:
    """When the bank approved, as (sent, answered) on time.monotonic(), in answer order."""

    def __init__(self) -> None:
        self._approvals: list[tuple[float, float]] = []

    def approved(self, sent: float, answered: float) -> None:
        self._approvals.append((sent, answered))

    def first_approval_after(self, moment: float) -> float | None:
        """When the first purchase sent after `moment` was approved (None: not yet)."""
        first = None
        for sent, answered in reversed(self._approvals):
            if answered < moment:
                break
            if sent > moment:
                first = answered if first is None else min(first, answered)
        return first


@dataclass
class TillTally:
    """What the terminals saw, summed over all of them."""
    purchases: Counter = field(default_factory=Counter)    # purchase answers by code, "none"
    reversals: Counter = field(default_factory=Counter)    # each settled reversal's code
    approved_cents: int = 0
    odd: list[str] = field(default_factory=list)
    odd_count: int = 0

    def note_odd(self, text: str) -> None:
        self.odd_count += 1
        if len(self.odd) < ODD_ANSWERS_KEPT:
            self.odd.append(text)


class ChaosTill:
    def __init__(self, client: TerminalClient, journal: TillJournal, cards: list[int],
                 rng: random.Random, think_s: float, pulse: Pulse, tally: TillTally,
                 owed: dict[str, bytes | None]) -> None:
        self.client = client
        self.terminal = client.terminal_id
        self.journal = journal
        self.cards = cards
        self.rng = rng
        self.think_s = think_s
        self.pulse = pulse
        self.tally = tally
        self.owed = dict(owed)          # purchase request id -> reversal bytes (None: not built)

    async def run(self, selling_ends: asyncio.Event) -> None:
        """Sell until `selling_ends`, then return once nothing is owed (the caller bounds it)."""
        while True:
            if self.owed:
                await self._settle(next(iter(self.owed)))
            elif selling_ends.is_set():
                return
            else:
                await self._sell()
                await asyncio.sleep(self.think_s)

    async def _sell(self) -> None:
        number = self.rng.choice(self.cards)
        cents = self.rng.randint(*CHAOS_AMOUNT_CENTS)
        request = self.client.purchase_request(card_uid(number), cents)
        self.journal.purchase(self.terminal, request.request_id, number, cents)
        sent = time.monotonic()
        response = await exchange(self.client, request)
        self.tally.purchases[response.rc if response is not None else "none"] += 1
        if uncertain(response):
            self._owe(request.request_id)
            return
        self.journal.answer(self.terminal, request.request_id, response.rc,
                            response.approved_cents)
        if response.rc not in PURCHASE_ANSWERS:
            self.tally.note_odd(f"purchase answered {response.rc} {response.detail or ''}")
        elif response.rc in APPROVED_CODES and response.approved_cents > 0:
            self.pulse.approved(sent, time.monotonic())
            self.tally.approved_cents += response.approved_cents

    def _owe(self, request_id: str) -> None:
        body = encode_request(self.client.reversal_request(request_id))
        self.journal.owe(self.terminal, request_id, body)
        self.owed[request_id] = body

    async def _settle(self, request_id: str) -> None:
        if self.owed[request_id] is None:     # replayed: the purchase left, its answer did not
            self._owe(request_id)
        response = await reverse_until_answered(self.client, self.owed[request_id])
        self.tally.reversals[response.rc] += 1
        if response.rc not in SETTLED_CODES:
            self.tally.note_odd(f"reversal answered {response.rc} {response.detail or ''}")
        self.journal.settled(self.terminal, request_id, response.rc, response.approved_cents)
        del self.owed[request_id]
