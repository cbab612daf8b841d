"""The agent's journal: every message sent, its exact bytes and its outcome, grouped in batches.

Written before a message leaves (so a crash mid-flight is found on restart and reversed) and
after its answer. The batch totals sent at close are computed here, counted the way the ledger
counts them (terminal_protocol/PROTOCOL.md, batch_close): approved amounts by message type.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from dataclasses import dataclass

import msgspec

from terminal_protocol.agent.local_store import LocalStore
from terminal_protocol.messages import BatchTotals, Response


@dataclass(frozen=True)
class SentMessage:
    request_id: str
    kind: str
    body: bytes
    amount_cents: int | None = None
    card: str | None = None                 # masked: the journal never holds a whole UID
    original_request_id: str | None = None
    original_rrn: str | None = None
    till_reference: str | None = None


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")


class Journal:
    def __init__(self, store: LocalStore) -> None:
        self._store = store
        self._db = store.db

    def open_batch_id(self) -> int:
        return self._db.execute("SELECT id FROM batches WHERE closed_at IS NULL").fetchone()[0]

    def insert(self, db: sqlite3.Connection, message: SentMessage, state: str) -> None:
        """Within the caller's transaction."""
        db.execute(
            "INSERT INTO messages (request_id, kind, batch_id, body, card, amount_cents,"
            " original_request_id, original_rrn, till_reference, state, created_at)"
            " VALUES (?, ?, (SELECT id FROM batches WHERE closed_at IS NULL), ?, ?, ?, ?, ?, ?, ?, ?)",
            (message.request_id, message.kind, message.body, message.card, message.amount_cents,
             message.original_request_id, message.original_rrn, message.till_reference, state,
             _now()))

    def record_sending(self, message: SentMessage) -> None:
        with self._store.transaction() as db:
            self.insert(db, message, "sending")

    def record_answer(self, request_id: str, response: Response,
                      db: sqlite3.Connection | None = None) -> None:
        """The answer to a message. A message answered after the batch it was written in has
        closed counts in the open batch, as it does in the ledger."""
        if db is None:
            with self._store.transaction() as db:
                return self.record_answer(request_id, response, db)
        db.execute(
            "UPDATE messages SET state = 'answered', rc = ?, approved_cents = ?, balance_cents = ?,"
            " rrn = ?, answered_at = ?, answer = ?,"
            " batch_id = (SELECT id FROM batches WHERE closed_at IS NULL) WHERE request_id = ?",
            (response.rc, response.approved_cents, response.balance_cents, response.rrn, _now(),
             msgspec.json.encode(response).decode(), request_id))
        row = db.execute("SELECT kind, original_request_id FROM messages WHERE request_id = ?",
                         (request_id,)).fetchone()
        if row["kind"] == "reversal" and response.rc in ("00", "25"):
            # For a purchase that never got its answer, the reversal tells what it had been:
            # requested_cents is the original's approved amount (0 when it never arrived: 25).
            db.execute(
                "UPDATE messages SET state = 'reversed', rc = coalesce(rc, ?),"
                " approved_cents = CASE WHEN state = 'unanswered' THEN ? ELSE approved_cents END"
                " WHERE request_id = ? AND kind = 'purchase'",
                (response.rc if response.rc == "25" else None,
                 response.requested_cents or 0 if response.rc == "00" else 0,
                 row["original_request_id"]))

    def record_not_sent(self, request_id: str) -> None:
        """The connection was refused: the message never left, so nothing waits for its answer."""
        with self._db:
            self._db.execute("UPDATE messages SET state = 'not_sent' WHERE request_id = ?",
                             (request_id,))

    def mark_unanswered(self, db: sqlite3.Connection, request_id: str) -> None:
        db.execute("UPDATE messages SET state = 'unanswered' WHERE request_id = ?", (request_id,))

    def purchases_in_flight(self) -> list[str]:
        """Purchases written but never answered: the agent died while they were on the wire."""
        return [row[0] for row in self._db.execute(
            "SELECT request_id FROM messages WHERE kind = 'purchase' AND state = 'sending'"
            " ORDER BY rowid")]

    def unanswered_close(self) -> sqlite3.Row | None:
        """A batch close sent without an answer: it must be resent, same bytes, before anything
        else happens in the batch (the server may have closed it)."""
        return self._db.execute(
            "SELECT * FROM messages WHERE kind = 'batch_close' AND state = 'sending'"
            " AND batch_id = ?", (self.open_batch_id(),)).fetchone()

    def last_sale(self) -> tuple[sqlite3.Row, bool] | None:
        """The open batch's last purchase, and whether a reversal of it is already queued or
        done: only the very last sale may be voided, never an earlier one."""
        row = self._db.execute(
            "SELECT * FROM messages WHERE kind = 'purchase' AND batch_id = ?"
            " ORDER BY rowid DESC LIMIT 1", (self.open_batch_id(),)).fetchone()
        if row is None:
            return None
        voided = self._db.execute(
            "SELECT 1 FROM messages WHERE kind = 'reversal' AND original_request_id = ?",
            (row["request_id"],)).fetchone() is not None
        return row, voided

    def sale_by_till_reference(self, till_reference: str) -> sqlite3.Row | None:
        return self._db.execute("SELECT * FROM messages WHERE till_reference = ?",
                                (till_reference,)).fetchone()

    def answer(self, request_id: str) -> Response | None:
        """The server's answer to a message, as it came (None before it did)."""
        row = self._db.execute("SELECT answer FROM messages WHERE request_id = ?",
                               (request_id,)).fetchone()
        return msgspec.json.decode(row[0], type=Response) if row and row[0] else None

    def record_receipt(self, request_id: str, text: str) -> None:
        with self._db:
            self._db.execute("UPDATE messages SET receipt = ? WHERE request_id = ?",
                             (text, request_id))

    def last_receipt(self) -> str | None:
        row = self._db.execute("SELECT receipt FROM messages WHERE receipt IS NOT NULL"
                               " ORDER BY rowid DESC LIMIT 1").fetchone()
        return row[0] if row else None

    def batch_operations(self, limit: int) -> list[sqlite3.Row]:
        """The open batch's sales, voids and refunds, newest first, each with the card and
        amount of the sale it concerns (a void carries neither itself)."""
        return self._db.execute(
            "SELECT m.*, coalesce(m.card, o.card) AS shown_card,"
            "       coalesce(m.amount_cents, o.approved_cents) AS shown_cents,"
            "       coalesce(m.original_rrn, o.rrn) AS sale_rrn"
            " FROM messages m LEFT JOIN messages o ON o.request_id = m.original_request_id"
            " WHERE m.batch_id = ? AND m.kind <> 'batch_close'"
            " ORDER BY m.rowid DESC LIMIT ?", (self.open_batch_id(), limit)).fetchall()

    def message(self, request_id: str) -> sqlite3.Row | None:
        return self._db.execute("SELECT * FROM messages WHERE request_id = ?",
                                (request_id,)).fetchone()

    def batch_totals(self, batch_id: int | None = None) -> BatchTotals:
        """Approved counts and amounts of a batch (the open one by default)."""
        rows = self._db.execute(
            "SELECT kind, count(*), coalesce(sum(approved_cents), 0) FROM messages"
            " WHERE batch_id = ? AND approved_cents > 0 AND kind <> 'batch_close'"
            "   AND (kind = 'purchase' OR state = 'answered')"
            " GROUP BY kind", (batch_id or self.open_batch_id(),)).fetchall()
        counted = {kind: (count, cents) for kind, count, cents in rows}
        fields = {}
        for kind in ("purchase", "reversal", "refund"):
            count, cents = counted.get(kind, (0, 0))
            fields[f"{kind}s_count"], fields[f"{kind}s_cents"] = count, cents
        return BatchTotals(**fields)

    def close_batch(self, request_id: str, response: Response, answer_body: bytes) -> None:
        """The server answered the batch close: record it and open the next batch."""
        with self._store.transaction() as db:
            self.record_answer(request_id, response, db)
            db.execute("UPDATE batches SET closed_at = ?, close_rc = ?, server_batch_number = ?,"
                       " close_answer = ? WHERE closed_at IS NULL",
                       (_now(), response.rc, response.batch_number, answer_body.decode()))
            db.execute("INSERT INTO batches (opened_at) VALUES (?)", (_now(),))
