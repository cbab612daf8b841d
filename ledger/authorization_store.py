"""The authorization path's database side: one function call (one round trip) per message.

Takes plain values, returns the response body the database built and stored, byte for byte the
same on a replay. Knows nothing of HTTP or of the message codec.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass, field
from typing import Callable

import asyncpg

from ledger.database import HOT_PATH_LOCK_TIMEOUT_MS

# A concurrent duplicate of an in-flight message fails with unique_violation on the idempotency
# key and is rolled back; the next call finds the stored response.
IDEMPOTENCY_ATTEMPTS = 2
IDEMPOTENCY_CONSTRAINT = "authorizations_once_per_terminal_request"   # migration 0010
# Errors after which the same message may succeed a moment later (response code 91): SQLSTATE
# classes 08 connection exception, 40 transaction rollback (serialization failure, deadlock),
# 53 insufficient resources (too many connections), 57 operator intervention (a cancelled
# statement, the server shutting down); and 55P03, a lock not granted within lock_timeout.
TRANSIENT_SQLSTATE_CLASSES = frozenset({"08", "40", "53", "57"})
# HD408: a message of a batch past its deadline (authorize_batch.sql), rolled back alone.
TRANSIENT_SQLSTATES = frozenset({"55P03", "HD408"})


def is_transient(exc: asyncpg.PostgresError) -> bool:
    sqlstate = exc.sqlstate or ""
    return sqlstate[:2] in TRANSIENT_SQLSTATE_CLASSES or sqlstate in TRANSIENT_SQLSTATES


# Errors the database reported after which the statement may have committed all the same: the
# connection broke (class 08), or the server shut down (57P01-57P03) after it was sent, the
# commit perhaps done. Any other error it reports rolled the statement back.
UNCERTAIN_SQLSTATE_CLASSES = frozenset({"08"})
UNCERTAIN_SQLSTATE_PREFIXES = ("57P",)


def outcome_unknown(exc: asyncpg.PostgresError) -> bool:
    sqlstate = exc.sqlstate or ""
    return sqlstate[:2] in UNCERTAIN_SQLSTATE_CLASSES or sqlstate.startswith(UNCERTAIN_SQLSTATE_PREFIXES)


class LedgerUnavailable(RuntimeError):
    """No connection or no answer in time (response code 91): the terminal reverses and retries.

    `may_have_committed`: False only when the call certainly committed nothing (it never reached
    the database, or the database reported it rolled back); the server's void of a purchase
    answered 91 (authorizer/server_voids.py) then only leaves a tombstone."""

    def __init__(self, message: str, *, may_have_committed: bool = True) -> None:
        super().__init__(message)
        self.may_have_committed = may_have_committed


class LedgerFailure(RuntimeError):
    """The database refused the operation for a reason the caller cannot fix (response code 96)."""


_PURCHASE = "SELECT authorize_purchase($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
_REVERSAL = "SELECT authorize_reversal($1, $2, $3, $4, $5, $6, $7)"
_REFUND = "SELECT authorize_refund($1, $2, $3, $4, $5, $6, $7, $8, $9)"
_BATCH_CLOSE = "SELECT close_terminal_batch($1, $2, $3, $4, $5::jsonb, $6, $7)"
_SERVER_VOID = "SELECT server_void_purchase($1, $2, $3, $4)"
# Group commit: many messages, one round trip, one commit (authorize_batch.sql).
_GROUP = ("SELECT response, error_sqlstate, error_constraint, error_message FROM authorize_batch("
          "$1::text[], $2::text[], $3::text[], $4::bytea[], $5::integer[], $6::bytea[], "
          "$7::bigint[], $8::timestamp[], $9::boolean[], $10::text[], $11::bytea[], $12::bigint[],"
          " $13::integer[], $14::integer)")
_GROUP_KINDS = {"purchase": _PURCHASE, "reversal": _REVERSAL, "refund": _REFUND}


@dataclass(frozen=True)
class MessageOrigin:
    """Which terminal sent the message, and under which DUKPT key and counter (None when the
    server runs without terminal authentication): the ledger checks the counter increases."""

    terminal_id: str
    initial_key_id: bytes | None = None
    ksn_counter: int | None = None


class CallProgress:
    """Whether a message's call has left for the database (set once its pool connection is had,
    or once it is in a group-commit batch, which goes on whoever waits for it): a call cut short
    before that committed nothing."""

    __slots__ = ("left",)

    def __init__(self) -> None:
        self.left = False


@dataclass(frozen=True)
class GroupableCall:
    """One purchase, reversal or refund, in the columns authorize_batch() takes; `original` is a
    reversal's original request id or a refund's original RRN."""

    kind: str
    origin: MessageOrigin
    request_id: str
    fingerprint: bytes
    stan: int
    card_uid: bytes | None = None
    amount_cents: int | None = None
    terminal_local_time: dt.datetime | None = None
    partial_ok: bool | None = None
    original: str | None = None
    progress: CallProgress = field(default_factory=CallProgress, compare=False, repr=False)

    def single_args(self) -> tuple:
        """The arguments of this message's own function (the one-call-per-message path)."""
        o = self.origin
        head = (o.terminal_id, self.request_id, self.fingerprint, self.stan)
        if self.kind == "purchase":
            return head + (self.card_uid, self.amount_cents, self.terminal_local_time,
                           self.partial_ok, o.initial_key_id, o.ksn_counter)
        if self.kind == "reversal":
            return head + (self.original, o.initial_key_id, o.ksn_counter)
        return head + (self.original, self.amount_cents, self.card_uid, o.initial_key_id,
                       o.ksn_counter)


def _group_columns(calls: list[GroupableCall]) -> list[list]:
    return [[c.kind for c in calls], [c.origin.terminal_id for c in calls],
            [c.request_id for c in calls], [c.fingerprint for c in calls],
            [c.stan for c in calls], [c.card_uid for c in calls],
            [c.amount_cents for c in calls], [c.terminal_local_time for c in calls],
            [c.partial_ok for c in calls], [c.original for c in calls],
            [c.origin.initial_key_id for c in calls], [c.origin.ksn_counter for c in calls]]


class AuthorizationStore:
    def __init__(self, pool: asyncpg.Pool, *, pool_acquire_timeout_s: float, statement_timeout_s: float,
                 observe_round_trip_s: Callable[[float], None] = lambda seconds: None) -> None:
        self._pool = pool
        self._acquire_timeout_s = pool_acquire_timeout_s
        self._statement_timeout_s = statement_timeout_s
        self._observe_round_trip_s = observe_round_trip_s
        self.waiting_for_connection = 0

    async def batch_close(self, origin: MessageOrigin, request_id: str, fingerprint: bytes,
                          stan: int, terminal_totals_json: str) -> bytes:
        return await self._call(_BATCH_CLOSE, origin.terminal_id, request_id, fingerprint, stan,
                                terminal_totals_json, origin.initial_key_id, origin.ksn_counter)

    async def single(self, call: GroupableCall) -> bytes:
        """A groupable message decided alone: its own function, its own commit."""
        return await self._call(_GROUP_KINDS[call.kind], *call.single_args(),
                                progress=call.progress)

    async def group(self, calls: list[GroupableCall],
                    time_left_ms: list[int] | None = None) -> list[bytes | Exception]:
        """Each message's response, or the exception its own call would have raised, after one
        round trip and one commit for all. Raises (for all) only when the batch as a whole failed:
        no connection, timeout, cancelled; then nothing of it was committed, unless the statement
        had left (LedgerUnavailable.may_have_committed). A message that lost
        the race to a concurrent duplicate is called again alone, after the commit, and gets the
        stored response, as _call does. `time_left_ms`: each message's budget (what is left before
        its request's deadline); a message still waiting or running past it is rolled back alone
        (authorize_batch.sql); a lock is awaited no longer than HOT_PATH_LOCK_TIMEOUT_MS either."""
        budgets = list(time_left_ms or [int(self._statement_timeout_s * 1000)] * len(calls))
        asked = time.monotonic()

        def spend_connection_wait() -> None:
            # The budgets count from now: time spent waiting for a pooled connection is gone
            # (the list is the statement's argument, encoded when the statement is sent).
            waited_ms = int((time.monotonic() - asked) * 1000)
            budgets[:] = [budget - waited_ms for budget in budgets]

        for call in calls:
            call.progress.left = True
        try:
            rows = await self._round_trip(_GROUP, *_group_columns(calls), budgets,
                                          HOT_PATH_LOCK_TIMEOUT_MS,
                                          on_connected=spend_connection_wait)
        except asyncpg.PostgresError as exc:
            raise _ledger_error(exc) from exc
        results: list[bytes | Exception] = []
        for call, (response, sqlstate, constraint, message) in zip(calls, rows, strict=True):
            if response is not None:
                results.append(response.encode())
            elif sqlstate == asyncpg.UniqueViolationError.sqlstate \
                    and constraint == IDEMPOTENCY_CONSTRAINT:
                try:
                    results.append(await self.single(call))
                except (LedgerUnavailable, LedgerFailure) as exc:
                    results.append(exc)
            else:
                # Named as the one-call path names it (asyncpg's class for the SQLSTATE).
                name = asyncpg.PostgresError.get_message_class_for_sqlstate(sqlstate).__name__
                if sqlstate[:2] in TRANSIENT_SQLSTATE_CLASSES or sqlstate in TRANSIENT_SQLSTATES:
                    # Rolled back in its own subtransaction, the batch answered: nothing of it.
                    results.append(LedgerUnavailable(name, may_have_committed=False))
                else:
                    results.append(LedgerFailure(f"{name}: {message}"))
        return results

    async def _round_trip(self, sql: str, *args, progress: CallProgress | None = None,
                          on_connected: Callable[[], None] | None = None) -> list:
        """One statement's rows on a pooled connection; driver and connection errors become
        LedgerUnavailable / LedgerFailure, PostgreSQL's errors are the caller's. `progress` is
        told once the connection is had, and `on_connected` is called then, before the
        statement's arguments are sent."""
        self.waiting_for_connection += 1
        try:
            connection = await self._pool.acquire(timeout=self._acquire_timeout_s)
        except asyncpg.PostgresError as exc:        # refused while connecting: nothing was sent
            raise _ledger_error(exc, sent=False) from exc
        except (asyncpg.InterfaceError, TimeoutError, OSError, asyncpg.InternalClientError) as exc:
            raise LedgerUnavailable(type(exc).__name__, may_have_committed=False) from exc
        finally:
            self.waiting_for_connection -= 1
        if progress is not None:
            progress.left = True
        if on_connected is not None:
            on_connected()
        try:
            try:
                started = time.perf_counter()
                rows = await connection.fetch(sql, *args, timeout=self._statement_timeout_s)
                self._observe_round_trip_s(time.perf_counter() - started)
            finally:
                await self._pool.release(connection)
            return rows
        except asyncpg.InterfaceError as exc:
            if isinstance(exc, ValueError):     # an argument the driver cannot encode
                raise LedgerFailure(f"{type(exc).__name__}: {exc}") from exc
            raise LedgerUnavailable(type(exc).__name__) from exc
        except (TimeoutError, OSError, asyncpg.InternalClientError) as exc:
            # Connection lost, cancelled, or left in a state the driver cannot continue from
            # (InternalClientError derives from Exception only): retry later (91).
            raise LedgerUnavailable(type(exc).__name__) from exc

    async def _call(self, sql: str, *args, progress: CallProgress | None = None) -> bytes:
        """One message's own function: its stored response. A concurrent duplicate that committed
        first (unique_violation on the idempotency key) is called again and gets its bytes."""
        for _ in range(IDEMPOTENCY_ATTEMPTS):
            try:
                rows = await self._round_trip(sql, *args, progress=progress)
                return rows[0][0].encode()
            except asyncpg.UniqueViolationError as exc:
                if exc.constraint_name != IDEMPOTENCY_CONSTRAINT:
                    raise LedgerFailure(f"UniqueViolationError: {exc}") from exc
                continue
            except asyncpg.PostgresError as exc:
                raise _ledger_error(exc) from exc
        raise LedgerFailure("idempotency key still contended after retries")

    async def server_void(self, terminal_id: str, request_id: str, fingerprint: bytes,
                          may_have_committed: bool) -> str:
        """The server's own void of a purchase it answered 91 or 96 (server_void_purchase.sql):
        what it did. Any number of calls act once."""
        try:
            rows = await self._round_trip(_SERVER_VOID, terminal_id, request_id, fingerprint,
                                          may_have_committed)
        except asyncpg.UniqueViolationError as exc:     # raced a copy of itself: call again
            raise LedgerUnavailable(type(exc).__name__, may_have_committed=False) from exc
        except asyncpg.PostgresError as exc:
            raise _ledger_error(exc) from exc
        return rows[0][0]


def _ledger_error(exc: asyncpg.PostgresError, *, sent: bool = True) -> Exception:
    """91 for what goes away by itself, 96 for the rest."""
    if is_transient(exc):
        return LedgerUnavailable(type(exc).__name__,
                                 may_have_committed=sent and outcome_unknown(exc))
    return LedgerFailure(f"{type(exc).__name__}: {exc}")
