"""The bank test's verdict (after Jepsen's bank test): what the terminals saw against the ledger
on whichever node is the primary at the end.

- every approval a terminal saw is in the ledger, with its amount, and was not reversed;
- every debit of the ledger was seen approved by its terminal, or has been reversed in full;
- nothing is still owed: every reversal a terminal had to send was answered;
- each card's balance is its balance before the run minus the approvals seen on it (a reversal
  that credited twice, or a debit nobody saw, shows up here);
- the ledger's own invariants (Σ debits = Σ credits, wallet totals = journal, no wallet below
  zero: ledger_violations()).

`bank_problems` is pure, so that a test can feed it a fabricated history and see it fail;
`read_ledger` fetches what it needs in one transaction.
"""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

from ledger.demo_region import card_uid
from ledger.invariants import ledger_violations
from loadtest.till_journal import JournalState
from terminal_protocol.response_codes import APPROVED_CODES

PROBLEMS_LISTED_MAX = 20          # per property: the first ones, then a count


@dataclass(frozen=True)
class LedgerView:
    """The run's purchases as the ledger holds them, the cards' balances, its violations."""
    purchases: dict[tuple[str, str], dict]   # (terminal, request id) -> row
    balances: dict[int, int]                 # beneficiary number -> wallet balance in cents
    violations: list[tuple[str, str]]


async def wallet_balances(conn: asyncpg.Connection, cards: list[int],
                          school_year: int) -> dict[int, int]:
    """Each demo card's wallet balance for the school year, in cents."""
    rows = await conn.fetch(
        "SELECT c.uid, a.credits_posted - a.debits_posted AS balance FROM cards c"
        " JOIN wallets w ON w.beneficiary_id = c.beneficiary_id AND w.school_year = $2"
        " JOIN accounts a ON a.id = w.account_id WHERE c.uid = ANY($1::bytea[])",
        [card_uid(n) for n in cards], school_year)
    numbers = {card_uid(n): n for n in cards}
    return {numbers[bytes(r["uid"])]: r["balance"] for r in rows}


async def read_ledger(conn: asyncpg.Connection, terminals: list[str], cards: list[int],
                      school_year: int) -> LedgerView:
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        rows = await conn.fetch(
            "SELECT terminal_id, request_id, response_code, amount_approved_cents,"
            " amount_reversed_cents FROM authorizations"
            " WHERE terminal_id = ANY($1::text[]) AND message_type = 'PURCHASE'", terminals)
        balances = await wallet_balances(conn, cards, school_year)
        violations = await ledger_violations(conn)
    return LedgerView({(r["terminal_id"], r["request_id"]): dict(r) for r in rows}, balances,
                      violations)


def bank_problems(seen: JournalState, ledger: LedgerView,
                  balances_before: dict[int, int]) -> tuple[dict, list[str]]:
    """(counts for the report, the problems: empty when every property holds)."""
    lost, reversed_behind, unseen = [], [], []
    for key, approval in seen.approvals.items():
        row = ledger.purchases.get(key)
        if row is None or row["response_code"] not in APPROVED_CODES \
                or row["amount_approved_cents"] != approval.approved_cents:
            lost.append(f"{key[0]} {key[1]}: seen approved for {approval.approved_cents} cents, "
                        f"the ledger holds {_describe(row)}")
        elif row["amount_reversed_cents"]:
            reversed_behind.append(f"{key[0]} {key[1]}: seen approved, the ledger reversed "
                                   f"{row['amount_reversed_cents']} cents of it")
    voided = 0
    for key, row in ledger.purchases.items():
        if row["amount_approved_cents"] <= 0 or key in seen.approvals:
            continue
        if row["amount_reversed_cents"] == row["amount_approved_cents"]:
            voided += 1
        else:
            unseen.append(f"{key[0]} {key[1]}: debited {row['amount_approved_cents']} cents, "
                          f"reversed {row['amount_reversed_cents']}, no terminal saw it approved")
    owed = [f"{t} {rid}: reversal never answered" for t, rid in seen.owed]
    spent: dict[int, int] = {}
    for approval in seen.approvals.values():
        spent[approval.card] = spent.get(approval.card, 0) + approval.approved_cents
    wrong_balances = [
        f"card {n}: {balances_before[n]} - {spent.get(n, 0)} seen spent = "
        f"{balances_before[n] - spent.get(n, 0)} cents expected, the ledger holds "
        f"{ledger.balances.get(n)}"
        for n in sorted(balances_before)
        if ledger.balances.get(n) != balances_before[n] - spent.get(n, 0)]
    problems = []
    for title, found in (("approvals seen but not in the ledger", lost),
                         ("approvals seen but reversed in the ledger", reversed_behind),
                         ("debits neither seen approved nor reversed", unseen),
                         ("money still owed (reversals not answered)", owed),
                         ("balances that differ from the approvals seen", wrong_balances),
                         ("ledger violations", [f"{r}: {d}" for r, d in ledger.violations])):
        problems += [f"{title}: {line}" for line in found[:PROBLEMS_LISTED_MAX]]
        if len(found) > PROBLEMS_LISTED_MAX:
            problems.append(f"{title}: … {len(found) - PROBLEMS_LISTED_MAX} more")
    debits = sum(1 for row in ledger.purchases.values() if row["amount_approved_cents"] > 0)
    counts = {"approvals_seen": len(seen.approvals),
              "approved_cents_seen": sum(a.approved_cents for a in seen.approvals.values()),
              "ledger_debits": debits, "ledger_debits_reversed_unseen": voided,
              "purchases_sent": seen.purchases, "reversals_settled": len(seen.settled),
              "money_owed": len(seen.owed), "cards_checked": len(balances_before)}
    return counts, problems


def _describe(row: dict | None) -> str:
    if row is None:
        return "nothing"
    return f"{row['response_code']} for {row['amount_approved_cents']} cents"
