"""The answers this locust process's terminals received, one JSON line each, so that after the run
`hdfpay loadtest` can prove every approval a terminal saw is in the ledger (and nothing else
moved money); and the voids and refunds owed until answered, so that one a stopped user left
unanswered is reported, not forgotten.

One file per process (`answers-<pid>.jsonl`): users of a process are greenlets that write whole
lines without yielding, so lines never interleave; line buffering puts each line in the file as
soon as it is written, so a killed process loses at most the answer being written. Only answers
that carried a valid MAC are recorded: anything else is no answer.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

JOURNAL_PATTERN = "answers-*.jsonl"


class AnswersJournal:
    def __init__(self, directory: Path | None) -> None:
        self._handle = None
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
            self._handle = open(directory / f"answers-{os.getpid()}.jsonl", "a", buffering=1,
                                encoding="utf-8")

    def record(self, terminal_id: str, request_id: str, message_type: str, rc: str,
               approved_cents: int) -> None:
        if self._handle is not None:
            self._handle.write(json.dumps({"terminal": terminal_id, "request_id": request_id,
                                           "type": message_type, "rc": rc,
                                           "approved_cents": approved_cents}) + "\n")

    def owe(self, terminal_id: str, request_id: str, message_type: str) -> None:
        """A void or refund that must be answered before the terminal may forget it."""
        if self._handle is not None:
            self._handle.write(json.dumps({"owed": request_id, "terminal": terminal_id,
                                           "type": message_type}) + "\n")

    def settled(self, terminal_id: str, request_id: str) -> None:
        if self._handle is not None:
            self._handle.write(json.dumps({"settled": request_id, "terminal": terminal_id}) + "\n")

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def read_owed(directory: Path) -> list[tuple[str, str, str]]:
    """(terminal, request id, type) of the voids and refunds journaled as owed and never
    answered: money the load test left with a shop (should be none)."""
    owed: dict[tuple[str, str], str] = {}
    for path in sorted(directory.glob(JOURNAL_PATTERN)):
        for line in path.read_text().splitlines():
            if not line.endswith("}"):
                continue
            entry = json.loads(line)
            if "owed" in entry:
                owed[(entry["terminal"], entry["owed"])] = entry["type"]
            elif "settled" in entry:
                owed.pop((entry["terminal"], entry["settled"]), None)
    return [(t, rid, kind) for (t, rid), kind in sorted(owed.items())]
