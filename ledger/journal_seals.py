"""The journal's seals (migrations/0018_journal_seals.sql): which rows a seal covers, the bytes it
commits to, and checking rows against seals, everything but the MAC, which only the HSM computes
(hdfpay/journal_sealing.py composes the two: the ledger never imports the HSM).

Why seals, made afterwards, rather than a keyed hash per row: the database cannot compute with a
key held by the HSM inside the transaction that writes the row, and a per-row chain would make
every transfer wait for the one before it (the audit trail's head does that; the hot path must
not). A seal instead hashes, in id order, the rows committed since the previous seal.

The bytes hashed are built here in Python from the raw columns, never by a SQL function: whoever
owns the database could replace such a function to hide a rewritten row.

The horizon, i.e. up to which id a stream can be sealed without a row of a lower id committing
later (it would then sit inside a sealed range and never match):
- audit: ids are allocated under the lock of the audit_head row and each appender commits before
  the next gets the lock, so the rows a snapshot sees are exactly ids 1..audit_head.last_id.
- transfers: ids come from an identity sequence before commit, so commits arrive out of id order.
  H = the sequence's last value is read first; every transaction that drew an id <= H was then
  already writing transfers, so it holds a ROW EXCLUSIVE lock on the table (taken before the id
  is drawn, kept until it ends). Those transactions are read from pg_locks, and the sealer waits
  (HORIZON_WAIT_MAX_MS at most) until each has ended, as CREATE INDEX CONCURRENTLY waits for older
  transactions; then every id <= H is committed or never will be. No lock is taken on transfers:
  the hot path never waits for a seal. A sequence cache above 1 would hand ids out of order to
  later transactions, so it is refused. (A journal partitioned by month would have its writers
  hold the partitions' locks: the query of the writers must then name them.)
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import time
from dataclasses import dataclass
from typing import AsyncIterator

import asyncpg

STREAMS = ("audit", "transfers")
GENESIS_MAC = bytes(32)
SEAL_FORMAT = "hdfpay-journal-seal/1"
ROWS_FORMAT = "hdfpay-journal-rows/1"
SEAL_MAX_ROWS = 100_000          # rows per seal: a backlog becomes several seals
READ_BATCH_ROWS = 10_000
HORIZON_WAIT_MAX_MS = 30_000     # for transactions writing transfers to end
HORIZON_POLL_MS = 50
MAX_PROBLEMS = 100
SEALER_ADVISORY_LOCK_KEY = 0x4844_5345  # "HDSE": one sealer at a time
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_ONE_MICROSECOND = dt.timedelta(microseconds=1)

_ROWS_SQL = {
    "audit": "SELECT id, occurred_at, actor, action, subject, before::text AS before_text,"
             " after::text AS after_text, previous_hash, row_hash FROM audit_log"
             " WHERE id > $1 AND id <= $2 ORDER BY id",
    "transfers": "SELECT id, code, debit_account_id, credit_account_id, amount_cents,"
                 " authorization_id, reference, created_at FROM transfers"
                 " WHERE id > $1 AND id <= $2 ORDER BY id",
}
_SEAL_COLUMNS = ("stream, seq, first_id, last_id, row_count, digest, previous_mac, key_alias,"
                 " sealed_at, mac")


class HorizonNotReached(Exception):
    """Transactions writing transfers stayed open too long: nothing new can be sealed yet."""


@dataclass(frozen=True)
class Seal:
    stream: str
    seq: int
    first_id: int
    last_id: int
    row_count: int
    digest: bytes
    previous_mac: bytes
    key_alias: str
    sealed_at: dt.datetime
    mac: bytes = b""

    def message(self) -> bytes:
        """What the MAC covers: every field but the MAC, the previous seal's MAC included."""
        fields = [SEAL_FORMAT, self.stream, self.seq, self.first_id, self.last_id,
                  self.row_count, epoch_micros(self.sealed_at), self.key_alias]
        return "\n".join(map(str, fields)).encode() + b"\n" + self.digest + self.previous_mac

    def describe(self) -> str:
        return f"{self.stream} seal {self.seq} (ids {self.first_id}-{self.last_id})"


def epoch_micros(moment: dt.datetime) -> int:
    return (moment - _EPOCH) // _ONE_MICROSECOND


def row_bytes(stream: str, row: asyncpg.Record) -> bytes:
    """A row's canonical bytes: its columns as a compact JSON array (times in epoch µs)."""
    if stream == "transfers":
        fields = [row["id"], row["code"], row["debit_account_id"], row["credit_account_id"],
                  row["amount_cents"], row["authorization_id"], row["reference"],
                  epoch_micros(row["created_at"])]
    else:
        fields = [row["id"], epoch_micros(row["occurred_at"]), row["actor"], row["action"],
                  row["subject"], row["before_text"], row["after_text"],
                  bytes(row["previous_hash"]).hex(), bytes(row["row_hash"]).hex()]
    return json.dumps(fields, ensure_ascii=False, separators=(",", ":")).encode()


class RowsDigest:
    """SHA-256 over a stream's rows in id order, each length-prefixed."""

    def __init__(self, stream: str) -> None:
        self.stream, self.rows = stream, 0
        self._hash = hashlib.sha256(f"{ROWS_FORMAT}\n{stream}\n".encode())

    def add(self, row: asyncpg.Record) -> None:
        data = row_bytes(self.stream, row)
        self._hash.update(len(data).to_bytes(8, "big") + data)
        self.rows += 1

    def digest(self) -> bytes:
        return self._hash.digest()


def _check_stream(stream: str) -> str:
    if stream not in STREAMS:
        raise ValueError(f"unknown journal stream {stream!r} (one of {', '.join(STREAMS)})")
    return stream


def _seal(row: asyncpg.Record) -> Seal:
    return Seal(**{name: bytes(row[name]) if isinstance(row[name], (bytes, memoryview))
                   else row[name] for name in Seal.__dataclass_fields__})


async def seals(conn: asyncpg.Connection, stream: str) -> list[Seal]:
    rows = await conn.fetch(f"SELECT {_SEAL_COLUMNS} FROM journal_seals WHERE stream = $1"
                            " ORDER BY seq", _check_stream(stream))
    return [_seal(row) for row in rows]


async def last_seal(conn: asyncpg.Connection, stream: str) -> Seal | None:
    row = await conn.fetchrow(f"SELECT {_SEAL_COLUMNS} FROM journal_seals WHERE stream = $1"
                              " ORDER BY seq DESC LIMIT 1", _check_stream(stream))
    return None if row is None else _seal(row)


async def seal_count(conn: asyncpg.Connection) -> int:
    return await conn.fetchval("SELECT count(*) FROM journal_seals")


@contextlib.asynccontextmanager
async def sole_sealer(conn: asyncpg.Connection) -> AsyncIterator[bool]:
    """A session's advisory lock around a sealing run: False if another sealer holds it."""
    locked = await conn.fetchval("SELECT pg_try_advisory_lock($1)", SEALER_ADVISORY_LOCK_KEY)
    try:
        yield locked
    finally:
        if locked:
            await conn.execute("SELECT pg_advisory_unlock($1)", SEALER_ADVISORY_LOCK_KEY)


async def sealable_horizon(conn: asyncpg.Connection, stream: str, *,
                           wait_max_ms: int = HORIZON_WAIT_MAX_MS) -> int:
    """The highest id that can be sealed now (see the module's docstring); call it outside a
    transaction, then seal in a transaction begun after it returns."""
    if _check_stream(stream) == "audit":
        return await conn.fetchval("SELECT last_id FROM audit_head")
    sequence = await conn.fetchval("SELECT pg_get_serial_sequence('transfers', 'id')")
    cache = await conn.fetchval("SELECT seqcache FROM pg_sequence WHERE seqrelid = $1::regclass",
                                sequence)
    if cache != 1:
        raise HorizonNotReached(f"the transfers' id sequence caches {cache} values: ids would "
                                "commit out of order beyond what the sealer can wait for")
    horizon = await conn.fetchval("SELECT pg_sequence_last_value($1::regclass)", sequence)
    if horizon is None:
        return 0
    writers = await conn.fetchval(
        "SELECT coalesce(array_agg(DISTINCT virtualtransaction), '{}') FROM pg_locks"
        " WHERE locktype = 'relation' AND relation = 'transfers'::regclass"
        " AND mode = 'RowExclusiveLock' AND pid IS DISTINCT FROM pg_backend_pid()")
    deadline = time.monotonic() + wait_max_ms / 1000
    while writers:
        writers = await conn.fetchval(
            "SELECT coalesce(array_agg(DISTINCT virtualtransaction), '{}') FROM pg_locks"
            " WHERE virtualtransaction = ANY($1::text[])", writers)
        if writers and time.monotonic() >= deadline:
            raise HorizonNotReached(
                f"{len(writers)} transaction(s) writing transfers still open after {wait_max_ms}"
                " ms: transfers stay sealed up to the previous seal until the next run")
        if writers:
            await asyncio.sleep(HORIZON_POLL_MS / 1000)
    return horizon


async def draft_next_seal(conn: asyncpg.Connection, stream: str, horizon: int, *,
                          key_alias: str, max_rows: int = SEAL_MAX_ROWS) -> Seal | None:
    """The next seal of `stream` (without its MAC) over at most `max_rows` rows up to
    `horizon`; None when there is nothing new. Inside the caller's transaction."""
    previous = await last_seal(conn, stream)
    after = previous.last_id if previous else 0
    digest, last_id = RowsDigest(stream), after
    if after < horizon:
        cursor = conn.cursor(_ROWS_SQL[stream] + " LIMIT $3", after, horizon, max_rows,
                             prefetch=READ_BATCH_ROWS)
        async for row in cursor:
            digest.add(row)
            last_id = row["id"]
    if digest.rows == 0:
        return None
    return Seal(stream, previous.seq + 1 if previous else 1, after + 1, last_id, digest.rows,
                digest.digest(), previous.mac if previous else GENESIS_MAC, key_alias,
                await conn.fetchval("SELECT business_now()"))


async def rows_between(conn: asyncpg.Connection, stream: str, after_id: int,
                       through_id: int) -> list[asyncpg.Record]:
    """A stream's rows with ids after_id < id <= through_id, in id order, as a seal reads them."""
    return await conn.fetch(_ROWS_SQL[_check_stream(stream)], after_id, through_id)


async def insert_seal(conn: asyncpg.Connection, seal: Seal) -> None:
    values = dataclasses.astuple(seal)
    await conn.execute(f"INSERT INTO journal_seals ({_SEAL_COLUMNS}) VALUES"
                       f" ({', '.join(f'${n}' for n in range(1, len(values) + 1))})", *values)


@dataclass(frozen=True)
class RowsCheck:
    """The rows of a stream against its seals, without the key: structure and digests."""
    seals: tuple[Seal, ...]
    problems: tuple[str, ...]
    unsealed_rows: int


async def check_rows(conn: asyncpg.Connection, stream: str) -> RowsCheck:
    """Every seal follows the one before (seq, ids, MAC) and every row up to the last seal
    hashes to its seal's digest. Read in one snapshot."""
    problems: list[str] = []
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        stream_seals = await seals(conn, stream)
        previous = None
        for seal in stream_seals:
            problems.extend(_structure(seal, previous))
            previous = seal
        through = stream_seals[-1].last_id if stream_seals else 0
        problems.extend([p async for p in _digest_problems(conn, stream, stream_seals)])
        unsealed = await conn.fetchval(
            f"SELECT count(*) FROM {'audit_log' if stream == 'audit' else 'transfers'}"
            " WHERE id > $1", through)
    return RowsCheck(tuple(stream_seals), tuple(problems[:MAX_PROBLEMS]), unsealed)


def _structure(seal: Seal, previous: Seal | None) -> list[str]:
    expected_seq = previous.seq + 1 if previous else 1
    expected_first = previous.last_id + 1 if previous else 1
    found = []
    if seal.seq != expected_seq:
        found.append(f"{seal.describe()}: expected seal {expected_seq} (seals deleted or inserted)")
    if seal.first_id != expected_first:
        found.append(f"{seal.describe()}: does not start at id {expected_first}, just after the"
                     " previous seal (seals deleted or altered)")
    if seal.previous_mac != (previous.mac if previous else GENESIS_MAC):
        found.append(f"{seal.describe()}: does not carry the previous seal's MAC (chain broken)")
    return found


async def _digest_problems(conn: asyncpg.Connection, stream: str,
                           stream_seals: list[Seal]) -> AsyncIterator[str]:
    if not stream_seals:
        return
    by_range = sorted(stream_seals, key=lambda seal: seal.first_id)
    index, digest = 0, RowsDigest(stream)
    cursor = conn.cursor(_ROWS_SQL[stream], 0, by_range[-1].last_id, prefetch=READ_BATCH_ROWS)
    async for row in cursor:
        while row["id"] > by_range[index].last_id:
            problem = _compare(by_range[index], digest)
            if problem:
                yield problem
            index, digest = index + 1, RowsDigest(stream)
        if row["id"] < by_range[index].first_id:
            yield f"{stream} row {row['id']} lies in no seal's range (seals altered)"
            continue
        digest.add(row)
    for seal in by_range[index:]:
        problem = _compare(seal, digest)
        if problem:
            yield problem
        digest = RowsDigest(stream)


def _compare(seal: Seal, digest: RowsDigest) -> str | None:
    if digest.rows != seal.row_count:
        return (f"{seal.describe()}: {digest.rows} rows now, {seal.row_count} sealed"
                f" (rows deleted or inserted among ids {seal.first_id}-{seal.last_id})")
    if digest.digest() != seal.digest:
        return (f"{seal.describe()}: the rows differ from what was sealed (a row among ids"
                f" {seal.first_id}-{seal.last_id} was changed)")
    return None
