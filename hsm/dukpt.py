"""AES-DUKPT key derivation (ANSI X9.24-3-2017), AES-128 keys only.

Each terminal holds an initial key derived from the host's base derivation key (BDK) and its
8-byte initial key ID; every transaction advances a 32-bit counter and uses keys derived from
the initial key along the counter's set bits, so a key stolen from a terminal reveals neither
past transaction keys nor the BDK. No Python package implements AES-DUKPT, hence this module;
every derivation is one AES-ECB block encryption (the standard's own construction).

The host-side `DukptHostCache` keeps the derivation ladder of each terminal's last counter, so
that the next counter derives only the steps that changed (one or two AES blocks, typically).
"""

from __future__ import annotations

import collections
import enum
import struct
import threading
from dataclasses import dataclass
from typing import Callable, Generic, TypeVar

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from hsm.interface import AES_KEY_BYTES, INITIAL_KEY_ID_BYTES, KSN_BYTES

COUNTER_BYTES = 4
SEED_BYTES = 8                   # the last 8 bytes of the derivation data
MAX_COUNTER = 0xFFFF_FFFF
MAX_COUNTER_BITS_SET = 16        # X9.24-3: a valid transaction counter has at most 16 one bits
DEFAULT_CACHE_TERMINALS = 4096   # LRU bound of DukptHostCache (about 1 KiB of keys per terminal)

_DERIVATION_DATA_VERSION = 0x01
_KEY_BLOCK_COUNTER = 0x01        # one AES-128 block of output is enough for an AES-128 key
_ALGORITHM_AES_128 = 0x0002
_KEY_LENGTH_BITS = 128


class KeyUsage(enum.IntEnum):
    """Key usage indicators of the derivation data (X9.24-3-2017 table 2)."""

    KEY_ENCRYPTION_KEY = 0x0002
    PIN_ENCRYPTION = 0x1000
    MAC_GENERATION = 0x2000
    MAC_VERIFICATION = 0x2001
    MAC_BOTH_WAYS = 0x2002
    DATA_ENCRYPT = 0x3000
    DATA_DECRYPT = 0x3001
    DATA_BOTH_WAYS = 0x3002
    KEY_DERIVATION = 0x8000
    INITIAL_KEY = 0x8001


class InvalidKsn(ValueError):
    """A KSN of the wrong size, or whose counter is zero or has more than 16 bits set."""


class CounterExhausted(InvalidKsn):
    """No valid counter is left: the terminal needs a new initial key."""


def derivation_data(usage: KeyUsage, seed: bytes) -> bytes:
    """The 16-byte block that AES-ECB encrypts under the parent key to make a child key."""
    if len(seed) != SEED_BYTES:
        raise ValueError(f"a derivation seed has {SEED_BYTES} bytes")
    return struct.pack(">BBHHH", _DERIVATION_DATA_VERSION, _KEY_BLOCK_COUNTER, usage,
                       _ALGORITHM_AES_128, _KEY_LENGTH_BITS) + seed


def derive(key: bytes, usage: KeyUsage, seed: bytes) -> bytes:
    """One derivation step: AES-ECB(key, derivation data)."""
    encryptor = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    return encryptor.update(derivation_data(usage, seed)) + encryptor.finalize()


def counter_seed(initial_key_id: bytes, counter: int) -> bytes:
    """Right half of the initial key ID followed by the big-endian counter."""
    return initial_key_id[INITIAL_KEY_ID_BYTES - 4:] + counter.to_bytes(COUNTER_BYTES, "big")


def is_valid_counter(counter: int) -> bool:
    return 0 < counter <= MAX_COUNTER and counter.bit_count() <= MAX_COUNTER_BITS_SET


def next_valid_counter(counter: int) -> int:
    """The smallest valid counter above `counter`: what a terminal uses for its next transaction.
    Adding the lowest set bit skips, in one step, every value that keeps too many bits set."""
    candidate = counter + 1
    while candidate.bit_count() > MAX_COUNTER_BITS_SET:
        candidate += candidate & -candidate
    if candidate > MAX_COUNTER:
        raise CounterExhausted("the DUKPT transaction counter is exhausted")
    return candidate


def build_ksn(initial_key_id: bytes, counter: int) -> bytes:
    if len(initial_key_id) != INITIAL_KEY_ID_BYTES:
        raise InvalidKsn(f"an initial key ID has {INITIAL_KEY_ID_BYTES} bytes")
    if not is_valid_counter(counter):
        raise InvalidKsn(f"invalid DUKPT counter {counter}")
    return initial_key_id + counter.to_bytes(COUNTER_BYTES, "big")


def split_ksn(ksn: bytes) -> tuple[bytes, int]:
    """(initial key ID, counter) of a valid KSN; InvalidKsn otherwise."""
    if not isinstance(ksn, bytes) or len(ksn) != KSN_BYTES:
        raise InvalidKsn(f"a KSN has {KSN_BYTES} bytes")
    counter = int.from_bytes(ksn[INITIAL_KEY_ID_BYTES:], "big")
    if not is_valid_counter(counter):
        raise InvalidKsn(f"invalid DUKPT counter {counter}")
    return ksn[:INITIAL_KEY_ID_BYTES], counter


def ladder(counter: int) -> list[int]:
    """The working counters of the derivation steps: the counter's set bits, highest first,
    accumulated (0b1011 -> [0b1000, 0b1010, 0b1011])."""
    steps, working = [], 0
    for bit in reversed(range(COUNTER_BYTES * 8)):
        if counter >> bit & 1:
            working |= 1 << bit
            steps.append(working)
    return steps


def derive_initial_key(bdk: bytes, initial_key_id: bytes) -> bytes:
    if len(bdk) != AES_KEY_BYTES or len(initial_key_id) != INITIAL_KEY_ID_BYTES:
        raise ValueError("AES-128 BDK and 8-byte initial key ID expected")
    return derive(bdk, KeyUsage.INITIAL_KEY, initial_key_id)


def derivation_key(initial_key: bytes, ksn: bytes) -> bytes:
    """The intermediate derivation key of the KSN's counter (the end of its ladder)."""
    initial_key_id, counter = split_ksn(ksn)
    key = initial_key
    for working in ladder(counter):
        key = derive(key, KeyUsage.KEY_DERIVATION, counter_seed(initial_key_id, working))
    return key


def derive_working_key(initial_key: bytes, ksn: bytes, usage: KeyUsage) -> bytes:
    """The key of one usage for one transaction; the terminal side starts from its initial key,
    the host side from derive_initial_key(BDK, ...)."""
    initial_key_id, counter = split_ksn(ksn)
    return derive(derivation_key(initial_key, ksn), usage, counter_seed(initial_key_id, counter))


K = TypeVar("K")


@dataclass(frozen=True)
class _Ladder(Generic[K]):
    initial_key: K
    steps: tuple[tuple[int, K], ...]   # (working counter, derivation key), highest bit first

    def keys(self) -> list[K]:
        return [self.initial_key] + [key for _, key in self.steps]


class DukptHostCache(Generic[K]):
    """Per initial key ID, the initial key and the ladder of the last counter seen, in an LRU
    bounded by `max_entries`, in memory only. Keys are opaque: bytes for the software HSM,
    token session objects for PKCS#11 (`discard` destroys the ones the cache lets go of; such
    keys must be used under the caller's own lock, as the next call may discard them)."""

    def __init__(self, initial_key: Callable[[bytes], K],
                 derive_step: Callable[[K, KeyUsage, bytes], K],
                 discard: Callable[[K], None] = lambda key: None,
                 max_entries: int = DEFAULT_CACHE_TERMINALS) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be positive")
        self._initial_key = initial_key
        self._derive = derive_step
        self._discard = discard
        self._max_entries = max_entries
        self._entries: collections.OrderedDict[bytes, _Ladder[K]] = collections.OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def derivation_key(self, ksn: bytes) -> K:
        initial_key_id, counter = split_ksn(ksn)
        with self._lock:
            previous = self._entries.pop(initial_key_id, None)
            if previous is None:
                previous = _Ladder(self._initial_key(initial_key_id), ())
            wanted = ladder(counter)
            kept = 0
            while (kept < len(previous.steps) and kept < len(wanted)
                   and previous.steps[kept][0] == wanted[kept]):
                kept += 1
            steps = list(previous.steps[:kept])
            try:
                for working in wanted[kept:]:
                    parent = steps[-1][1] if steps else previous.initial_key
                    steps.append((working, self._derive(parent, KeyUsage.KEY_DERIVATION,
                                                        counter_seed(initial_key_id, working))))
            except BaseException:
                self._release([key for _, key in steps[kept:]] + previous.keys())
                raise
            self._release([key for _, key in previous.steps[kept:]])
            self._entries[initial_key_id] = _Ladder(previous.initial_key, tuple(steps))
            while len(self._entries) > self._max_entries:
                _, evicted = self._entries.popitem(last=False)
                self._release(evicted.keys())
            return steps[-1][1]

    def clear(self) -> None:
        with self._lock:
            while self._entries:
                self._release(self._entries.popitem()[1].keys())

    def _release(self, keys: list[K]) -> None:
        for key in keys:
            self._discard(key)
