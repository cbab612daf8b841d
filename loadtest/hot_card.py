"""Hot card: every terminal taps the same card at once, and none may overspend it.

All users sell on one card (HDFPAY_LOADTEST_HOT_CARD, demo beneficiary 4 by default), funded with
what the seed gave it (100 €). Each till keeps its last sale open and voids it at its next tap (a
customer who keeps changing their mind), so the tills' open sales together ask for more than the
wallet holds: for the whole run the wallet sits at its edge, taps race for the money each void
gives back, and the answers are approvals, partial approvals (10) and 51. Afterwards
`hdfpay loadtest` checks that the card's balance is ≥ 0 and that the approvals, net of voids, do
not exceed its funding — in the ledger and as the terminals saw them.

    hdfpay loadtest hot-card --users 20 --seconds 30
"""

from __future__ import annotations

from locust import task

from ledger.demo_region import card_uid
from loadtest.terminal_user import TerminalUser

# Four tills' open sales can already exceed a 100 € wallet.
AMOUNT_CENTS = (5_00, 40_00)
PARTIAL_OK_SHARE = 0.5            # half the tills take what is left (10), half want it all (51)
# 91: more tills than the server lets tap one card at once (authorizer/card_gate.py); the till
# voids it (25: it never reached the ledger), as for any 91.
HOT_CARD_ANSWERS = frozenset({"00", "10", "51", "91"})


class HotCardTill(TerminalUser):
    def on_start(self) -> None:
        super().on_start()
        self.open_sale: str | None = None   # request id of this till's approved, unvoided sale

    @task
    def tap(self) -> None:
        if self.open_sale is not None:
            self.void(self.open_sale)
            self.open_sale = None
        request, answer = self.purchase(
            card_uid(self.config.hot_card), self.rng.randint(*AMOUNT_CENTS),
            partial_ok=self.rng.random() < PARTIAL_OK_SHARE, expected=HOT_CARD_ANSWERS)
        if answer is not None and answer.approved:
            self.open_sale = request.request_id
