"""A load driver's durable memory of what its terminals sent, saw and still owe.

The terminal's rule (PROTOCOL.md): a purchase without a trustworthy answer (none in time, no
valid MAC, 91, 96) is reversed, with the same reversal resent until it is answered, never given
up. A driver that forgets a reversal when it stops or crashes leaves a student's money with a
shop; so each terminal's duty is written down before it is acted on, one JSON line each:

    purchase  before the purchase leaves (a crash now means: reverse it on restart)
    answer    its trustworthy answer (code, approved cents)
    owe       no trustworthy answer: the reversal's exact bytes, resent until answered
    settled   the reversal's answer (00: restored, 25: the purchase never reached the ledger)

Lines are flushed as they are written (a killed driver loses nothing) and `owe` lines are also
fsync'd. `replay()` reads a journal back: the approvals the terminals saw (what the bank checker
holds the ledger to) and the reversals still owed (what a restarted driver sends first).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class SeenApproval:
    terminal: str
    request_id: str
    card: int                  # the demo beneficiary number whose card paid
    approved_cents: int


@dataclass
class JournalState:
    """What a journal says once replayed."""
    approvals: dict[tuple[str, str], SeenApproval] = field(default_factory=dict)
    # (terminal, purchase request id) -> the reversal's exact bytes, or None when the purchase
    # left without an answer and no reversal was written yet (the driver stopped in between).
    owed: dict[tuple[str, str], bytes | None] = field(default_factory=dict)
    settled: dict[tuple[str, str], str] = field(default_factory=dict)   # -> reversal's code
    purchases: int = 0

    def owed_by(self, terminal: str) -> dict[str, bytes | None]:
        return {rid: body for (t, rid), body in self.owed.items() if t == terminal}


class TillJournal:
    """Appends a driver's events to one file (one writer: the driver's event loop)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._handle = open(path, "a", buffering=1, encoding="utf-8")

    def purchase(self, terminal: str, request_id: str, card: int, cents: int) -> None:
        self._write({"e": "purchase", "t": terminal, "id": request_id, "card": card,
                     "cents": cents})

    def answer(self, terminal: str, request_id: str, rc: str, approved_cents: int) -> None:
        self._write({"e": "answer", "t": terminal, "id": request_id, "rc": rc,
                     "approved": approved_cents})

    def owe(self, terminal: str, request_id: str, reversal_body: bytes) -> None:
        self._write({"e": "owe", "t": terminal, "id": request_id,
                     "reversal": reversal_body.decode()}, sync=True)

    def settled(self, terminal: str, request_id: str, rc: str, restored_cents: int) -> None:
        self._write({"e": "settled", "t": terminal, "id": request_id, "rc": rc,
                     "restored": restored_cents})

    def close(self) -> None:
        self._handle.close()

    def _write(self, event: dict, sync: bool = False) -> None:
        self._handle.write(json.dumps(event, separators=(",", ":")) + "\n")
        if sync:
            os.fsync(self._handle.fileno())


def replay(path: Path) -> JournalState:
    """A journal read back; a last line cut by a crash is ignored (never acted upon)."""
    state = JournalState()
    cards: dict[tuple[str, str], int] = {}
    if not path.exists():
        return state
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.endswith("}"):
            continue
        event = json.loads(line)
        key = (event["t"], event["id"])
        if event["e"] == "purchase":
            state.purchases += 1
            cards[key] = event["card"]
            state.owed[key] = None          # until an answer says otherwise
        elif event["e"] == "answer":
            state.owed.pop(key, None)
            if event["approved"] > 0:
                state.approvals[key] = SeenApproval(key[0], key[1], cards[key], event["approved"])
        elif event["e"] == "owe":
            state.owed[key] = event["reversal"].encode()
        elif event["e"] == "settled":
            state.owed.pop(key, None)
            state.settled[key] = event["rc"]
    return state
