"""Which cards the scenarios tap and for how much, in the demo region's numbering.

The demo region (ledger/demo_region.py) makes beneficiary n's card `card_uid(n)`; n % 50 == 0 has
no rights this school year (57), n % 97 == 1, 2, 3 is lost (41), stolen (43), damaged (62); every
other card is funded with 100 € (lycée) or 150 € (vocational). Baskets are what a student buys at
the back-to-school peak: a few school books at a bookshop, a professional kit at an equipment
shop; all amounts in integer cents.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from loadtest.bench_load import approvable
from ledger.demo_region import (DEMO_RELOAD_CENTS_BY_KIND, NO_RIGHTS_EVERY, OPPOSITION_EVERY,
                                card_uid)

LOST_REMAINDER, STOLEN_REMAINDER, DAMAGED_REMAINDER = 1, 2, 3   # n % OPPOSITION_EVERY
# The most any demo wallet holds: a purchase above it (and within the limit) is declined 51.
MAX_SEEDED_BALANCE_CENTS = max(DEMO_RELOAD_CENTS_BY_KIND.values())
# ISO 14443 single-size UIDs (4 bytes) starting 0x08 are random ids: the demo seeds none.
UNKNOWN_UID_PREFIX = 0x08
UNKNOWN_UID_RANDOM_BYTES = 3

# Prices in cents of what a bookshop sells for the school year.
BOOK_PRICES_CENTS = (
    (18_50, 32_90),   # a textbook (manuel scolaire)
    (6_90, 12_50),    # a workbook (cahier d'exercices)
    (3_50, 9_90),     # a paperback from the reading list
)
BOOK_WEIGHTS = (5, 3, 2)
BOOKS_PER_BASKET = (1, 6)
# What an equipment shop sells to vocational students, in cents.
EQUIPMENT_PRICES_CENTS = (
    (75_00, 160_00),  # a cook's knife case
    (60_00, 140_00),  # a hairdressing kit
    (45_00, 90_00),   # safety shoes
    (30_00, 120_00),  # a tool set
    (25_00, 60_00),   # work clothes
)
ITEMS_PER_EQUIPMENT_BASKET = (1, 2)
BOOKSHOP_SHARE_WHEN_UNKNOWN = 0.7   # a till of unknown shop: most sales are books


def random_card(rng: random.Random, cards: int) -> int:
    """Any demo beneficiary 1..cards: at the peak, a few cards are opposed or without rights."""
    return rng.randint(1, cards)


def random_approvable_card(rng: random.Random, cards: int) -> int:
    """A beneficiary whose card is approved (rights, not opposed), uniformly."""
    if not any(approvable(n) for n in range(1, min(cards, OPPOSITION_EVERY) + 1)):
        raise ValueError(f"no approvable card among 1..{cards}")
    while True:  # rejection sampling: uniform over the approvable cards
        number = rng.randint(1, cards)
        if approvable(number):
            return number


def basket_cents(rng: random.Random, category: str | None) -> list[int]:
    """One sale's items, each a price in cents (the refund of an item gives back its price)."""
    if category is None:
        category = "BOOKSHOP" if rng.random() < BOOKSHOP_SHARE_WHEN_UNKNOWN else "EQUIPMENT"
    if category == "BOOKSHOP":
        ranges = rng.choices(BOOK_PRICES_CENTS, BOOK_WEIGHTS, k=rng.randint(*BOOKS_PER_BASKET))
    else:
        ranges = [rng.choice(EQUIPMENT_PRICES_CENTS)
                  for _ in range(rng.randint(*ITEMS_PER_EQUIPMENT_BASKET))]
    return [_price(rng, low, high) for low, high in ranges]


def _price(rng: random.Random, low: int, high: int) -> int:
    """A shop price: whole ten cents, like 23,90 €."""
    return rng.randint(low // 10, high // 10) * 10


@dataclass(frozen=True)
class DeclineCase:
    """One way a tap goes: which card, how much, and the answers that are right for it."""
    reason: str
    expected: frozenset[str]
    partial_ok: bool

    def draw(self, rng: random.Random, cards: int, max_purchase_cents: int) -> tuple[bytes, int]:
        """(card UID, amount in cents) for one tap of this case."""
        if self.reason == "unknown card":
            return bytes([UNKNOWN_UID_PREFIX]) + rng.randbytes(UNKNOWN_UID_RANDOM_BYTES), 10_00
        if self.reason in _OPPOSED:
            return card_uid(_nth_with_remainder(rng, cards, _OPPOSED[self.reason])), 10_00
        if self.reason == "no rights":
            return card_uid(_no_rights_card(rng, cards)), 10_00
        number = random_approvable_card(rng, cards)
        if self.reason == "over the limit":
            return card_uid(number), max_purchase_cents + rng.randint(1, 100_00)
        if self.reason == "insufficient funds":
            return card_uid(number), max_purchase_cents   # above any balance, within the limit
        return card_uid(number), rng.randint(1_00, 20_00)


_OPPOSED = {"lost card": LOST_REMAINDER, "stolen card": STOLEN_REMAINDER,
            "damaged card": DAMAGED_REMAINDER}


def decline_cases(cards: int, max_purchase_cents: int) -> list[DeclineCase]:
    """Every decline a card can cause (14, 41, 43, 62, 57, 61, 51) and an approvable tap. Needs
    cards ≥ NO_RIGHTS_EVERY (the first card without rights) and a limit above every balance."""
    if cards < NO_RIGHTS_EVERY:
        raise ValueError(f"the decline mix needs at least {NO_RIGHTS_EVERY} cards")
    if max_purchase_cents <= MAX_SEEDED_BALANCE_CENTS:
        raise ValueError(f"a per-purchase limit of {max_purchase_cents} cents is not above the "
                         f"largest balance ({MAX_SEEDED_BALANCE_CENTS}): 51 cannot be provoked")
    return [
        DeclineCase("approvable", frozenset({"00", "10", "51"}), True),
        DeclineCase("unknown card", frozenset({"14"}), True),
        DeclineCase("lost card", frozenset({"41"}), True),
        DeclineCase("stolen card", frozenset({"43"}), True),
        DeclineCase("damaged card", frozenset({"62"}), True),
        DeclineCase("no rights", frozenset({"57"}), True),
        DeclineCase("over the limit", frozenset({"61"}), True),
        DeclineCase("insufficient funds", frozenset({"51"}), False),
    ]


def _nth_with_remainder(rng: random.Random, cards: int, remainder: int) -> int:
    """A beneficiary n ≤ cards with n % OPPOSITION_EVERY == remainder."""
    return OPPOSITION_EVERY * rng.randint(0, (cards - remainder) // OPPOSITION_EVERY) + remainder


def _no_rights_card(rng: random.Random, cards: int) -> int:
    """A beneficiary without rights whose card is not opposed (the opposition would answer first)."""
    while True:
        number = NO_RIGHTS_EVERY * rng.randint(1, cards // NO_RIGHTS_EVERY)
        if number % OPPOSITION_EVERY not in (LOST_REMAINDER, STOLEN_REMAINDER, DAMAGED_REMAINDER):
            return number
