"""Key custody as a payment HSM offers it (payShield, AWS Payment Cryptography).

Keys are aliases bound to a usage; callers never see key material (the one exception is a
terminal's one-time transport key, made to be shown once to the installer). A key used outside
its usage is refused; a failed verification raises. Key check values identify keys in logs.
"""

from __future__ import annotations

import abc
import datetime as dt
import enum
import hmac
import re
from dataclasses import dataclass

ALIAS_PATTERN = re.compile(r"^[a-z0-9][a-z0-9/_.-]{0,63}$")
DUKPT_MAC_BYTES = 8          # truncated AES-CMAC carried by the protocol (full tag is 16)
KSN_BYTES = 12               # AES-DUKPT: 8-byte initial key id || 4-byte counter
INITIAL_KEY_ID_BYTES = 8
AES_KEY_BYTES = 16
HMAC_KEY_BYTES = 32          # HMAC-SHA-256 keys: as long as the hash
HMAC_SHA256_BYTES = 32


class KeyUsage(str, enum.Enum):
    """TR-31 key usage codes."""

    BDK = "B0"                    # DUKPT base derivation key: derives terminals' keys
    DUKPT_INITIAL_KEY = "B1"      # one terminal's initial key
    KEY_BLOCK_PROTECTION = "K1"   # KBPK: wraps keys sent to a terminal (TR-31)
    MAC = "M6"                    # AES-CMAC key
    HMAC = "M7"                   # HMAC-SHA-256 key (seals of the journal): generated, never travels


class HsmError(Exception):
    """Base of everything the HSM refuses; messages never contain key material."""


class UnknownKey(HsmError):
    pass


class KeyExists(HsmError):
    pass


class KeyUsageError(HsmError):
    """The key exists but its usage does not allow this operation."""


class VerificationFailed(HsmError):
    """A MAC did not verify. Raised, never returned as a boolean to be forgotten."""


class KeyBlockError(HsmError):
    """A TR-31 key block is malformed, tampered with, or wrapped under another key."""


@dataclass(frozen=True)
class KeyInfo:
    alias: str
    usage: KeyUsage
    kcv: str                  # 6 hex digits: first 3 bytes of AES-CMAC(K, 0^128)
    created_at: dt.datetime

    def __str__(self) -> str:
        return f"{self.alias} ({self.usage.value}, KCV {self.kcv})"


def check_alias(alias: str) -> str:
    if not ALIAS_PATTERN.match(alias):
        raise HsmError(f"invalid key alias {alias!r} (lower-case letters, digits, / _ . -)")
    return alias


class Hsm(abc.ABC):
    """One interface, two backends: software (cryptography, encrypted keystore) and PKCS#11."""

    @abc.abstractmethod
    def generate_key(self, alias: str, usage: KeyUsage) -> KeyInfo:
        """A new random key of that usage (AES-128; HMAC_KEY_BYTES for HMAC); KeyExists if the
        alias is taken. Only BDKs, MAC and HMAC keys are made at random: a KBPK must be known at
        the other end (create_transport_key) and an initial key comes from a BDK, so
        KeyUsageError for those."""

    @abc.abstractmethod
    def create_transport_key(self, alias: str) -> tuple[KeyInfo, bytes]:
        """A new KBPK whose value is returned once, to be shown to the installer of a terminal
        (the only call that ever returns key material)."""

    @abc.abstractmethod
    def import_key_block(self, alias: str, key_block: str, kbpk_alias: str) -> KeyInfo:
        """Store the key of a TR-31 version D block wrapped under kbpk_alias. Checks that the
        block's usage and mode of use fit together (psec does not)."""

    @abc.abstractmethod
    def export_dukpt_initial_key(self, bdk_alias: str, initial_key_id: bytes,
                                 kbpk_alias: str) -> str:
        """The terminal's initial key derived from the BDK, as a TR-31 version D key block
        (usage B1) wrapped under kbpk_alias. Never in clear."""

    @abc.abstractmethod
    def verify_dukpt_request_mac(self, bdk_alias: str, ksn: bytes, data: bytes,
                                 mac: bytes) -> None:
        """Check a request's truncated AES-CMAC under the DUKPT *MAC generation* key of the KSN;
        raise VerificationFailed (also for a malformed KSN, a counter with more than 16 bits set,
        or a MAC that is not DUKPT_MAC_BYTES long)."""

    @abc.abstractmethod
    def generate_dukpt_response_mac(self, bdk_alias: str, ksn: bytes, data: bytes) -> bytes:
        """A response's AES-CMAC (DUKPT_MAC_BYTES) under the *MAC verification* key of the KSN."""

    @abc.abstractmethod
    def hmac_sha256(self, alias: str, data: bytes) -> bytes:
        """HMAC-SHA-256 of `data` under an HMAC key (KeyUsage.HMAC), computed where the key
        lives: whoever cannot call this cannot forge what it MACs (the journal's seals)."""

    def verify_hmac_sha256(self, alias: str, data: bytes, mac: bytes) -> None:
        """Raise VerificationFailed unless `mac` is the HMAC-SHA-256 of `data` (constant time)."""
        if not isinstance(mac, bytes) or len(mac) != HMAC_SHA256_BYTES:
            raise VerificationFailed(f"an HMAC-SHA-256 has {HMAC_SHA256_BYTES} bytes")
        if not hmac.compare_digest(self.hmac_sha256(alias, data), mac):
            raise VerificationFailed("HMAC does not verify")

    @abc.abstractmethod
    def key_info(self, alias: str) -> KeyInfo:
        """UnknownKey if absent."""

    @abc.abstractmethod
    def list_keys(self) -> list[KeyInfo]:
        ...

    @abc.abstractmethod
    def destroy_key(self, alias: str) -> None:
        ...

    def close(self) -> None:
        """Release sessions and files; the default has nothing to release."""
