"""The supervisor's PIN, asked before a refund, a void beyond the sale's first minute, and the
batch close: one keypress must not give a student's money away nor end the day.

Set at `hdfpay terminal init` (or `hdfpay terminal set-pin`) and kept as a scrypt hash in its own
sealed file beside the keys, sealed under the same local key: a copy of the shop PC's disk shows
neither the PIN nor a hash to try the 10^4 PINs against. Wrong PINs are counted in the agent's
journal, so a restart does not reset them: after SUPERVISOR_PIN_ATTEMPTS_MAX in a row the PIN is
refused for SUPERVISOR_PIN_LOCKOUT_S.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import struct
import time
from dataclasses import dataclass
from typing import Callable

from terminal_protocol.agent.local_store import LocalStore
from terminal_protocol.agent.sealed_state import SealedStateError, SealedStateFile

SUPERVISOR_PIN_MIN_DIGITS = 4
SUPERVISOR_PIN_MAX_DIGITS = 8
SUPERVISOR_PIN_ATTEMPTS_MAX = 3
SUPERVISOR_PIN_LOCKOUT_S = 5 * 60
PIN_FILE_NAME = "supervisor-pin.sealed"
_PIN = re.compile(rf"[0-9]{{{SUPERVISOR_PIN_MIN_DIGITS},{SUPERVISOR_PIN_MAX_DIGITS}}}")
_MAGIC = b"HDFPIN1"
_SALT_BYTES = 16
_HASH_BYTES = 32
_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2 ** 14, 8, 1      # ~50 ms per check, 16 MiB
_RECORD = struct.Struct(f">7s{_SALT_BYTES}s{_HASH_BYTES}s")


class PinFormatError(ValueError):
    """Not 4 to 8 digits; the message is the cashier's text."""


def check_pin_format(pin: str) -> str:
    if not _PIN.fullmatch(pin):
        raise PinFormatError(f"Le code superviseur a {SUPERVISOR_PIN_MIN_DIGITS} à "
                             f"{SUPERVISOR_PIN_MAX_DIGITS} chiffres")
    return pin


def _hash(pin: str, salt: bytes) -> bytes:
    return hashlib.scrypt(pin.encode(), salt=salt, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P,
                          dklen=_HASH_BYTES)


def write_pin(sealed: SealedStateFile, pin: str) -> None:
    """Seal the hash of a new PIN (replacing the old one)."""
    salt = secrets.token_bytes(_SALT_BYTES)
    sealed.write(_RECORD.pack(_MAGIC, salt, _hash(check_pin_format(pin), salt)))


@dataclass(frozen=True)
class PinCheck:
    """ok, or why not: 'wrong' (with attempts_left) or 'locked' (for locked_s more seconds)."""

    ok: bool
    reason: str = ""
    attempts_left: int = 0
    locked_s: int = 0


class SupervisorPin:
    def __init__(self, salt: bytes, pin_hash: bytes, store: LocalStore, *,
                 clock: Callable[[], float] = time.time) -> None:
        self._salt, self._hash = salt, pin_hash
        self._db = store.db
        self._clock = clock

    @classmethod
    def load(cls, sealed: SealedStateFile, store: LocalStore, **options) -> "SupervisorPin":
        if not sealed.exists():
            raise SealedStateError(f"no supervisor PIN in {sealed.path}: run"
                                   " 'hdfpay terminal set-pin'")
        data = sealed.read()
        if len(data) != _RECORD.size or not data.startswith(_MAGIC):
            raise SealedStateError(f"{sealed.path} does not hold a supervisor PIN")
        _, salt, pin_hash = _RECORD.unpack(data)
        return cls(salt, pin_hash, store, **options)

    def check(self, pin: str) -> PinCheck:
        """Whether `pin` is the supervisor's; every wrong one is counted, on disk."""
        failures, last = self._db.execute(
            "SELECT count(*), max(at) FROM supervisor_pin_failures").fetchone()
        if failures >= SUPERVISOR_PIN_ATTEMPTS_MAX:
            left_s = int(last + SUPERVISOR_PIN_LOCKOUT_S - self._clock()) + 1
            if left_s > 0:
                return PinCheck(False, "locked", locked_s=left_s)
            self._db.execute("DELETE FROM supervisor_pin_failures")     # the lockout is over
            failures = 0
        if _PIN.fullmatch(pin) and hmac.compare_digest(_hash(pin, self._salt), self._hash):
            self._db.execute("DELETE FROM supervisor_pin_failures")
            return PinCheck(True)
        self._db.execute("INSERT INTO supervisor_pin_failures (at) VALUES (?)", (self._clock(),))
        failures += 1
        if failures >= SUPERVISOR_PIN_ATTEMPTS_MAX:
            return PinCheck(False, "locked", locked_s=SUPERVISOR_PIN_LOCKOUT_S)
        return PinCheck(False, "wrong", attempts_left=SUPERVISOR_PIN_ATTEMPTS_MAX - failures)
