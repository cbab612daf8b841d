"""Parameters of encryption at rest, shared by the software keystore (the region's keys) and the
shop agent's sealed state: AES-256-GCM under a key from scrypt of a passphrase (or a raw key).

Pure constants and one derivation, no custody: the shop's PC imports this module, never a
keystore or a PKCS#11 backend.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

FILE_MODE = 0o600                 # sealed files: owner read/write only
MASTER_KEY_BYTES = 32             # AES-256-GCM
GCM_NONCE_BYTES = 12
SCRYPT_SALT_BYTES = 16
SCRYPT_N = 2 ** 15                # cost: 32 MiB of memory (128 * N * r bytes), ~0.1 s per open
SCRYPT_R = 8
SCRYPT_P = 1
MIN_PASSPHRASE_CHARS = 12         # enforced when a sealed store is created


def key_from_passphrase(passphrase: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    """The AES-256 key that a passphrase unlocks (scrypt; callers bound n, r and p first)."""
    return Scrypt(salt=salt, length=MASTER_KEY_BYTES, n=n, r=r, p=p).derive(passphrase.encode("utf-8"))
