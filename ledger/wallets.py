"""Reading a wallet: what a card can still spend in a school year."""

from __future__ import annotations

import asyncpg


async def card_balance_cents(conn: asyncpg.Connection, uid: bytes, school_year: int) -> int | None:
    """The posted balance of the wallet behind the card; None without a card or a wallet."""
    return await conn.fetchval(
        "SELECT a.credits_posted - a.debits_posted FROM cards c JOIN wallets w"
        " ON w.beneficiary_id = c.beneficiary_id AND w.school_year = $2"
        " JOIN accounts a ON a.id = w.account_id WHERE c.uid = $1", uid, school_year)
