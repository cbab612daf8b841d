"""A DUKPT transaction counter in memory, for TerminalKeys in tests, the demo and load generators
that own a fresh key. It must never be used twice (the server refuses a counter that does not
increase: 63); the shop's agent keeps its counter durably with its future keys
(terminal_protocol/agent/future_keys.py). Exhaustion raises hsm.dukpt.CounterExhausted."""

from __future__ import annotations

import threading

from hsm.dukpt import next_valid_counter


class MemoryCounter:
    """For tests and load generators that own a fresh key: not durable."""

    def __init__(self, start: int = 0) -> None:
        self._last = start
        self._lock = threading.Lock()

    def next(self) -> int:
        with self._lock:
            self._last = next_valid_counter(self._last)
            return self._last
