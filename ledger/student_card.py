"""What a student reads on "Ma carte": the current school year's wallet and its validity window,
the rights of this year and the next, the cards and their statuses, and the history of every
movement of their wallets. Read-only; one beneficiary, the logged-in one, always.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from zoneinfo import ZoneInfo

import asyncpg

HISTORY_ROWS_MAX = 200         # a school year of a student's purchases fits many times over

# Why money moved, as the student reads it.
TRANSFER_LABELS = {
    "PURCHASE": "Achat", "REVERSAL": "Achat annulé", "REFUND": "Remboursement d'un article",
    "RELOAD": "Crédit de la Région", "REPLACEMENT_FEE": "Frais de remplacement de carte",
    "EXPIRY": "Solde non utilisé au 30 avril",
}
STATUS_LABELS = {"ACTIVE": "active", "LOST": "déclarée perdue", "STOLEN": "déclarée volée",
                 "DAMAGED": "endommagée", "DEFECTIVE": "défectueuse"}


@dataclass(frozen=True)
class CardLine:
    card_id: int
    number_end: str            # the last 4 digits: enough to tell one's cards apart
    status: str
    status_label: str
    issued_on: dt.date
    opposed_on: dt.date | None
    replaced: bool                     # a new card was issued in its place
    requested_on: dt.date | None       # a new card asked for, not yet issued


@dataclass(frozen=True)
class Movement:
    at: dt.datetime            # business time
    label: str
    shop: str | None
    amount_cents: int          # + credited to the wallet, − debited


@dataclass(frozen=True)
class CardPage:
    school_year: int
    balance_cents: int | None          # None: no wallet this school year (not credited yet)
    wallet_opens_on: dt.date
    wallet_closes_on: dt.date          # the last day a purchase is possible (30 April)
    rights_this_year: bool
    rights_next_year: bool
    next_renewal_opens_on: dt.date
    pending_fees_cents: int
    cards: tuple[CardLine, ...]
    history: tuple[Movement, ...]


async def card_page(conn: asyncpg.Connection, beneficiary_id: int) -> CardPage:
    year_row = await conn.fetchrow(
        "SELECT y AS school_year, wallet_opens_at(y) AS opens, wallet_closes_at(y) AS closes,"
        " rights_renewal_opens_at(y + 1) AS renewal, business_time_zone() AS zone,"
        " (SELECT a.credits_posted - a.debits_posted FROM wallets w JOIN accounts a"
        "   ON a.id = w.account_id WHERE w.beneficiary_id = $1 AND w.school_year = y) AS balance,"
        " EXISTS (SELECT 1 FROM rights WHERE beneficiary_id = $1 AND school_year = y) AS rights_now,"
        " EXISTS (SELECT 1 FROM rights WHERE beneficiary_id = $1 AND school_year = y + 1) AS rights_next,"
        " (SELECT coalesce(sum(amount_cents - recovered_cents), 0)::bigint FROM pending_fees"
        "   WHERE beneficiary_id = $1) AS fees"
        " FROM (SELECT school_year_of(business_now()) AS y) AS now", beneficiary_id)
    zone = ZoneInfo(year_row["zone"])
    cards = await conn.fetch(
        "SELECT c.id, right(c.card_number, 4) AS number_end, c.status, c.issued_at, c.opposed_at,"
        " EXISTS (SELECT 1 FROM card_replacements WHERE old_card_id = c.id) AS replaced,"
        " (SELECT requested_at FROM card_replacement_requests WHERE card_id = c.id"
        "   AND done_at IS NULL) AS requested_at"
        " FROM cards c WHERE c.beneficiary_id = $1 ORDER BY c.issued_at DESC, c.id DESC",
        beneficiary_id)
    history = await conn.fetch(
        "SELECT t.created_at, t.code, p.name AS shop,"
        " CASE WHEN t.credit_account_id = w.account_id THEN t.amount_cents"
        "      ELSE -t.amount_cents END AS amount"
        " FROM wallets w JOIN transfers t"
        "   ON w.account_id IN (t.credit_account_id, t.debit_account_id)"
        " LEFT JOIN authorizations au ON au.id = t.authorization_id"
        " LEFT JOIN terminals te ON te.id = au.terminal_id"
        " LEFT JOIN partners p ON p.id = te.partner_id"
        " WHERE w.beneficiary_id = $1 ORDER BY t.id DESC LIMIT $2", beneficiary_id,
        HISTORY_ROWS_MAX)
    return CardPage(
        school_year=year_row["school_year"], balance_cents=year_row["balance"],
        wallet_opens_on=year_row["opens"].astimezone(zone).date(),
        wallet_closes_on=(year_row["closes"].astimezone(zone) - dt.timedelta(days=1)).date(),
        rights_this_year=year_row["rights_now"], rights_next_year=year_row["rights_next"],
        next_renewal_opens_on=year_row["renewal"].astimezone(zone).date(),
        pending_fees_cents=year_row["fees"],
        cards=tuple(CardLine(r["id"], r["number_end"], r["status"],
                             STATUS_LABELS.get(r["status"], r["status"].lower()),
                             r["issued_at"].astimezone(zone).date(),
                             r["opposed_at"].astimezone(zone).date() if r["opposed_at"] else None,
                             r["replaced"],
                             r["requested_at"].astimezone(zone).date() if r["requested_at"] else None)
                    for r in cards),
        history=tuple(Movement(r["created_at"].astimezone(zone), TRANSFER_LABELS.get(r["code"], r["code"]),
                               r["shop"], r["amount"]) for r in history))


async def own_card_status(conn: asyncpg.Connection, beneficiary_id: int,
                          card_id: int) -> str | None:
    """The status of `card_id` if it is a card of this beneficiary, else None (a student acts
    on no other card)."""
    return await conn.fetchval("SELECT status FROM cards WHERE id = $1 AND beneficiary_id = $2",
                               card_id, beneficiary_id)
