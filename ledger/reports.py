"""Operator reports over business days (business_day_of(), Europe/Paris): volumes by partner and category, declines by
response code, and the funds position reconciled against the ledger.

Volumes and declines read the authorizations (what the terminals were answered); the funds
position reads the transfers (what moved) and checks it against the accounts, so two sources
meet. Declines answered before the ledger (unknown terminal, bad MAC, replay, duplicate) leave
no row here: the server's metrics count those.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Sequence

import asyncpg

MAX_REPORT_DAYS = 400          # a school year and its margins
MAX_REPORT_ROWS = 20_000


class ReportRefused(ValueError):
    pass


@dataclass(frozen=True)
class Period:
    first_day: dt.date | None      # None: from the first record
    last_day: dt.date

    def check(self) -> "Period":
        if self.first_day is not None:
            if self.first_day > self.last_day:
                raise ReportRefused(f"the period starts ({self.first_day}) after it ends ({self.last_day})")
            if (self.last_day - self.first_day).days >= MAX_REPORT_DAYS:
                raise ReportRefused(f"a report covers at most {MAX_REPORT_DAYS} days")
        return self


_PERIOD_SQL = """(($1::date IS NULL OR {t}.created_at >= business_day_starts_at($1::date))
                  AND {t}.created_at < business_day_starts_at($2::date + 1))"""


async def volumes(conn: asyncpg.Connection, period: Period) -> list[dict]:
    """Approved amounts per day, category and partner, with a subtotal per day and category
    (partner_id None) and a grand total (business_day None), net = purchases − reversals −
    refunds. The reversals include the server's own voids of purchases it answered 91 or 96
    (SERVER_VOID, server_void_purchase.sql): money given back, as the funds report sees it."""
    period.check()
    return [dict(r) for r in await conn.fetch(f"""
        SELECT business_day_of(a.created_at) AS business_day, p.category,
               p.id AS partner_id, min(p.name) AS partner_name,
               count(*) FILTER (WHERE a.message_type = 'PURCHASE') AS purchases_count,
               coalesce(sum(a.amount_approved_cents) FILTER (WHERE a.message_type = 'PURCHASE'), 0)::bigint AS purchases_cents,
               count(*) FILTER (WHERE a.message_type IN ('REVERSAL', 'SERVER_VOID')) AS reversals_count,
               coalesce(sum(a.amount_approved_cents) FILTER (WHERE a.message_type IN ('REVERSAL', 'SERVER_VOID')), 0)::bigint AS reversals_cents,
               count(*) FILTER (WHERE a.message_type = 'REFUND') AS refunds_count,
               coalesce(sum(a.amount_approved_cents) FILTER (WHERE a.message_type = 'REFUND'), 0)::bigint AS refunds_cents,
               coalesce(sum(CASE a.message_type WHEN 'PURCHASE' THEN a.amount_approved_cents
                                                ELSE -a.amount_approved_cents END), 0)::bigint AS net_cents
          FROM authorizations a
          JOIN terminals t ON t.id = a.terminal_id
          JOIN partners p ON p.id = t.partner_id
         WHERE (a.message_type IN ('PURCHASE', 'REVERSAL', 'REFUND') AND a.request_hash IS NOT NULL
                OR a.message_type = 'SERVER_VOID')
           AND a.amount_approved_cents > 0 AND {_PERIOD_SQL.format(t='a')}
         GROUP BY GROUPING SETS ((1, 2, 3), (1, 2), ())
         ORDER BY 1 NULLS LAST, 2 NULLS LAST, 3 NULLS LAST
         LIMIT {MAX_REPORT_ROWS}""", period.first_day, period.last_day)]


async def declines(conn: asyncpg.Connection, period: Period,
                   approved_codes: Sequence[str]) -> tuple[int, list[dict]]:
    """(messages answered by the ledger in the period, declines per response code and message
    type, most frequent first)."""
    period.check()
    where = (f"a.message_type IN ('PURCHASE', 'REVERSAL', 'REFUND') AND a.request_hash IS NOT NULL"
             f" AND {_PERIOD_SQL.format(t='a')}")
    total = await conn.fetchval(f"SELECT count(*) FROM authorizations a WHERE {where}",
                                period.first_day, period.last_day)
    rows = await conn.fetch(f"""
        SELECT a.response_code, a.message_type, count(*) AS count,
               coalesce(sum(a.amount_requested_cents), 0)::bigint AS requested_cents
          FROM authorizations a
         WHERE {where} AND a.response_code <> ALL ($3::text[])
         GROUP BY 1, 2 ORDER BY 3 DESC, 1, 2""", period.first_day, period.last_day, list(approved_codes))
    return total, [dict(r) for r in rows]


@dataclass(frozen=True)
class Check:
    rule: str
    left: int
    right: int

    @property
    def ok(self) -> bool:
        return self.left == self.right


@dataclass(frozen=True)
class FundsReport:
    period: Period
    flows: dict[str, int]          # moved in the period, by kind of movement
    position: dict[str, int]       # balances now, from the journal (wallets: posted totals)
    checks: list[Check]            # all time: the flows by code against the balances by account
    violations: list[tuple[str, str]]

    @property
    def reconciled(self) -> bool:
        return all(c.ok for c in self.checks) and not self.violations


async def funds(conn: asyncpg.Connection, period: Period) -> FundsReport:
    """Funded (reloads), spent (purchases net of reversals and refunds), expired (the 1 May
    sweeps, and the reversals made after it, which go to the expired-funds account rather than
    back to the closed wallet), fees, settled, in the period; then, over the whole ledger in one
    snapshot, Σ debits = Σ credits and each account kind's balance against the flows that feed
    it."""
    period.check()
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        in_period = await _flows(conn, period.first_day, period.last_day)
        ever = await _flows(conn, None, None)
        kinds = {r["kind"]: r for r in await conn.fetch("""
            SELECT a.kind, coalesce(sum(j.debits), 0)::bigint AS debits,
                   coalesce(sum(j.credits), 0)::bigint AS credits,
                   sum(a.debits_posted)::bigint AS debits_posted, sum(a.credits_posted)::bigint AS credits_posted
              FROM accounts a LEFT JOIN account_journal j ON j.account_id = a.id GROUP BY a.kind""")}
        settled = await conn.fetchrow("""
            SELECT (SELECT coalesce(sum(net_cents), 0) FROM settlement_lines)::bigint AS lines_net,
                   (SELECT coalesce(sum(CASE code WHEN 'PURCHASE' THEN amount_cents ELSE -amount_cents END), 0)
                      FROM transfers WHERE code IN ('PURCHASE', 'REVERSAL', 'REFUND')
                       AND created_at < business_day_starts_at((SELECT max(through_day) FROM settlement_runs) + 1)
                   )::bigint AS journal_net""")
        violations = [(r["rule"], r["detail"]) for r in
                      await conn.fetch("SELECT rule, detail FROM ledger_violations() LIMIT 100")]

    def balance(kind: str) -> int:          # credits − debits, from the journal
        row = kinds.get(kind)
        return 0 if row is None else row["credits"] - row["debits"]

    wallets = kinds.get("WALLET")
    wallets_posted = 0 if wallets is None else wallets["credits_posted"] - wallets["debits_posted"]
    position = {"wallets_cents": wallets_posted, "merchant_payable_cents": balance("MERCHANT_PAYABLE"),
                "paid_to_merchants_cents": balance("SETTLEMENT_BANK"),
                "fee_income_cents": balance("FEE_INCOME"), "expired_funds_cents": balance("EXPIRED_FUNDS"),
                "region_funding_cents": -balance("REGION_FUNDING")}
    checks = [
        Check("Σ debits = Σ credits (journal)", sum(r["debits"] for r in kinds.values()),
              sum(r["credits"] for r in kinds.values())),
        Check("wallets = funded − spent − expired − fees",
              wallets_posted, ever["funded_cents"] - ever["spent_cents"] - ever["expired_cents"] - ever["fees_cents"]),
        Check("merchant payable = spent − settled", balance("MERCHANT_PAYABLE"),
              ever["spent_cents"] - ever["settled_cents"]),
        Check("region funding = funded", -balance("REGION_FUNDING"), ever["funded_cents"]),
        Check("paid to merchants = settled", balance("SETTLEMENT_BANK"), ever["settled_cents"]),
        Check("fee income = fees", balance("FEE_INCOME"), ever["fees_cents"]),
        Check("expired funds = expired", balance("EXPIRED_FUNDS"), ever["expired_cents"]),
        # A transfer that reached a day after it was settled would break this one.
        Check("settled days = journal through the last settled day", settled["lines_net"],
              settled["journal_net"]),
    ]
    return FundsReport(period, in_period, position, checks, violations)


async def _flows(conn: asyncpg.Connection, first_day: dt.date | None,
                 last_day: dt.date | None) -> dict[str, int]:
    # A reversal is classified by the account it credited: the wallet, or, once the wallet has
    # closed (1 May, sql/functions/authorize_reversal.sql), the expired-funds account. Any other account is left in
    # reversals_cents only, so that it shows as a mismatch.
    row = await conn.fetchrow(f"""
        SELECT coalesce(sum(t.amount_cents) FILTER (WHERE t.code = 'RELOAD'), 0)::bigint AS funded_cents,
               coalesce(sum(t.amount_cents) FILTER (WHERE t.code = 'PURCHASE'), 0)::bigint AS purchases_cents,
               coalesce(sum(t.amount_cents) FILTER (WHERE t.code = 'REVERSAL'), 0)::bigint AS reversals_cents,
               coalesce(sum(t.amount_cents) FILTER (WHERE t.code = 'REVERSAL' AND c.kind = 'WALLET'),
                        0)::bigint AS reversals_to_wallets_cents,
               coalesce(sum(t.amount_cents) FILTER (WHERE t.code = 'REVERSAL' AND c.kind = 'EXPIRED_FUNDS'),
                        0)::bigint AS reversals_to_expired_funds_cents,
               coalesce(sum(t.amount_cents) FILTER (WHERE t.code = 'REFUND'), 0)::bigint AS refunds_cents,
               coalesce(sum(t.amount_cents) FILTER (WHERE t.code = 'EXPIRY'), 0)::bigint AS expiry_sweeps_cents,
               coalesce(sum(t.amount_cents) FILTER (WHERE t.code = 'REPLACEMENT_FEE'), 0)::bigint AS fees_cents,
               coalesce(sum(t.amount_cents) FILTER (WHERE t.code = 'SETTLEMENT'), 0)::bigint AS settled_cents
          FROM transfers t JOIN accounts c ON c.id = t.credit_account_id
         WHERE $2::date IS NULL OR {_PERIOD_SQL.format(t='t')}""", first_day, last_day)
    flows = dict(row)
    # Spent, as the merchants see it: every reversal gives the sale back, wherever it went.
    flows["spent_cents"] = flows["purchases_cents"] - flows["reversals_cents"] - flows["refunds_cents"]
    # Expired: what went to the expired-funds account, the 1 May sweep and the voids after it.
    flows["expired_cents"] = flows["expiry_sweeps_cents"] + flows["reversals_to_expired_funds_cents"]
    return flows
