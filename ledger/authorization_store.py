"""The authorization path's database side: one function call (one round trip) per message.

Takes plain values, returns the response body the database built and stored, byte for byte the
same on a replay. Knows nothing of HTTP or of the message codec.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from typing import Callable

import asyncpg

# A concurrent duplicate of an in-flight message fails with unique_violation on the idempotency
# key and is rolled back; the next call finds the stored response.
IDEMPOTENCY_ATTEMPTS = 2
IDEMPOTENCY_CONSTRAINT = "authorizations_once_per_terminal_request"   # migration 0010
# Errors after which the same message may succeed a moment later (response code 91): SQLSTATE
# classes 08 connection exception, 40 transaction rollback (serialization failure, deadlock),
# 53 insufficient resources (too many connections), 57 operator intervention (a cancelled
# statement, the server shutting down); and 55P03, a lock not granted within lock_timeout.
TRANSIENT_SQLSTATE_CLASSES = frozenset({"08", "40", "53", "57"})
TRANSIENT_SQLSTATES = frozenset({"55P03"})


def is_transient(exc: asyncpg.PostgresError) -> bool:
    sqlstate = exc.sqlstate or ""
    return sqlstate[:2] in TRANSIENT_SQLSTATE_CLASSES or sqlstate in TRANSIENT_SQLSTATES


class LedgerUnavailable(RuntimeError):
    """No connection or no answer in time (response code 91): the terminal reverses and retries."""


class LedgerFailure(RuntimeError):
    """The database refused the operation for a reason the caller cannot fix (response code 96)."""


_PURCHASE = "SELECT authorize_purchase($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
_REVERSAL = "SELECT authorize_reversal($1, $2, $3, $4, $5, $6, $7)"
_REFUND = "SELECT authorize_refund($1, $2, $3, $4, $5, $6, $7, $8, $9)"
_BATCH_CLOSE = "SELECT close_terminal_batch($1, $2, $3, $4, $5::jsonb, $6, $7)"


@dataclass(frozen=True)
class MessageOrigin:
    """Which terminal sent the message, and under which DUKPT key and counter (None when the
    server runs without terminal authentication): the ledger checks the counter increases."""

    terminal_id: str
    initial_key_id: bytes | None = None
    ksn_counter: int | None = None


class AuthorizationStore:
    def __init__(self, pool: asyncpg.Pool, *, pool_acquire_timeout_s: float, statement_timeout_s: float,
                 observe_round_trip_s: Callable[[float], None] = lambda seconds: None) -> None:
        self._pool = pool
        self._acquire_timeout_s = pool_acquire_timeout_s
        self._statement_timeout_s = statement_timeout_s
        self._observe_round_trip_s = observe_round_trip_s
        self.waiting_for_connection = 0

    async def purchase(self, origin: MessageOrigin, request_id: str, fingerprint: bytes,
                       stan: int, card_uid: bytes, amount_cents: int,
                       terminal_local_time: dt.datetime, partial_ok: bool) -> bytes:
        return await self._call(_PURCHASE, origin.terminal_id, request_id, fingerprint, stan,
                                card_uid, amount_cents, terminal_local_time, partial_ok,
                                origin.initial_key_id, origin.ksn_counter)

    async def reversal(self, origin: MessageOrigin, request_id: str, fingerprint: bytes,
                       stan: int, original_request_id: str) -> bytes:
        return await self._call(_REVERSAL, origin.terminal_id, request_id, fingerprint, stan,
                                original_request_id, origin.initial_key_id, origin.ksn_counter)

    async def refund(self, origin: MessageOrigin, request_id: str, fingerprint: bytes, stan: int,
                     original_rrn: str, amount_cents: int, card_uid: bytes) -> bytes:
        return await self._call(_REFUND, origin.terminal_id, request_id, fingerprint, stan,
                                original_rrn, amount_cents, card_uid, origin.initial_key_id,
                                origin.ksn_counter)

    async def batch_close(self, origin: MessageOrigin, request_id: str, fingerprint: bytes,
                          stan: int, terminal_totals_json: str) -> bytes:
        return await self._call(_BATCH_CLOSE, origin.terminal_id, request_id, fingerprint, stan,
                                terminal_totals_json, origin.initial_key_id, origin.ksn_counter)

    async def _call(self, sql: str, *args) -> bytes:
        for _ in range(IDEMPOTENCY_ATTEMPTS):
            try:
                self.waiting_for_connection += 1
                try:
                    connection = await self._pool.acquire(timeout=self._acquire_timeout_s)
                finally:
                    self.waiting_for_connection -= 1
                try:
                    started = time.perf_counter()
                    body = await connection.fetchval(sql, *args, timeout=self._statement_timeout_s)
                    self._observe_round_trip_s(time.perf_counter() - started)
                finally:
                    await self._pool.release(connection)
                return body.encode()
            except asyncpg.UniqueViolationError as exc:
                if exc.constraint_name != IDEMPOTENCY_CONSTRAINT:
                    raise LedgerFailure(f"UniqueViolationError: {exc}") from exc
                continue
            except asyncpg.InterfaceError as exc:
                if isinstance(exc, ValueError):     # an argument the driver cannot encode
                    raise LedgerFailure(f"{type(exc).__name__}: {exc}") from exc
                raise LedgerUnavailable(type(exc).__name__) from exc
            except (TimeoutError, OSError, asyncpg.InternalClientError) as exc:
                # Connection lost, cancelled, or left in a state the driver cannot continue
                # from (InternalClientError derives from Exception only): retry later (91).
                raise LedgerUnavailable(type(exc).__name__) from exc
            except asyncpg.PostgresError as exc:
                if is_transient(exc):
                    raise LedgerUnavailable(type(exc).__name__) from exc
                raise LedgerFailure(f"{type(exc).__name__}: {exc}") from exc
        raise LedgerFailure("idempotency key still contended after retries")
