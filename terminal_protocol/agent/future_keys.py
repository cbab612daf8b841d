"""The terminal side of AES-DUKPT with future-key registers (ANSI X9.24-3-2017 terminal
algorithm, AES-128), so that a stolen shop PC cannot recompute the MACs of past transactions.

TerminalKeys keeps the initial key, from which every counter's key follows. Here the initial key
is dropped once the 32 registers are filled: register i holds the intermediate derivation key
of the next counter whose lowest set bit is i. Using counter c (lowest set bit p) takes
register p, derives from it the registers below p (counters c | 1 << i) and erases register p.
Why register p is right: c's parent c & (c - 1) is valid and smaller, so it was used, and it
then wrote c into register p (or the load did, when c is a power of two); every counter used
since lies between the parent and c, so has its lowest set bit below p and wrote only below p.
Every stored register therefore belongs to a counter above the last one used, and no key of an
earlier counter can be derived from them (AES is one-way in the key).

Each transaction's new state is sealed and fsynced before its KSN leaves, so kill -9 never makes
a counter used twice. Only the response-verification keys of the few requests awaiting their
answer stay in memory, and each is dropped once its answer is checked.
"""

from __future__ import annotations

import collections
import contextlib
import hmac
import struct
import threading

from cryptography.hazmat.primitives.ciphers.algorithms import AES
from cryptography.hazmat.primitives.cmac import CMAC

from hsm import dukpt
from hsm.dukpt import KeyUsage
from hsm.interface import AES_KEY_BYTES, INITIAL_KEY_ID_BYTES, KeyBlockError
from hsm.interface import KeyUsage as BlockUsage
from hsm.key_blocks import unwrap
from terminal_protocol.agent.sealed_state import SealedStateError, SealedStateFile
from terminal_protocol.terminal_keys import ForgedResponse
from terminal_protocol.transport import MAC_BYTES, request_mac_input, response_mac_input

REGISTER_COUNT = 32                    # one per bit of the transaction counter
OUTSTANDING_RESPONSE_KEYS = 16         # requests awaiting their answer, oldest dropped first
STATE_MAGIC = b"HDFK"
STATE_VERSION = 1
# magic, version, initial key ID, last counter used (0: none), then per register i:
# counter (0: empty) and its intermediate derivation key (zeros when empty). 657 bytes.
_STATE_HEADER = struct.Struct(f">4sB{INITIAL_KEY_ID_BYTES}sI")
_REGISTER = struct.Struct(f">I{AES_KEY_BYTES}s")
STATE_BYTES = _STATE_HEADER.size + REGISTER_COUNT * _REGISTER.size

Register = tuple[int, bytes] | None    # (counter, intermediate derivation key)


class StateExists(SealedStateError):
    """install() would overwrite a terminal state: pass replace=True for a key rotation."""


class FutureKeyTerminal:
    """Drop-in for TerminalKeys in TerminalClient (sign_request, check_response,
    initial_key_id). Thread-safe. Holds the store's lock until close()."""

    def __init__(self, store: SealedStateFile, initial_key_id: bytes, last_counter: int,
                 registers: list[Register]) -> None:
        """Use install or open; the store must already be acquired by the caller."""
        self.initial_key_id = initial_key_id
        self._store = store
        self._last = last_counter
        self._registers = registers
        self._response_keys: collections.OrderedDict[bytes, bytes] = collections.OrderedDict()
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return (f"FutureKeyTerminal(initial_key_id={self.initial_key_id.hex().upper()}, "
                f"last_counter={self._last})")

    @classmethod
    def install(cls, store: SealedStateFile, initial_key_id: bytes, initial_key: bytes, *,
                replace: bool = False, last_counter: int = 0) -> "FutureKeyTerminal":
        """Fill the registers from the initial key, seal them, forget the initial key.
        `last_counter` > 0 resumes a key whose counters up to it were used elsewhere."""
        if len(initial_key_id) != INITIAL_KEY_ID_BYTES or len(initial_key) != AES_KEY_BYTES:
            raise ValueError("an AES-DUKPT initial key id is 8 bytes and an AES-128 key 16")
        if not 0 <= last_counter <= dukpt.MAX_COUNTER:
            raise ValueError("the last counter is a 32-bit unsigned integer")
        store.acquire()
        try:
            if store.exists() and not replace:
                raise StateExists(f"{store.path} already holds a terminal state")
            if store.exists():
                # The same key installed again (a repeated command, a restore) carries on from
                # its last counter: starting over would reuse counters the server refuses (63).
                # An old state that cannot be read is simply replaced.
                with contextlib.suppress(SealedStateError):
                    old_key_id, old_last, _ = _decode(store.read(), store)
                    if old_key_id == initial_key_id:
                        last_counter = max(last_counter, old_last)
            registers = registers_after(initial_key_id, initial_key, last_counter)
            store.write(_encode(initial_key_id, last_counter, registers))
        except BaseException:
            store.release()
            raise
        return cls(store, initial_key_id, last_counter, registers)

    @classmethod
    def install_from_key_block(cls, store: SealedStateFile, key_block: str, transport_key: bytes,
                               initial_key_id: bytes | None = None, *,
                               replace: bool = False) -> "FutureKeyTerminal":
        """Unwrap the TR-31 block of `hdfpay terminals add` (or `rotate`) and install it."""
        unwrapped = unwrap(transport_key, key_block)
        if unwrapped.usage is not BlockUsage.DUKPT_INITIAL_KEY:
            raise KeyBlockError(f"expected a DUKPT initial key (B1), got {unwrapped.usage.value}")
        key_id = initial_key_id or unwrapped.initial_key_id
        if key_id is None:
            raise ValueError("the key block carries no initial key id: give it explicitly")
        return cls.install(store, key_id, unwrapped.key, replace=replace)

    @classmethod
    def open(cls, store: SealedStateFile) -> "FutureKeyTerminal":
        store.acquire()
        try:
            return cls(store, *_decode(store.read(), store))
        except BaseException:
            store.release()
            raise

    def close(self) -> None:
        """Forget the in-memory keys and let another process open the state."""
        with self._lock:
            self._registers = [None] * REGISTER_COUNT
            self._response_keys.clear()
            self._store.release()

    def __enter__(self) -> "FutureKeyTerminal":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def last_counter(self) -> int:
        return self._last

    def sign_request(self, method: str, path: str, body: bytes) -> tuple[bytes, bytes]:
        """(KSN, MAC) for one request; every call consumes a new counter, durably.
        hsm.dukpt.CounterExhausted when none is left (the terminal needs a new key)."""
        with self._lock:
            counter = dukpt.next_valid_counter(self._last)
            position = (counter & -counter).bit_length() - 1
            register = self._registers[position]
            if register is None or register[0] != counter:
                raise SealedStateError(f"{self._store.path}: no future key for counter {counter}"
                                       " (terminal closed, or state inconsistent)")
            key = register[1]
            registers = list(self._registers)
            registers[position] = None
            if counter.bit_count() < dukpt.MAX_COUNTER_BITS_SET:   # else the children are invalid
                for bit in range(position):
                    child = counter | 1 << bit
                    registers[bit] = (child, self._derive(key, KeyUsage.KEY_DERIVATION, child))
            self._store.write(_encode(self.initial_key_id, counter, registers))
            self._last, self._registers = counter, registers
            ksn = dukpt.build_ksn(self.initial_key_id, counter)
            self._response_keys[ksn] = self._derive(key, KeyUsage.MAC_VERIFICATION, counter)
            while len(self._response_keys) > OUTSTANDING_RESPONSE_KEYS:
                self._response_keys.popitem(last=False)
            request_key = self._derive(key, KeyUsage.MAC_GENERATION, counter)
        return ksn, _cmac(request_key, request_mac_input(method, path, ksn, body))[:MAC_BYTES]

    def check_response(self, ksn: bytes, status: int, body: bytes, mac: bytes | None) -> None:
        """Raises ForgedResponse unless `mac` is the server's MAC of this answer; the key of
        this KSN is dropped either way (each transmission has its own KSN)."""
        with self._lock:
            key = self._response_keys.pop(ksn, None)
        if key is None:
            raise ForgedResponse("no request awaits an answer under this KSN")
        expected = _cmac(key, response_mac_input(ksn, status, body))[:MAC_BYTES]
        if mac is None or not hmac.compare_digest(expected, mac):
            raise ForgedResponse("the server's answer does not carry a valid MAC")

    def _derive(self, key: bytes, usage: KeyUsage, counter: int) -> bytes:
        return dukpt.derive(key, usage, dukpt.counter_seed(self.initial_key_id, counter))


def registers_after(initial_key_id: bytes, initial_key: bytes, last_counter: int) -> list[Register]:
    """The registers once every valid counter up to `last_counter` has been used: register i
    holds counter (last with bits 0..i cleared) | 1 << i when bit i of last is clear and that
    counter is valid; its parent, last with bits 0..i cleared, was then used and wrote it."""
    registers: list[Register] = []
    for bit in range(REGISTER_COUNT):
        counter = (last_counter >> (bit + 1) << (bit + 1)) | 1 << bit
        if last_counter >> bit & 1 or not dukpt.is_valid_counter(counter):
            registers.append(None)
            continue
        ksn = dukpt.build_ksn(initial_key_id, counter)
        registers.append((counter, dukpt.derivation_key(initial_key, ksn)))
    return registers


def _encode(initial_key_id: bytes, last_counter: int, registers: list[Register]) -> bytes:
    parts = [_STATE_HEADER.pack(STATE_MAGIC, STATE_VERSION, initial_key_id, last_counter)]
    parts += [_REGISTER.pack(*(register or (0, bytes(AES_KEY_BYTES)))) for register in registers]
    return b"".join(parts)


def _decode(data: bytes, store: SealedStateFile) -> tuple[bytes, int, list[Register]]:
    """Authenticated bytes still get checked: a register must belong to a later counter."""
    if len(data) != STATE_BYTES:
        raise SealedStateError(f"{store.path} does not hold a future-key terminal state")
    magic, version, initial_key_id, last_counter = _STATE_HEADER.unpack_from(data)
    if magic != STATE_MAGIC or version != STATE_VERSION:
        raise SealedStateError(f"{store.path}: unknown terminal state format")
    registers: list[Register] = []
    for bit in range(REGISTER_COUNT):
        counter, key = _REGISTER.unpack_from(data, _STATE_HEADER.size + bit * _REGISTER.size)
        if counter == 0:
            registers.append(None)
        elif (dukpt.is_valid_counter(counter) and counter > last_counter
              and (counter & -counter) == 1 << bit):
            registers.append((counter, key))
        else:
            raise SealedStateError(f"{store.path}: register {bit} is inconsistent")
    return initial_key_id, last_counter, registers


def _cmac(key: bytes, data: bytes) -> bytes:
    mac = CMAC(AES(key))
    mac.update(data)
    return mac.finalize()
