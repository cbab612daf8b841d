"""A small file whose whole content is sealed with AES-256-GCM under a local key, so that a copy of
the shop PC's disk (or a backup) shows no key of the terminal agent.

The local key is either 32 raw bytes (hex in the environment, for an unattended service) or
derived by scrypt from a passphrase typed at start (cost and salt in the file header, same costs
as the HSM keystore). The header is the GCM associated data: a file whose format or KDF
parameters were edited fails authentication like one whose ciphertext was. Every write is
atomic and durable (temporary file, fsync, rename, fsync of the directory) and uses a new nonce,
because the caller relies on a returned `write` surviving kill -9 and power loss. Reading the
key from the environment or a prompt is the agent's job (terminal_protocol.agent.runtime).
"""

from __future__ import annotations

import fcntl
import os
import secrets
import stat
import struct
from pathlib import Path
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from hsm.sealing import (
    FILE_MODE, GCM_NONCE_BYTES, MASTER_KEY_BYTES, MIN_PASSPHRASE_CHARS, SCRYPT_N, SCRYPT_P,
    SCRYPT_R, SCRYPT_SALT_BYTES, key_from_passphrase,
)
from hsm.private_file import replace_private_file

MAGIC = b"HDFSEAL1"                   # format and version of the envelope
MAX_SCRYPT_MEMORY_BYTES = 256 * 2**20     # a forged header must not make us allocate more
MAX_SCRYPT_P = 4
MAX_FILE_BYTES = 64 * 1024            # the agent's state is well under 1 KiB
_KDF_RAW = 0
_KDF_SCRYPT = 1
_HEADER = struct.Struct(f">8sBBBB{SCRYPT_SALT_BYTES}s")   # magic, kdf, log2(N), r, p, salt
_GCM_TAG_BYTES = 16
_MIN_FILE_BYTES = _HEADER.size + GCM_NONCE_BYTES + _GCM_TAG_BYTES


class SealedStateError(Exception):
    """Wrong key or passphrase, tampered or foreign file, unsafe permissions. Messages name the
    file only, never key material."""


class SealedStateFile:
    """Exactly one of `passphrase` and `key` unlocks the file."""

    def __init__(self, path: Path | str, *, passphrase: str | None = None,
                 key: bytes | None = None) -> None:
        if (passphrase is None) == (key is None):
            raise SealedStateError("a sealed state is unlocked by a passphrase or a key (one)")
        if key is not None and (not isinstance(key, bytes) or len(key) != MASTER_KEY_BYTES):
            raise SealedStateError(f"a sealed state key has {MASTER_KEY_BYTES} bytes")
        self.path = Path(path)
        self._passphrase = passphrase
        self._raw_key = key
        self._aead: tuple[bytes, AESGCM] | None = None   # (header, cipher) last used
        self._lock_file: BinaryIO | None = None    # closed (lock released) when collected too

    def __repr__(self) -> str:
        return f"SealedStateFile({str(self.path)!r})"

    def exists(self) -> bool:
        return self.path.exists()

    def read(self) -> bytes:
        try:
            with open(self.path, "rb") as file:
                mode = os.fstat(file.fileno()).st_mode
                data = file.read(MAX_FILE_BYTES + 1)
        except FileNotFoundError:
            raise SealedStateError(f"sealed state {self.path} does not exist") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise SealedStateError(f"{self.path} is accessible to others: chmod 600 it")
        if not _MIN_FILE_BYTES <= len(data) <= MAX_FILE_BYTES:
            raise SealedStateError(f"{self.path} is not a sealed state file")
        header = data[:_HEADER.size]
        nonce = data[_HEADER.size:_HEADER.size + GCM_NONCE_BYTES]
        try:
            return self._cipher(header).decrypt(nonce, data[_HEADER.size + GCM_NONCE_BYTES:],
                                                header)
        except InvalidTag:
            raise SealedStateError(
                f"sealed state {self.path}: wrong key or passphrase, or the file was altered"
            ) from None

    def write(self, plaintext: bytes) -> None:
        """Returns only once the new content is durable; a crash leaves the old or the new."""
        header = self._aead[0] if self._aead is not None else self._new_header()
        nonce = secrets.token_bytes(GCM_NONCE_BYTES)
        data = header + nonce + self._cipher(header).encrypt(nonce, plaintext, header)
        replace_private_file(self.path, data, FILE_MODE)

    def acquire(self) -> None:
        """Take the sibling lock file: two processes signing from one state would reuse
        counters. Released by `release`, or when the process dies (kill -9 included). The
        holder alone writes, so it removes the temporary files of a write that was killed."""
        if self._lock_file is not None:
            raise SealedStateError(f"{self.path} is already open in this process")
        lock_path = self.path.with_name(self.path.name + ".lock")
        lock_file = os.fdopen(os.open(lock_path, os.O_RDWR | os.O_CREAT, FILE_MODE), "r+b")
        try:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock_file.close()
            raise SealedStateError(f"{self.path} is in use by another agent") from None
        self._lock_file = lock_file
        for leftover in self.path.parent.glob(f".{self.path.name}.*"):   # of a killed write
            leftover.unlink(missing_ok=True)

    def release(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def _new_header(self) -> bytes:
        if self._passphrase is None:
            return _HEADER.pack(MAGIC, _KDF_RAW, 0, 0, 0, bytes(SCRYPT_SALT_BYTES))
        if len(self._passphrase) < MIN_PASSPHRASE_CHARS:
            raise SealedStateError(f"a passphrase has at least {MIN_PASSPHRASE_CHARS} characters")
        return _HEADER.pack(MAGIC, _KDF_SCRYPT, SCRYPT_N.bit_length() - 1, SCRYPT_R, SCRYPT_P,
                            secrets.token_bytes(SCRYPT_SALT_BYTES))

    def _cipher(self, header: bytes) -> AESGCM:
        """The cipher for this header; scrypt runs again only when the header changes."""
        if self._aead is None or self._aead[0] != header:
            self._aead = (header, AESGCM(self._local_key(header)))
        return self._aead[1]

    def _local_key(self, header: bytes) -> bytes:
        magic, kdf, log2_n, r, p, salt = _HEADER.unpack(header)
        if magic != MAGIC:
            raise SealedStateError(f"{self.path} is not a sealed state file of format {MAGIC!r}")
        if kdf == _KDF_RAW:
            if self._raw_key is None:
                raise SealedStateError(f"{self.path} is unlocked by a key, not a passphrase")
            return self._raw_key
        if kdf != _KDF_SCRYPT:
            raise SealedStateError(f"{self.path}: unknown key derivation")
        if self._passphrase is None:
            raise SealedStateError(f"{self.path} is unlocked by a passphrase, not a key")
        if not (1 <= log2_n < 32 and 1 <= r and 1 <= p <= MAX_SCRYPT_P
                and 128 * r * 2**log2_n <= MAX_SCRYPT_MEMORY_BYTES):
            raise SealedStateError(f"{self.path}: scrypt parameters out of bounds")
        return key_from_passphrase(self._passphrase, salt, 2**log2_n, r, p)
