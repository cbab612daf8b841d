"""Back-to-school peak: every till of every partner shop selling at once, on many cards.

Each user is a shop's terminal selling baskets of its shop's kind (school books, or a vocational
student's equipment) to any student of the region: most cards pay in full, some only in part (the
wallet runs dry and the shop collects the rest: 10) or not at all (51), a few are opposed or
without rights for the year. Now and then the customer gives up right after paying (the cashier
voids the sale) or brings an item back later (refund of that item by the ticket's RRN).

    hdfpay loadtest peak --users 20 --seconds 60
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from locust import task

from loadtest.card_mix import basket_cents, random_card
from ledger.demo_region import card_uid
from loadtest.terminal_user import TerminalUser

PARTIAL_OK_SHARE = 0.8       # tills that can collect the rest another way (cash, bank card)
VOID_SHARE = 0.03            # sales voided right away (the customer gives up)
REFUND_SHARE = 0.04          # sales after which a customer brings back an earlier item
TICKETS_KEPT = 20            # recent tickets a till can refund (its own shop's sales)


@dataclass
class Ticket:
    rrn: str
    card: bytes               # the card that paid: the refund goes back to it
    items_cents: list[int]
    refundable_cents: int     # approved minus what was refunded already


class PeakTill(TerminalUser):
    def on_start(self) -> None:
        super().on_start()
        self.tickets: deque[Ticket] = deque(maxlen=TICKETS_KEPT)

    @task
    def sale(self) -> None:
        items = basket_cents(self.rng, self.terminal.category)
        number = random_card(self.rng, self.config.cards)
        request, answer = self.purchase(card_uid(number), sum(items),
                                        partial_ok=self.rng.random() < PARTIAL_OK_SHARE)
        if answer is not None and answer.approved:
            if self.rng.random() < VOID_SHARE:
                self.void(request.request_id)
            else:
                self.tickets.append(Ticket(answer.response.rrn, card_uid(number), items,
                                           answer.response.approved_cents))
        if self.tickets and self.rng.random() < REFUND_SHARE:
            self._refund_an_item()

    def _refund_an_item(self) -> None:
        ticket = self.rng.choice(self.tickets)
        amount = min(self.rng.choice(ticket.items_cents), ticket.refundable_cents)
        answer = self.refund(ticket.rrn, amount, ticket.card)
        if answer.approved:
            ticket.refundable_cents -= answer.response.approved_cents
        if ticket.refundable_cents <= 0:
            self.tickets.remove(ticket)
