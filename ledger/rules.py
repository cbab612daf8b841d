"""The region's limits, fees and dates, held by the database (table rules, one row) so that every
server and command applies the same: authorize_purchase() reads the purchase limit inside its one
round trip, replace_card() the replacement fee, rights_renewal_opens_at() the renewal opening.
Changed by `hdfpay rules set`, each change audited in the same transaction."""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass

import asyncpg

from ledger.audit import append_audit

AUDIT_ACTION = "rules.set"


class RulesRefused(ValueError):
    """A value the rules table refuses (its CHECK constraints say the bounds)."""


@dataclass(frozen=True)
class Rules:
    max_purchase_amount_cents: int     # a purchase above it is declined (61)
    replacement_fee_cents: int         # a lost, stolen or damaged card's replacement
    rights_renewal_opens_month: int    # renewal for the next school year opens on this month
    rights_renewal_opens_day: int      # and day (business time), 20 June by default
    first_card_requests_open_month: int  # the online first-card campaign opens on this month
    first_card_requests_open_day: int    # and day, 21 June by default, until the wallet closes


async def current_rules(conn: asyncpg.Connection) -> Rules:
    row = await conn.fetchrow(
        "SELECT max_purchase_amount_cents, replacement_fee_cents, rights_renewal_opens_month,"
        " rights_renewal_opens_day, first_card_requests_open_month, first_card_requests_open_day"
        " FROM rules")
    return Rules(**dict(row))


async def set_rules(conn: asyncpg.Connection, *, actor: str, **changes: int) -> Rules:
    """Change some rules (fields of Rules), audited with before and after."""
    unknown = set(changes) - {f.name for f in dataclasses.fields(Rules)}
    if unknown:
        raise RulesRefused(f"no such rule: {', '.join(sorted(unknown))}")
    if not changes:
        return await current_rules(conn)
    async with conn.transaction():
        before = await conn.fetchrow("SELECT * FROM rules FOR UPDATE")
        for prefix in ("rights_renewal_opens", "first_card_requests_open"):
            month = changes.get(f"{prefix}_month", before[f"{prefix}_month"])
            day = changes.get(f"{prefix}_day", before[f"{prefix}_day"])
            try:
                dt.date(2001, month, day)        # not a leap year: 29 February is not every year's
            except ValueError:
                raise RulesRefused(f"no such date: {month:02d}-{day:02d}") from None
        assignments = ", ".join(f"{name} = ${i}" for i, name in enumerate(changes, start=1))
        try:
            await conn.execute(f"UPDATE rules SET {assignments}", *changes.values())
        except asyncpg.CheckViolationError as exc:
            raise RulesRefused(f"refused by the rules table: {exc.constraint_name}") from None
        after = await current_rules(conn)
        await append_audit(conn, actor=actor, action=AUDIT_ACTION, subject="rules",
                           before={k: before[k] for k in changes},
                           after={k: getattr(after, k) for k in changes})
    return after
