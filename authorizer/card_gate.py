"""At most MAX_IN_FLIGHT_PER_CARD purchases of one card in the server at once; beyond, 91 at once.

A card is tapped at one till at a time, so more in flight means a wallet row held (the 1 May
expiry, a long operator transaction) or a replaying attacker: each such request would hold a
pool connection until lock_timeout, and enough of them would starve every other card of the
pool. Counted per process, by card UID, in memory; nothing of the UID is logged.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from typing import Iterator

MAX_IN_FLIGHT_PER_CARD = 4


class CardGate:
    def __init__(self, limit: int = MAX_IN_FLIGHT_PER_CARD) -> None:
        self._limit = limit
        self._in_flight: Counter[str] = Counter()

    @contextlib.contextmanager
    def enter(self, card_uid: str) -> Iterator[bool]:
        """True: go ahead (counted until the block exits); False: too many already."""
        if self._in_flight[card_uid] >= self._limit:
            yield False
            return
        self._in_flight[card_uid] += 1
        try:
            yield True
        finally:
            self._in_flight[card_uid] -= 1
            if not self._in_flight[card_uid]:
                del self._in_flight[card_uid]
