"""Key check values: identify a key in logs and ceremonies without revealing it."""

from __future__ import annotations

import hashlib
import hmac

from cryptography.hazmat.primitives import cmac
from cryptography.hazmat.primitives.ciphers import algorithms

KCV_BYTES = 3                        # ANSI X9.24 / TR-31 practice for AES: 3 bytes, 6 hex digits
KCV_INPUT = bytes(16)                # AES-CMAC of one all-zero block


def kcv(key: bytes) -> str:
    """First 3 bytes of AES-CMAC(key, 16 zero bytes), as 6 upper-case hex digits."""
    mac = cmac.CMAC(algorithms.AES(key))
    mac.update(KCV_INPUT)
    return kcv_from_cmac(mac.finalize())


def kcv_from_cmac(tag: bytes) -> str:
    """The KCV from a CMAC of KCV_INPUT computed elsewhere (inside a PKCS#11 token)."""
    return tag[:KCV_BYTES].hex().upper()


def hmac_kcv(key: bytes) -> str:
    """An HMAC key's check value: first 3 bytes of HMAC-SHA-256(key, 16 zero bytes)."""
    return kcv_from_cmac(hmac.new(key, KCV_INPUT, hashlib.sha256).digest())
