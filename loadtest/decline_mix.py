"""Decline mix: every reason a card is refused, beside ordinary approvals, at full speed.

Each tap draws one case: unknown card (14), lost (41), stolen (43), damaged (62), no rights this
school year (57), over the per-purchase limit (61), insufficient funds (51), or an approvable card;
the cards come from the demo region's numbering (loadtest/card_mix.py). An answer other than the
case's own is a failure (a decline is right only for the right reason); afterwards
`hdfpay loadtest` checks that every decline reason was seen.

    hdfpay loadtest decline-mix --users 4 --seconds 10
"""

from __future__ import annotations

from locust import task

from loadtest.card_mix import decline_cases
from loadtest.terminal_user import TerminalUser


class DeclineMixTill(TerminalUser):
    def on_start(self) -> None:
        super().on_start()
        self.cases = decline_cases(self.config.cards, self.config.max_purchase_cents)

    @task
    def tap(self) -> None:
        case = self.rng.choice(self.cases)
        uid, amount = case.draw(self.rng, self.config.cards, self.config.max_purchase_cents)
        self.purchase(uid, amount, partial_ok=case.partial_ok, expected=case.expected)
