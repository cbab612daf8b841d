"""Reversal storm: every sale voided at once, and every message sent twice.

Each user sells, resends the very same purchase bytes under a new KSN (a network retry: the server
must replay its stored answer byte for byte and debit nothing more), voids the sale, and resends
the void the same way (the wallet is restored once, whatever the number of voids). Now and then
the void overtakes its sale, as after a terminal timeout: the void answers 25 and leaves a
tombstone, and the late sale is declined 94 without a debit. Afterwards `hdfpay loadtest` checks
that every approved sale of the run was fully voided.

    hdfpay loadtest reversal-storm --users 20 --seconds 30
"""

from __future__ import annotations

from locust import task

from loadtest.card_mix import random_approvable_card
from ledger.demo_region import card_uid
from terminal_protocol.codec import encode_request
from loadtest.terminal_user import Answer, TerminalUser

AMOUNT_CENTS = (1_00, 50_00)
LATE_ORIGINAL_SHARE = 0.1        # voids that overtake their sale
PURCHASE_ANSWERS = frozenset({"00", "10", "51"})


def same_bytes_as(first: Answer):
    """A retry's answer must be the stored one, byte for byte."""
    def check(answer: Answer) -> str | None:
        return None if answer.body == first.body else "a retry got different bytes than the first answer"
    return check


def restores(sale: Answer):
    """A void gives back exactly what the sale took."""
    def check(answer: Answer) -> str | None:
        taken = sale.response.approved_cents
        return (None if answer.response.approved_cents == taken else
                f"the void restored {answer.response.approved_cents} cents, the sale took {taken}")
    return check


class ReversalStormTill(TerminalUser):
    @task
    def sale_then_void(self) -> None:
        card = card_uid(random_approvable_card(self.rng, self.config.cards))
        sale = self.terminal.messages.purchase_request(card, self.rng.randint(*AMOUNT_CENTS))
        void = self.terminal.messages.reversal_request(sale.request_id)
        if self.rng.random() < LATE_ORIGINAL_SHARE:
            self.until_answered(void, expected={"25"})
            self.exchange(sale, "purchase", expected={"94"})
            return
        sale_body = encode_request(sale)
        first = self.exchange(sale, "purchase", expected=PURCHASE_ANSWERS, body=sale_body)
        if first is None or first.rc not in PURCHASE_ANSWERS:
            self.void(sale.request_id, expected={"00", "25"})   # no trustworthy answer: void it
            return
        self.exchange(sale, "purchase retry", check=same_bytes_as(first), body=sale_body)
        voided = self.until_answered(void, expected={"00"}, check=restores(first))
        self.exchange(void, "reversal retry", check=same_bytes_as(voided),
                      body=encode_request(void))
