"""A small pure-Python model of the region's rules, written from PROTOCOL.md and DESIGN.md rather
than from the SQL, so that the model-based tests (test_rules_model.py) can compare every answer
and balance of the real server with what the rules say it should be.

It knows only the few students and cards in play. Dates are computed with zoneinfo in
Europe/Paris, independently of the ledger's calendar functions."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

PARIS = ZoneInfo("Europe/Paris")
SCHOOL_YEAR_START_MONTH = 7        # 1 July
WALLET_CLOSED_MONTHS = (5, 6)      # May and June: outside the wallet window
DECLINE_CODE_BY_STATUS = {"LOST": "41", "STOLEN": "43", "DAMAGED": "62", "DEFECTIVE": "62"}
CHARGED_REASONS = ("LOST", "STOLEN", "DAMAGED")      # a defective card is replaced for free


def school_year_of(at: dt.datetime) -> int:
    local = at.astimezone(PARIS)
    return local.year if local.month >= SCHOOL_YEAR_START_MONTH else local.year - 1


def in_wallet_window(at: dt.datetime) -> bool:
    return at.astimezone(PARIS).month not in WALLET_CLOSED_MONTHS


def wallet_closes_at(school_year: int) -> dt.datetime:
    return dt.datetime(school_year + 1, 5, 1, tzinfo=PARIS)


def school_year_starts_at(school_year: int) -> dt.datetime:
    return dt.datetime(school_year, SCHOOL_YEAR_START_MONTH, 1, tzinfo=PARIS)


def rrn_prefix(at: dt.datetime) -> str:
    """`Y` `DDD`: the last digit of the year and the day of the year, in Paris."""
    local = at.astimezone(PARIS)
    return f"{local.year % 10}{local.timetuple().tm_yday:03d}"


@dataclass(frozen=True)
class Rules:
    max_purchase_cents: int
    replacement_fee_cents: int
    renewal_opens_month: int
    renewal_opens_day: int


@dataclass(frozen=True)
class Answer:
    """The fields of a terminal answer the model predicts."""
    rc: str
    requested_cents: int | None
    approved_cents: int
    balance_cents: int | None
    refundable_cents: int | None = None
    detail: str | None = None


@dataclass
class Card:
    student: int
    status: str = "ACTIVE"
    replaced: bool = False


@dataclass
class Sale:
    terminal: str
    student: int | None
    school_year: int
    approved_cents: int
    rrn: str | None = None
    reversed_cents: int = 0
    refunded_cents: int = 0

    @property
    def left_cents(self) -> int:
        return self.approved_cents - self.reversed_cents - self.refunded_cents


@dataclass
class RulesModel:
    rules: Rules
    now: dt.datetime
    partner_of_terminal: dict[str, int]
    cards: dict[bytes, Card]
    rights: set[tuple[int, int]]                     # (student, school year)
    balances: dict[tuple[int, int], int]             # (student, school year) → cents; wallets that exist
    pending_fees: dict[int, int]                     # student → cents still owed
    sales: dict[str, Sale] = field(default_factory=dict)   # by the purchase's request id

    # --- the terminal messages -------------------------------------------------------------

    def purchase(self, request_id: str, terminal: str, uid: bytes, amount_cents: int,
                 partial_ok: bool) -> Answer:
        """PROTOCOL.md's order: card known (14), opposition, window (54), rights (57), limit
        (61), funds (51, or 10 when partial_ok)."""
        year = school_year_of(self.now)
        card = self.cards.get(uid)
        rc = None
        if card is None:
            rc = "14"
        elif card.status != "ACTIVE":
            rc = DECLINE_CODE_BY_STATUS[card.status]
        elif not in_wallet_window(self.now):
            rc = "54"
        elif (card.student, year) not in self.rights:
            rc = "57"
        elif amount_cents > self.rules.max_purchase_cents:
            rc = "61"
        student = card.student if card is not None else None
        if rc is not None:
            self.sales[request_id] = Sale(terminal, student, year, 0)
            return Answer(rc, amount_cents, 0, None)
        balance = self.balances.get((student, year), 0)
        if balance >= amount_cents:
            rc, approved = "00", amount_cents
        elif partial_ok and balance > 0:
            rc, approved = "10", balance
        else:
            rc, approved = "51", 0
        if approved:
            self.balances[(student, year)] = balance - approved
        self.sales[request_id] = Sale(terminal, student, year, approved)
        return Answer(rc, amount_cents, approved, balance - approved)

    def reversal(self, terminal: str, original_request_id: str) -> Answer:
        """Restores what is left of the sale, once; after its wallet closed, to expired funds."""
        sale = self.sales.get(original_request_id)
        if sale is None or sale.terminal != terminal:
            return Answer("25", 0, 0, None)
        amount = sale.left_cents
        balance = None
        if amount > 0:
            sale.reversed_cents += amount
            if self.now < wallet_closes_at(sale.school_year):
                key = (sale.student, sale.school_year)
                self.balances[key] += amount
                balance = self.balances[key]
        return Answer("00", sale.approved_cents, amount, balance)

    def refund(self, terminal: str, original_request_id: str, uid: bytes,
               amount_cents: int) -> Answer:
        """Checked in order: ticket at this partner (25), card known (14), the purchase's
        student (25 other_card), window of the sale's year (54), what is left (13)."""
        sale = self.sales.get(original_request_id)
        partner = self.partner_of_terminal[terminal]
        if (sale is None or sale.approved_cents == 0
                or self.partner_of_terminal[sale.terminal] != partner):
            return Answer("25", amount_cents, 0, None)
        card = self.cards.get(uid)
        if card is None:
            return Answer("14", amount_cents, 0, None)
        if card.student != sale.student:
            return Answer("25", amount_cents, 0, None, detail="other_card")
        if not in_wallet_window(self.now) or school_year_of(self.now) != sale.school_year:
            return Answer("54", amount_cents, 0, None)
        left = sale.left_cents
        if amount_cents > left:
            detail = None if left > 0 else ("voided" if sale.reversed_cents > 0 else "refunded")
            return Answer("13", amount_cents, 0, None, refundable_cents=left, detail=detail)
        sale.refunded_cents += amount_cents
        key = (sale.student, sale.school_year)
        self.balances[key] += amount_cents
        return Answer("00", amount_cents, amount_cents, self.balances[key])

    # --- the back office ------------------------------------------------------------------

    def reload(self, student: int, school_year: int, amount_cents: int) -> tuple | str:
        """(credited, fee recovered, balance), or the refusal: a closed wallet takes nothing."""
        if self.now >= wallet_closes_at(school_year):
            return "ReloadRefused"
        key = (student, school_year)
        recovered = min(self.pending_fees.get(student, 0), amount_cents)
        self.pending_fees[student] = self.pending_fees.get(student, 0) - recovered
        self.balances[key] = self.balances.get(key, 0) + amount_cents - recovered
        return (amount_cents, recovered, self.balances[key])

    def expire(self, school_year: int) -> str:
        """From 1 May, what is left in the year's wallets is no longer the students'."""
        if self.now < wallet_closes_at(school_year):
            return "ExpiryRefused"
        for key in self.balances:
            if key[1] == school_year:
                self.balances[key] = 0
        return "ok"

    def oppose(self, uid: bytes, reason: str) -> str:
        """Irreversible: an opposed card cannot be opposed again."""
        card = self.cards[uid]
        if card.status != "ACTIVE":
            return "Conflict"
        card.status = reason
        return "ok"

    def replace(self, uid: bytes, reason: str | None, new_uid: bytes) -> tuple | str:
        """(fee, taken, pending): the fee from the current year's balance while the window is
        open, the rest pending until the next reload; refused without this year's rights."""
        card = self.cards[uid]
        year = school_year_of(self.now)
        if card.replaced:
            return "Conflict"
        if card.status == "ACTIVE" and reason is None:
            return "Invalid"
        if card.status != "ACTIVE" and reason is not None and reason != card.status:
            return "Conflict"
        if (card.student, year) not in self.rights:
            return "Conflict"
        if card.status == "ACTIVE":
            card.status = reason
        card.replaced = True
        self.cards[new_uid] = Card(card.student)
        fee = self.rules.replacement_fee_cents if card.status in CHARGED_REASONS else 0
        taken = 0
        key = (card.student, year)
        if fee > 0 and in_wallet_window(self.now) and key in self.balances:
            taken = min(fee, self.balances[key])
            self.balances[key] -= taken
        self.pending_fees[card.student] = self.pending_fees.get(card.student, 0) + fee - taken
        return (fee, taken, fee - taken)

    def renew(self, student: int, school_year: int) -> bool | str:
        """Rights for a year, from the opening day (rules) until the year ends; True when they
        were already there."""
        opens = dt.datetime(school_year, self.rules.renewal_opens_month,
                            self.rules.renewal_opens_day, tzinfo=PARIS)
        if self.now < opens or self.now >= school_year_starts_at(school_year + 1):
            return "RenewalRefused"
        already = (student, school_year) in self.rights
        self.rights.add((student, school_year))
        return already
