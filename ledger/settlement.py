"""Settlement runs: what each partner is owed per business day, moved out of its merchant payable
account by SETTLEMENT transfers (sql/functions/settle_through.sql does the set-based work).

A run settles every closed day not yet settled up to the day asked, so runs leave no gap and a
day settled twice moves nothing more. A partner's negative day (refunds of purchases paid
earlier) pays nothing and is carried as a debt into its next days.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import asyncpg

from ledger.audit import append_audit

AUDIT_ACTION_RUN = "settlement.run"
# A day is settled only this long after its midnight: a purchase stamped 23:59:59 may still be
# committing. Far above the authorization path's longest transaction (one statement, bounded by
# HDFPAY_DB_STATEMENT_TIMEOUT_MS, at most 60 s).
SETTLEMENT_GRACE_MS = 5 * 60 * 1000
DAY_NOT_CLOSED_SQLSTATE = "HD422"
MAX_LISTED_RUNS_ROWS = 1000


class SettlementRefused(ValueError):
    """The day cannot be settled (not closed yet)."""


class UnknownRun(LookupError):
    pass


@dataclass(frozen=True)
class SettlementRun:
    run_id: int
    first_day: dt.date | None        # None: the first run, from the first transfer
    through_day: dt.date
    settled_by: str
    settled_at: dt.datetime
    lines: int
    payments: int
    transactions: int
    net_cents: int
    paid_cents: int
    debt_carried_cents: int

    def as_json(self) -> dict:
        return {k: (v.isoformat() if isinstance(v, (dt.date, dt.datetime)) else v)
                for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class SettlementOutcome:
    run: SettlementRun
    created: bool                    # False: the day was already settled by `run`


@dataclass(frozen=True)
class SettlementLine:
    partner_id: int
    partner_name: str
    category: str
    business_day: dt.date
    run_id: int
    purchases_count: int
    purchases_cents: int
    reversals_count: int
    reversals_cents: int
    refunds_count: int
    refunds_cents: int
    net_cents: int
    debt_before_cents: int
    paid_cents: int
    debt_after_cents: int
    transfer_id: int | None

    def as_json(self) -> dict:
        return {k: (v.isoformat() if isinstance(v, dt.date) else v) for k, v in self.__dict__.items()}


async def last_closed_day(conn: asyncpg.Connection) -> dt.date:
    """Yesterday in Paris (the day before, within the grace after midnight)."""
    return await conn.fetchval(
        "SELECT business_day_of(business_now() - $1::interval) - 1",
        dt.timedelta(milliseconds=SETTLEMENT_GRACE_MS))


async def settle(conn: asyncpg.Connection, *, actor: str,
                 through_day: dt.date | None = None) -> SettlementOutcome:
    """Settle every closed day up to `through_day` (default: yesterday) not yet settled, and
    record the run in the audit trail in the same transaction."""
    async with conn.transaction():
        day = through_day or await last_closed_day(conn)
        try:
            row = await conn.fetchrow("SELECT * FROM settle_through($1, $2, $3)", day, actor,
                                      dt.timedelta(milliseconds=SETTLEMENT_GRACE_MS))
        except asyncpg.PostgresError as exc:
            if exc.sqlstate != DAY_NOT_CLOSED_SQLSTATE:
                raise
            raise SettlementRefused(exc.args[0] if exc.args else str(exc)) from None
        run = await get_run(conn, row["settlement_run_id"])
        if row["created"]:
            await append_audit(conn, actor=actor, action=AUDIT_ACTION_RUN,
                               subject=f"settlement_run:{run.run_id}",
                               before={"settled_through": None if run.first_day is None
                                       else (run.first_day - dt.timedelta(days=1)).isoformat()},
                               after=run.as_json())
    return SettlementOutcome(run, bool(row["created"]))


async def get_run(conn: asyncpg.Connection, run_id: int) -> SettlementRun:
    row = await conn.fetchrow("SELECT * FROM settlement_run_totals WHERE run_id = $1", run_id)
    if row is None:
        raise UnknownRun(f"no settlement run {run_id}")
    return SettlementRun(**dict(row))


async def list_runs(conn: asyncpg.Connection, limit_rows: int = 50) -> list[SettlementRun]:
    """The latest runs first."""
    rows = await conn.fetch("SELECT * FROM settlement_run_totals ORDER BY run_id DESC LIMIT $1",
                            min(limit_rows, MAX_LISTED_RUNS_ROWS))
    return [SettlementRun(**dict(r)) for r in rows]


_LINES_SQL = """
    SELECT l.partner_id, p.name AS partner_name, p.category, l.business_day, l.run_id,
           l.purchases_count, l.purchases_cents, l.reversals_count, l.reversals_cents,
           l.refunds_count, l.refunds_cents, l.net_cents, l.debt_before_cents, l.paid_cents,
           l.debt_after_cents, l.transfer_id
      FROM settlement_lines l JOIN partners p ON p.id = l.partner_id
"""


async def run_lines(conn: asyncpg.Connection, run_id: int,
                    partner_id: int | None = None) -> list[SettlementLine]:
    """A run's lines by partner then day; only one partner's when `partner_id` is given."""
    rows = await conn.fetch(
        _LINES_SQL + " WHERE l.run_id = $1 AND ($2::integer IS NULL OR l.partner_id = $2)"
        " ORDER BY l.partner_id, l.business_day", run_id, partner_id)
    return [SettlementLine(**dict(r)) for r in rows]


async def partner_lines(conn: asyncpg.Connection, partner_id: int, first_day: dt.date,
                        last_day: dt.date) -> list[SettlementLine]:
    """One partner's settled days in a range, oldest first."""
    rows = await conn.fetch(
        _LINES_SQL + " WHERE l.partner_id = $1 AND l.business_day BETWEEN $2 AND $3"
        " ORDER BY l.business_day", partner_id, first_day, last_day)
    return [SettlementLine(**dict(r)) for r in rows]
