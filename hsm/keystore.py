"""The software HSM's keystore: one JSON file in which every key value is sealed with AES-GCM
under a master key, so that a copy of the file (a backup, a stolen disk) reveals no key.

The master key comes from a passphrase through scrypt (salt and cost parameters are stored in
the file) or from a 32-byte KEK file kept elsewhere. Each record's associated data binds the
sealed value to its alias, usage, mode of use, KCV and creation time: a record edited or moved
to another alias fails authentication. Every record is authenticated when the file is opened.
Changes re-read the file under an exclusive lock and replace it atomically (temporary file,
fsync, rename), so that several processes (the server, an operator's CLI) cannot lose updates.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import fcntl
import json
import os
import secrets
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from hsm import policy
from hsm.interface import HsmError, KeyExists, KeyInfo, KeyUsage, UnknownKey
from hsm.private_file import replace_private_file
from hsm.sealing import (FILE_MODE, GCM_NONCE_BYTES, MASTER_KEY_BYTES, MIN_PASSPHRASE_CHARS, SCRYPT_N,
                         SCRYPT_P, SCRYPT_R, SCRYPT_SALT_BYTES, key_from_passphrase)

FORMAT = "hdfpay-keystore/1"
_CHECK_PLAINTEXT = b"hdfpay keystore master key check"
_CHECK_AAD = f"{FORMAT}\ncheck".encode()


@dataclass(frozen=True)
class StoredKey:
    info: KeyInfo
    mode_of_use: str
    nonce: bytes = field(repr=False)
    sealed: bytes = field(repr=False)

    def associated_data(self) -> bytes:
        return _associated_data(self.info, self.mode_of_use)


class Keystore:
    """Exactly one of `passphrase` and `kek_file` unlocks the file; `create` makes a new one."""

    def __init__(self, path: Path | str, *, passphrase: str | None = None,
                 kek_file: Path | str | None = None, create: bool = False) -> None:
        if (passphrase is None) == (kek_file is None):
            raise HsmError("a keystore is unlocked by a passphrase or by a KEK file (one of them)")
        self.path = Path(path)
        self._lock_path = self.path.with_name(self.path.name + ".lock")
        self._read_mtime_ns = 0
        self._thread_lock = threading.Lock()
        if create:
            header = self._new_header(passphrase)
            self._aead = AESGCM(_master_key(header, passphrase, kek_file))
            self._create(header)
        else:
            document = self._read()
            self._aead = AESGCM(_master_key(document.get("master_key"), passphrase, kek_file))
            self._accept(document)

    def __repr__(self) -> str:
        return f"Keystore({str(self.path)!r})"

    def records(self) -> dict[str, StoredKey]:
        return dict(self._records)

    def get(self, alias: str) -> StoredKey:
        """A key added by another process (`hdfpay keys new-bdk` beside a running server) is
        found too: on a miss, the file is read again if it changed since we last read it."""
        record = self._records.get(alias)
        if record is None and self._changed_on_disk():
            with self._thread_lock:
                self._accept(self._read())
            record = self._records.get(alias)
        if record is None:
            raise UnknownKey(f"no key {alias}")
        return record

    def _changed_on_disk(self) -> bool:
        try:
            return self.path.stat().st_mtime_ns != self._read_mtime_ns
        except FileNotFoundError:
            return False

    def unseal(self, record: StoredKey) -> bytes:
        try:
            return self._aead.decrypt(record.nonce, record.sealed, record.associated_data())
        except InvalidTag:
            raise HsmError(f"keystore record {record.info.alias} fails authentication") from None

    def add(self, alias: str, usage: KeyUsage, mode_of_use: str, kcv: str,
            value: bytes) -> StoredKey:
        info = policy.new_key_info(alias, usage, kcv)
        nonce = secrets.token_bytes(GCM_NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, value, _associated_data(info, mode_of_use))
        record = StoredKey(info, mode_of_use, nonce, sealed)
        with self._changing() as records:
            if alias in records:
                raise KeyExists(f"key {alias} already exists")
            records[alias] = record
        return record

    def remove(self, alias: str) -> None:
        with self._changing() as records:
            if records.pop(alias, None) is None:
                raise UnknownKey(f"no key {alias}")

    @contextlib.contextmanager
    def _changing(self):
        """Re-read the file under the locks, let the caller change the records, write back."""
        with self._thread_lock, _exclusive_lock(self._lock_path):
            document = self._read()
            self._accept(document)
            records = dict(self._records)
            yield records
            document["keys"] = {alias: _encode(record) for alias, record in records.items()}
            self._write(document)
            self._records = records

    def _accept(self, document: dict) -> None:
        try:
            check = document["check"]
            self._aead.decrypt(_b64(check["nonce"]), _b64(check["sealed"]), _CHECK_AAD)
        except InvalidTag:
            raise HsmError(f"wrong passphrase or KEK for keystore {self.path}") from None
        except (KeyError, TypeError, ValueError):
            raise HsmError(f"keystore {self.path} is malformed") from None
        records = {alias: _decode(alias, entry, self.path)
                   for alias, entry in document["keys"].items()}
        for record in records.values():
            self.unseal(record)
        self._records = records

    def _new_header(self, passphrase: str | None) -> dict:
        if passphrase is None:
            return {"kind": "kek-file"}
        if len(passphrase) < MIN_PASSPHRASE_CHARS:
            raise HsmError(f"a keystore passphrase has at least {MIN_PASSPHRASE_CHARS} characters")
        return {"kind": "scrypt", "salt": _text(secrets.token_bytes(SCRYPT_SALT_BYTES)),
                "n": SCRYPT_N, "r": SCRYPT_R, "p": SCRYPT_P}

    def _create(self, header: dict) -> None:
        nonce = secrets.token_bytes(GCM_NONCE_BYTES)
        check = {"nonce": _text(nonce),
                 "sealed": _text(self._aead.encrypt(nonce, _CHECK_PLAINTEXT, _CHECK_AAD))}
        with self._thread_lock, _exclusive_lock(self._lock_path):
            if self.path.exists():
                raise HsmError(f"keystore {self.path} already exists")
            self._write({"format": FORMAT, "master_key": header, "check": check, "keys": {}})
        self._records = {}

    def _read(self) -> dict:
        try:
            status = self.path.stat()
            mode = status.st_mode
            text = self.path.read_text(encoding="utf-8")
            self._read_mtime_ns = status.st_mtime_ns
        except FileNotFoundError:
            raise HsmError(f"keystore {self.path} does not exist") from None
        _require_private(self.path, mode)
        try:
            document = json.loads(text)
        except ValueError:
            raise HsmError(f"keystore {self.path} is not JSON") from None
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise HsmError(f"{self.path} is not a keystore of format {FORMAT}")
        if not isinstance(document.get("keys"), dict):
            raise HsmError(f"keystore {self.path} is malformed")
        return document

    def _write(self, document: dict) -> None:
        data = json.dumps(document, indent=1, sort_keys=True).encode()
        replace_private_file(self.path, data, FILE_MODE)


def _associated_data(info: KeyInfo, mode_of_use: str) -> bytes:
    return (f"{FORMAT}\n{info.alias}\n{info.usage.value}\n{mode_of_use}\n{info.kcv}\n"
            f"{info.created_at.isoformat()}").encode()


def _master_key(header: dict | None, passphrase: str | None, kek_file: Path | str | None) -> bytes:
    kind = header.get("kind") if isinstance(header, dict) else None
    if kind == "scrypt":
        if passphrase is None:
            raise HsmError("this keystore is unlocked by a passphrase, not a KEK file")
        try:
            salt, n, r, p = _b64(header["salt"]), int(header["n"]), int(header["r"]), int(header["p"])
            return key_from_passphrase(passphrase, salt, n, r, p)
        except (KeyError, TypeError, ValueError):
            raise HsmError("keystore scrypt parameters are malformed") from None
    if kind == "kek-file":
        if kek_file is None:
            raise HsmError("this keystore is unlocked by a KEK file, not a passphrase")
        path = Path(kek_file)
        try:
            _require_private(path, path.stat().st_mode)
            kek = path.read_bytes()
        except FileNotFoundError:
            raise HsmError(f"KEK file {path} does not exist") from None
        if len(kek) != MASTER_KEY_BYTES:
            raise HsmError(f"KEK file {path} must hold exactly {MASTER_KEY_BYTES} bytes")
        return kek
    raise HsmError("keystore master key parameters are malformed")


def _require_private(path: Path, mode: int) -> None:
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise HsmError(f"{path} is readable by others: chmod 600 it")


@contextlib.contextmanager
def _exclusive_lock(path: Path):
    fd = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _encode(record: StoredKey) -> dict:
    info = record.info
    return {"usage": info.usage.value, "mode_of_use": record.mode_of_use, "kcv": info.kcv,
            "created_at": info.created_at.isoformat(), "nonce": _text(record.nonce),
            "sealed": _text(record.sealed)}


def _decode(alias: str, entry: dict, path: Path) -> StoredKey:
    try:
        info = KeyInfo(alias, KeyUsage(entry["usage"]), entry["kcv"],
                       dt.datetime.fromisoformat(entry["created_at"]))
        return StoredKey(info, entry["mode_of_use"], _b64(entry["nonce"]), _b64(entry["sealed"]))
    except (KeyError, TypeError, ValueError):
        raise HsmError(f"keystore {path}: record {alias!r} is malformed") from None


def _text(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _b64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)
