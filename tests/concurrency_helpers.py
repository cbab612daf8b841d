"""What tests of concurrent work share: a card's wallet held locked by another session (as a
concurrent sale holds it, so that the hot path's lock waits meet the real row lock), and a
bounded wait for a condition whose timing the test does not control."""

from __future__ import annotations

import asyncio
import inspect

import pytest

CONDITION_TIMEOUT_S = 30.0
CONDITION_POLL_S = 0.005
LOCK_WALLET_SQL = ("SELECT 1 FROM accounts a JOIN wallets w ON w.account_id = a.id"
                   " JOIN cards c ON c.beneficiary_id = w.beneficiary_id WHERE c.uid = $1"
                   " FOR UPDATE OF a")


async def lock_wallet(conn, card_uid: bytes):
    """Hold the card's wallet row locked in a transaction opened on `conn`: purchases of that
    card wait until the returned transaction commits or rolls back."""
    transaction = conn.transaction()
    await transaction.start()
    await conn.execute(LOCK_WALLET_SQL, card_uid)
    return transaction


async def until(predicate, what: str, timeout_s: float = CONDITION_TIMEOUT_S) -> None:
    """Poll `predicate` (plain or awaitable) until it holds; fail the test, naming `what`,
    after `timeout_s`."""
    async def holds() -> bool:
        value = predicate()
        return await value if inspect.isawaitable(value) else value
    try:
        async with asyncio.timeout(timeout_s):
            while not await holds():
                await asyncio.sleep(CONDITION_POLL_S)
    except TimeoutError:
        pytest.fail(f"never happened: {what}")
