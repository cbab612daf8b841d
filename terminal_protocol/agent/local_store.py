"""The agent's durable local store: one SQLite file holding the sales journal and the outbox of
reversals and refunds still owed to the server.

Why SQLite: the shop PC has no server to run, and SQLite with `synchronous=FULL` makes a committed
row survive kill -9 and power loss. One process owns the file at a time (an exclusive lock on a
sibling file), so two agents started by mistake cannot both send the same queue.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
from pathlib import Path

SCHEMA_VERSION = 3
BUSY_TIMEOUT_MS = 5000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    id            INTEGER PRIMARY KEY,
    opened_at     TEXT NOT NULL,
    closed_at     TEXT,
    close_rc      TEXT,
    server_batch_number INTEGER,
    close_answer  TEXT
);
-- Every message the agent sent, with the exact bytes (a retry resends them) and its outcome.
-- state: sending (no answer yet), answered, unanswered (a reversal is queued), reversed,
-- not_sent (a batch close whose connection was refused: it never left).
CREATE TABLE IF NOT EXISTS messages (
    request_id          TEXT PRIMARY KEY,
    kind                TEXT NOT NULL CHECK (kind IN ('purchase', 'reversal', 'refund', 'batch_close')),
    batch_id            INTEGER NOT NULL REFERENCES batches,
    body                BLOB NOT NULL,
    card                TEXT,
    amount_cents        INTEGER,
    original_request_id TEXT,
    original_rrn        TEXT,
    till_reference      TEXT,           -- the till's own id of a sale: a retried sale is replayed
    state               TEXT NOT NULL,
    rc                  TEXT,
    approved_cents      INTEGER NOT NULL DEFAULT 0,
    balance_cents       INTEGER,
    rrn                 TEXT,
    created_at          TEXT NOT NULL,
    answered_at         TEXT,
    answer              TEXT,           -- the server's answer (JSON): receipts and screens read it
    receipt             TEXT            -- the customer's ticket, as printed (receipts.py)
);
CREATE INDEX IF NOT EXISTS messages_by_batch ON messages (batch_id, kind);
-- Reversals and refunds owed to the server, retried with the same bytes until answered.
CREATE TABLE IF NOT EXISTS outbox (
    request_id       TEXT PRIMARY KEY REFERENCES messages,
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  REAL NOT NULL,
    last_error       TEXT,
    state            TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'done'))
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (state, next_attempt_at);
-- Wrong supervisor PINs since the last right one (Unix times): a restart does not reset them.
CREATE TABLE IF NOT EXISTS supervisor_pin_failures (at REAL NOT NULL);
"""


class StoreLocked(RuntimeError):
    """Another agent already uses this store."""


class LocalStore:
    """The open store. Holds the lock until close()."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.path.with_name(self.path.name + ".lock"), "a")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise StoreLocked(f"{self.path} is in use by another terminal agent") from None
        self.db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        os.chmod(self.path, 0o600)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("PRAGMA foreign_keys=ON")
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise RuntimeError(f"{self.path} was written by a newer agent (schema {version})")
        self.db.executescript(_SCHEMA)
        columns = {row[1] for row in self.db.execute("PRAGMA table_info(messages)")}
        if "till_reference" not in columns:          # a store written by schema 1
            self.db.execute("ALTER TABLE messages ADD COLUMN till_reference TEXT")
        for column in ("answer", "receipt"):         # a store written by schema 1 or 2
            if column not in columns:
                self.db.execute(f"ALTER TABLE messages ADD COLUMN {column} TEXT")
        self.db.execute("CREATE UNIQUE INDEX IF NOT EXISTS messages_by_till_reference"
                        " ON messages (till_reference) WHERE till_reference IS NOT NULL")
        self.db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        with self.transaction():
            if self.db.execute("SELECT count(*) FROM batches WHERE closed_at IS NULL").fetchone()[0] == 0:
                self.db.execute("INSERT INTO batches (opened_at) VALUES (datetime('now'))")

    @contextlib.contextmanager
    def transaction(self):
        """BEGIN IMMEDIATE … COMMIT, or ROLLBACK on error: all or nothing on disk."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def close(self) -> None:
        self.db.close()
        self._lock.close()
