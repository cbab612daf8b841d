"""The software HSM: `cryptography` in this process, keys in an encrypted keystore file.

For development, tests and small deployments; the key values are in this process's memory
while they are used (the BDKs stay there, unsealed, for the hot path), so the host itself must
be trusted. A key changed by another process is seen here after a restart, or at this
process's own next change to the keystore.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import threading
from pathlib import Path

from cryptography.hazmat.primitives import cmac
from cryptography.hazmat.primitives.ciphers import algorithms

from hsm import dukpt, key_blocks, policy
from hsm.interface import (AES_KEY_BYTES, DUKPT_MAC_BYTES, HMAC_KEY_BYTES, Hsm, HsmError, KeyInfo,
                           KeyUsage, check_alias)
from hsm.key_check import hmac_kcv, kcv
from hsm.keystore import Keystore

_log = logging.getLogger(__name__)


class SoftwareHsm(Hsm):
    def __init__(self, keystore: Path | str, *, passphrase: str | None = None,
                 kek_file: Path | str | None = None, create: bool = False,
                 dukpt_cache_terminals: int = dukpt.DEFAULT_CACHE_TERMINALS) -> None:
        self._keystore = Keystore(keystore, passphrase=passphrase, kek_file=kek_file,
                                  create=create)
        self._cache_terminals = dukpt_cache_terminals
        self._lock = threading.Lock()
        self._dukpt: dict[str, dukpt.DukptHostCache[bytes]] = {}

    def __repr__(self) -> str:
        return f"SoftwareHsm({str(self._keystore.path)!r})"

    def generate_key(self, alias: str, usage: KeyUsage) -> KeyInfo:
        mode_of_use = policy.generated_mode(usage)
        size = HMAC_KEY_BYTES if usage is KeyUsage.HMAC else AES_KEY_BYTES
        return self._store(alias, usage, mode_of_use, secrets.token_bytes(size))

    def create_transport_key(self, alias: str) -> tuple[KeyInfo, bytes]:
        value = secrets.token_bytes(AES_KEY_BYTES)
        usage = KeyUsage.KEY_BLOCK_PROTECTION
        return self._store(alias, usage, key_blocks.FULL_MODE[usage], value), value

    def import_key_block(self, alias: str, key_block: str, kbpk_alias: str) -> KeyInfo:
        check_alias(alias)
        kbpk = self._kbpk(kbpk_alias, key_blocks.UNWRAP_MODES, "unwrapping a key block")
        unwrapped = key_blocks.unwrap(kbpk, key_block)
        return self._store(alias, unwrapped.usage, unwrapped.mode_of_use, unwrapped.key)

    def export_dukpt_initial_key(self, bdk_alias: str, initial_key_id: bytes,
                                 kbpk_alias: str) -> str:
        bdk = self._value(bdk_alias, KeyUsage.BDK, "deriving a DUKPT initial key")
        kbpk = self._kbpk(kbpk_alias, key_blocks.WRAP_MODES, "wrapping a key block")
        policy.check_initial_key_id(initial_key_id)
        initial_key = dukpt.derive_initial_key(bdk, initial_key_id)
        return key_blocks.wrap(kbpk, KeyUsage.DUKPT_INITIAL_KEY, "X", initial_key,
                               initial_key_id=initial_key_id)

    def verify_dukpt_request_mac(self, bdk_alias: str, ksn: bytes, data: bytes,
                                 mac: bytes) -> None:
        policy.request_ksn(ksn)
        tag = self._dukpt_cmac(bdk_alias, ksn, data, dukpt.KeyUsage.MAC_GENERATION)
        policy.check_request_mac(tag, mac)

    def generate_dukpt_response_mac(self, bdk_alias: str, ksn: bytes, data: bytes) -> bytes:
        policy.response_ksn(ksn)
        tag = self._dukpt_cmac(bdk_alias, ksn, data, dukpt.KeyUsage.MAC_VERIFICATION)
        return tag[:DUKPT_MAC_BYTES]

    def hmac_sha256(self, alias: str, data: bytes) -> bytes:
        policy.check_data(data)
        key = self._value(alias, KeyUsage.HMAC, "an HMAC-SHA-256")
        return hmac.new(key, data, hashlib.sha256).digest()

    def key_info(self, alias: str) -> KeyInfo:
        return self._keystore.get(alias).info

    def list_keys(self) -> list[KeyInfo]:
        return [record.info for _, record in sorted(self._keystore.records().items())]

    def destroy_key(self, alias: str) -> None:
        with self._lock:
            info = self._keystore.get(alias).info
            self._keystore.remove(alias)
            self._dukpt.pop(alias, None)
        _log.info("destroyed key %s", info)

    def close(self) -> None:
        """Forget the unsealed BDKs and DUKPT caches (they come back on the next use)."""
        with self._lock:
            self._dukpt.clear()

    def _store(self, alias: str, usage: KeyUsage, mode_of_use: str, value: bytes) -> KeyInfo:
        check_alias(alias)
        if usage is KeyUsage.HMAC:
            check_value = hmac_kcv(value)
        elif len(value) == AES_KEY_BYTES:
            check_value = kcv(value)
        else:
            raise HsmError("only AES-128 keys are held, and HMAC keys made here")
        info = self._keystore.add(alias, usage, mode_of_use, check_value, value).info
        _log.info("stored key %s in %s", info, self._keystore.path)
        return info

    def _value(self, alias: str, usage: KeyUsage, operation: str) -> bytes:
        record = self._keystore.get(alias)
        policy.require_usage(alias, record.info.usage, usage, operation)
        return self._keystore.unseal(record)

    def _kbpk(self, alias: str, modes: frozenset[str], operation: str) -> bytes:
        record = self._keystore.get(alias)
        policy.require_usage(alias, record.info.usage, KeyUsage.KEY_BLOCK_PROTECTION, operation)
        policy.require_mode(alias, record.mode_of_use, modes, operation)
        return self._keystore.unseal(record)

    def _dukpt_cmac(self, bdk_alias: str, ksn: bytes, data: bytes,
                    usage: dukpt.KeyUsage) -> bytes:
        policy.check_data(data)
        derivation_key = self._dukpt_cache(bdk_alias).derivation_key(ksn)
        initial_key_id, counter = dukpt.split_ksn(ksn)
        working_key = dukpt.derive(derivation_key, usage,
                                   dukpt.counter_seed(initial_key_id, counter))
        tag = cmac.CMAC(algorithms.AES(working_key))
        tag.update(data)
        return tag.finalize()

    def _dukpt_cache(self, bdk_alias: str) -> dukpt.DukptHostCache[bytes]:
        cache = self._dukpt.get(bdk_alias)
        if cache is not None:
            return cache
        with self._lock:
            if bdk_alias not in self._dukpt:
                bdk = self._value(bdk_alias, KeyUsage.BDK, "deriving DUKPT keys")
                self._dukpt[bdk_alias] = dukpt.DukptHostCache(
                    lambda initial_key_id: dukpt.derive_initial_key(bdk, initial_key_id),
                    dukpt.derive, max_entries=self._cache_terminals)
            return self._dukpt[bdk_alias]
