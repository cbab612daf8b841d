"""The answers this locust process's terminals received, one JSON line each, so that after the run
`hdfpay loadtest` can prove every approval a terminal saw is in the ledger (and nothing else
moved money).

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

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
