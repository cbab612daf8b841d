"""The region's limits and fees, held by the database (table rules, one row) so that every server
and command applies the same: authorize_purchase() reads the purchase limit inside its one round
trip, replace_card() the replacement fee. Read here for display and for the load drivers."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg


@dataclass(frozen=True)
class Rules:
    max_purchase_amount_cents: int     # a purchase above it is declined (61)
    replacement_fee_cents: int         # a lost, stolen or damaged card's replacement


async def current_rules(conn: asyncpg.Connection) -> Rules:
    row = await conn.fetchrow("SELECT max_purchase_amount_cents, replacement_fee_cents FROM rules")
    return Rules(**dict(row))
