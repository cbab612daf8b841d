"""The terminal's DUKPT transaction counter, which must never be used twice (the server refuses a
counter that does not increase: 63). Durable stores reserve counters ahead on disk, so a crash
skips at most a block of counters and never reuses one. Exhaustion raises
hsm.dukpt.CounterExhausted: the terminal then needs a new key (rotation)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from hsm.dukpt import MAX_COUNTER, next_valid_counter

# Counters written ahead to disk at a time: one fsync per block instead of per message.
COUNTER_RESERVATION_BLOCK = 64


class MemoryCounter:
    """For tests and load generators that own a fresh key: not durable."""

    def __init__(self, start: int = 0) -> None:
        self._last = start
        self._lock = threading.Lock()

    def next(self) -> int:
        with self._lock:
            self._last = next_valid_counter(self._last)
            return self._last


class FileCounter:
    """The reservation (the highest counter that may have been used) lives in a file, replaced
    atomically and fsynced before any counter of the block is handed out."""

    def __init__(self, path: Path, block: int = COUNTER_RESERVATION_BLOCK) -> None:
        self._path = Path(path)
        self._block = block
        self._lock = threading.Lock()
        self._last = int(self._path.read_text()) if self._path.exists() else 0
        self._reserved = self._last  # nothing of the stored reservation may be reused

    def next(self) -> int:
        with self._lock:
            candidate = next_valid_counter(self._last)
            if candidate > self._reserved:
                self._reserve(min(candidate + self._block, MAX_COUNTER))
            self._last = candidate
            return candidate

    def _reserve(self, upto: int) -> None:
        temporary = self._path.with_suffix(".tmp")
        with open(temporary, "w") as handle:
            handle.write(str(upto))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self._path)
        directory = os.open(self._path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        self._reserved = upto

