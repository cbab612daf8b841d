"""Group commit (authorizer/group_commit.py, authorize_batch.sql): many messages, one round trip
and one commit, and still each message decided as if alone: its own response, bytes stored for its
retries, a failure that is its own, no message run after its deadline, every answer given only
once its commit is visible to others."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os

import asyncpg
import pytest

from authorizer.group_commit import GroupCommitter
from authorizer.listener import METRICS
from hdfpay.config import Settings
from hdfpay.server import running_server
from ledger.authorization_store import (AuthorizationStore, GroupableCall, LedgerUnavailable,
                                        MessageOrigin)
from ledger.database import create_pool
from ledger.demo_region import card_uid
from ledger.roles import role_dsn
from terminal_protocol.client import TerminalClient

from concurrency_helpers import lock_wallet
from conftest import ACTIVE_TERMINAL, balance_of, set_balance

ORIGIN = MessageOrigin(ACTIVE_TERMINAL)          # no KSN: authentication is the server's, above
STORE_TIMEOUT_S = 30.0
CARDS = [card_uid(n) for n in range(5, 9)]
HELD_PAST_BUDGET_S = 0.25


def _purchase(card: bytes, cents: int, request_id: str | None = None) -> GroupableCall:
    return GroupableCall("purchase", ORIGIN, request_id or os.urandom(8).hex(), os.urandom(32),
                         1, card_uid=card, amount_cents=cents, partial_ok=False)


def _reversal(original_request_id: str) -> GroupableCall:
    return GroupableCall("reversal", ORIGIN, os.urandom(8).hex(), os.urandom(32), 2,
                         original=original_request_id)


@pytest.fixture
async def store(dsn):
    """The listener's store on the terminal role's pool (lock_timeout included)."""
    pool = await create_pool(role_dsn(dsn, "hdfpay_terminal"), 3)
    try:
        yield AuthorizationStore(pool, pool_acquire_timeout_s=STORE_TIMEOUT_S,
                                 statement_timeout_s=STORE_TIMEOUT_S)
    finally:
        await pool.close()


async def test_one_batch_decides_each_message_as_alone(store, conn):
    for card in CARDS:
        await set_balance(conn, card, 10_00)
    retried = _purchase(CARDS[0], 3_00)
    voided_first = _purchase(CARDS[1], 2_00)
    calls = [retried, _purchase(CARDS[2], 20_00), _reversal(voided_first.request_id),
             voided_first, retried,
             GroupableCall("bogus", ORIGIN, os.urandom(8).hex(), os.urandom(32), 3),
             _purchase(CARDS[3], 4_00)]
    results = await store.group(calls)
    answers = [json.loads(r) if isinstance(r, bytes) else r for r in results]
    assert [a["rc"] if isinstance(a, dict) else type(a).__name__ for a in answers] == [
        "00", "51", "25", "94", "00", "LedgerFailure", "00"]
    assert results[4] == results[0]                 # the retry: the stored bytes
    assert all(call.progress.left for call in calls)    # each may have committed, whoever waits
    assert await balance_of(conn, CARDS[0]) == 7_00
    assert await balance_of(conn, CARDS[1]) == 10_00    # the tombstone declined the late original
    assert await balance_of(conn, CARDS[2]) == 10_00
    assert await balance_of(conn, CARDS[3]) == 6_00
    assert await conn.fetchval("SELECT count(*) FROM transfers WHERE code = 'PURCHASE'") == 2


async def test_a_locked_wallet_fails_only_its_own_message(store, conn, dsn):
    for card in CARDS[:2]:
        await set_balance(conn, card, 10_00)
    holder = await asyncpg.connect(dsn)
    try:
        held = await lock_wallet(holder, CARDS[0])
        results = await store.group([_purchase(CARDS[0], 1_00), _purchase(CARDS[1], 1_00)])
        await held.rollback()
    finally:
        await holder.close()
    assert isinstance(results[0], LedgerUnavailable)        # 55P03 after lock_timeout: 91
    assert json.loads(results[1])["rc"] == "00"
    assert await balance_of(conn, CARDS[0]) == 10_00
    assert await balance_of(conn, CARDS[1]) == 9_00


async def test_a_duplicate_committed_by_another_transaction_gets_the_stored_bytes(store, conn, dsn):
    """The batch's copy waits on the wallet the other copy holds, then its INSERT meets the
    committed key (unique_violation): rolled back alone, called again, the stored answer."""
    await set_balance(conn, CARDS[0], 10_00)
    call = _purchase(CARDS[0], 1_00)
    first = await asyncpg.connect(dsn)
    try:
        transaction = first.transaction()
        await transaction.start()
        stored = await first.fetchval(
            "SELECT authorize_purchase($1, $2, $3, $4, $5, $6, NULL, false, NULL, NULL)",
            ACTIVE_TERMINAL, call.request_id, call.fingerprint, call.stan, call.card_uid,
            call.amount_cents)
        batch = asyncio.ensure_future(store.group([call, _purchase(CARDS[1], 1_00)]))
        while not await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND query LIKE '%authorize_batch%'"):
            await asyncio.sleep(0.001)
        await transaction.commit()
        results = await batch
    finally:
        await first.close()
    assert results[0] == stored.encode()
    assert json.loads(results[1])["rc"] == "00"
    assert await balance_of(conn, CARDS[0]) == 9_00


async def test_messages_arriving_together_share_commits_and_are_answered_after_them(store, conn):
    await set_balance(conn, CARDS[0], 100_00)
    sizes: list[int] = []
    committer = GroupCommitter(store, batches_in_flight_max=1, observe_batch_messages=sizes.append)
    deadline = asyncio.get_running_loop().time() + STORE_TIMEOUT_S

    calls = [_purchase(CARDS[0], 1_00) for _ in range(20)]
    answers = await asyncio.gather(*(committer.decide(c, deadline) for c in calls))
    assert [json.loads(a)["rc"] for a in answers] == ["00"] * 20
    assert sum(sizes) == 20 and max(sizes) > 1
    assert await balance_of(conn, CARDS[0]) == 80_00


async def test_no_message_is_answered_before_its_batch_commits(store, conn, dsn):
    """The batch's second wallet is held elsewhere: while the batch waits for it, the first
    message, decided already, is neither answered nor visible to anyone else."""
    free, held = sorted(CARDS[:2])          # the batch runs them in card order
    for card in (free, held):
        await set_balance(conn, card, 10_00)
    committer = GroupCommitter(store)
    deadline = asyncio.get_running_loop().time() + STORE_TIMEOUT_S
    first, second = _purchase(free, 1_00), _purchase(held, 1_00)
    holder = await asyncpg.connect(dsn)
    try:
        transaction = await lock_wallet(holder, held)
        decisions = [asyncio.ensure_future(committer.decide(c, deadline))
                     for c in (first, second)]
        while not await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND query LIKE '%authorize_batch%'"):
            await asyncio.sleep(0.001)
        answered_early = decisions[0].done()
        visible_early = await conn.fetchval(
            "SELECT count(*) FROM authorizations WHERE request_id = $1", first.request_id)
        await transaction.commit()
        decided = await asyncio.gather(*decisions)
    finally:
        await holder.close()
    assert (answered_early, visible_early) == (False, 0)
    assert [json.loads(a)["rc"] for a in decided] == ["00", "00"]


async def test_a_card_in_a_batch_at_the_database_waits_for_the_next_batch(dsn, conn):
    """Its wallet is held by the first batch (here by another session the first batch waits
    for): a second purchase of that card stays queued rather than wait in a second batch, which
    meanwhile decides another card's purchase."""
    held, other = CARDS[:2]
    for card in (held, other):
        await set_balance(conn, card, 10_00)
    pool = await asyncpg.create_pool(role_dsn(dsn, "hdfpay_terminal"), min_size=2, max_size=2)
    holder = await asyncpg.connect(dsn)
    try:
        store = AuthorizationStore(pool, pool_acquire_timeout_s=STORE_TIMEOUT_S,
                                   statement_timeout_s=STORE_TIMEOUT_S)
        committer = GroupCommitter(store, batches_in_flight_max=2)
        deadline = asyncio.get_running_loop().time() + STORE_TIMEOUT_S
        transaction = await lock_wallet(holder, held)
        first = asyncio.ensure_future(committer.decide(_purchase(held, 1_00), deadline))
        while not await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND query LIKE '%authorize_batch%'"):
            await asyncio.sleep(0.001)
        second = asyncio.ensure_future(committer.decide(_purchase(held, 1_00), deadline))
        elsewhere = await committer.decide(_purchase(other, 1_00), deadline)
        queued_meanwhile = committer.queued()
        await transaction.commit()
        decided = await asyncio.gather(first, second)
    finally:
        await holder.close()
        await pool.close()
    assert json.loads(elsewhere)["rc"] == "00"
    assert queued_meanwhile == 1
    assert [json.loads(a)["rc"] for a in decided] == ["00", "00"]
    assert await balance_of(conn, held) == 8_00


async def test_a_message_queued_past_its_deadline_is_never_run(store, conn):
    committer = GroupCommitter(store)
    late = _purchase(CARDS[0], 1_00)
    with pytest.raises(LedgerUnavailable) as unavailable:
        await committer.decide(late, asyncio.get_running_loop().time())
    assert unavailable.value.may_have_committed is False    # the server's void: a tombstone only
    assert late.progress.left is False
    assert await conn.fetchval("SELECT count(*) FROM authorizations WHERE request_id = $1",
                               late.request_id) == 0


async def test_with_group_commit_off_each_message_is_its_own_call(settings, dsn, hsm, keys_for,
                                                                  conn, monkeypatch):
    monkeypatch.setenv("HDFPAY_GROUP_COMMIT", "off")
    assert Settings.from_env().group_commit is False
    await set_balance(conn, CARDS[0], 10_00)
    alone = dataclasses.replace(settings, group_commit=False)
    async with running_server(alone, dsn, hsm) as server, \
            TerminalClient(server.url, ACTIVE_TERMINAL, keys_for(ACTIVE_TERMINAL)) as client:
        answers = [await client.purchase(CARDS[0], 1_00) for _ in range(3)]
        assert [a.rc for a in answers] == ["00"] * 3
        assert _batches(server) == 0
    assert await balance_of(conn, CARDS[0]) == 7_00


async def test_by_default_the_server_commits_in_groups(server, client, conn):
    await set_balance(conn, CARDS[0], 10_00)
    assert (await client.purchase(CARDS[0], 1_00)).rc == "00"
    assert _batches(server) == 1


def _batches(server) -> float:
    return server.app[METRICS].registry.get_sample_value("hdfpay_group_commit_batch_messages_count")


async def test_a_message_past_its_time_budget_is_rolled_back_even_once_the_lock_comes(store, conn,
                                                                                       dsn):
    """Its budget (what is left before its request's deadline) bounds its lock wait: the server
    answers it 91 at the deadline, and the batch must not commit it afterwards; the other message
    of the batch is not held back by it."""
    await set_balance(conn, CARDS[0], 10_00)
    holder = await asyncpg.connect(dsn)
    try:
        transaction = holder.transaction()
        await transaction.start()
        await holder.execute("SELECT 1 FROM wallets w JOIN cards c ON c.beneficiary_id ="
                             " w.beneficiary_id WHERE c.uid = $1 FOR UPDATE", CARDS[0])
        batch = asyncio.ensure_future(store.group(
            [_purchase(CARDS[0], 1_00), _purchase(CARDS[1], 1_00)], time_left_ms=[100, 10_000]))
        while not await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND query LIKE '%authorize_batch%'"):
            await asyncio.sleep(0.001)
        # The wallet is held past the message's budget (100 ms) but within the hot path's lock
        # timeout (500 ms): without the budget, the message would get it and commit.
        await asyncio.sleep(HELD_PAST_BUDGET_S)
        await transaction.rollback()
        results = await batch
    finally:
        await holder.close()
    assert isinstance(results[0], LedgerUnavailable) and "LockNotAvailable" in str(results[0])
    assert json.loads(results[1])["rc"] == "00"
    assert await balance_of(conn, CARDS[0]) == 10_00
    assert await conn.fetchval("SELECT count(*) FROM authorizations WHERE card_id ="
                               " (SELECT id FROM cards WHERE uid = $1)", CARDS[0]) == 0


async def test_a_message_whose_budget_is_spent_fails_alone_and_the_batch_commits(store, conn):
    """Its deadline passed before its turn in the batch: rolled back alone (HD408, caught per
    message; 57014 would not be, and would fail the whole batch), answered 91."""
    results = await store.group([_purchase(CARDS[0], 1_00), _purchase(CARDS[1], 1_00)],
                                time_left_ms=[0, 10_000])
    assert isinstance(results[0], LedgerUnavailable)
    assert json.loads(results[1])["rc"] == "00"
    assert await conn.fetchval("SELECT count(*) FROM authorizations WHERE card_id ="
                               " (SELECT id FROM cards WHERE uid = $1)", CARDS[0]) == 0


async def test_a_budget_spent_waiting_for_a_connection_is_not_given_again(dsn, conn):
    """Every pooled connection is busy past a message's budget: once the batch gets one, that
    message is rolled back alone (its request was already answered 91 at its deadline), not
    committed with a budget counted afresh from when the statement started."""
    pool = await create_pool(role_dsn(dsn, "hdfpay_terminal"), 1)
    try:
        store = AuthorizationStore(pool, pool_acquire_timeout_s=STORE_TIMEOUT_S,
                                   statement_timeout_s=STORE_TIMEOUT_S)
        held = await pool.acquire()
        try:
            batch = asyncio.ensure_future(store.group(
                [_purchase(CARDS[0], 1_00), _purchase(CARDS[1], 1_00)],
                time_left_ms=[100, 10_000]))
            while not store.waiting_for_connection:
                await asyncio.sleep(0.001)
            await asyncio.sleep(HELD_PAST_BUDGET_S)     # the pool stays busy this long
        finally:
            await pool.release(held)
        results = await batch
    finally:
        await pool.close()
    assert isinstance(results[0], LedgerUnavailable)
    assert json.loads(results[1])["rc"] == "00"
    assert await conn.fetchval("SELECT count(*) FROM authorizations WHERE card_id ="
                               " (SELECT id FROM cards WHERE uid = $1)", CARDS[0]) == 0
