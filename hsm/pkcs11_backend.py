"""The PKCS#11 HSM: keys in a token through python-pkcs11 (tested on SoftHSM2).

Configured from the environment only: HDFPAY_PKCS11_MODULE (the module's path),
HDFPAY_PKCS11_TOKEN_LABEL and HDFPAY_PKCS11_PIN; the PIN is used once to log in and kept
nowhere. One logged-in session per process and every call under one lock: SoftHSM2 runs
without locking under python-pkcs11, which releases the GIL, so a session per thread corrupts
its heap. That session is closed by close() only (closing it logs out the whole process).
After fork() the child must call `pkcs11.lib(module).reinitialize()` and open its own
Pkcs11Hsm; this class does not do it. Scale with processes, each with its own session.

Keys are token objects as pkcs11_objects describes. Keys generated in the token are sensitive
and non-extractable (the journal's HMAC key a CKK_GENERIC_SECRET that can only SIGN with
CKM_SHA256_HMAC, its KCV that HMAC of 16 zero bytes), and a BDK can only DERIVE: its KCV is computed at generation (the key is
generated with SIGN too, signs the 16 zero bytes with CKM_AES_CMAC, then loses SIGN before its
record is written; it stays modifiable, which a PIN holder could misuse, but the same PIN holder
could derive extractable keys from any BDK anyway). Imported keys get their KCV on the host,
where TR-31 unwrapped them, and are created non-modifiable and non-copyable.

DUKPT runs in the token: CKM_AES_ECB_ENCRYPT_DATA equals the standard's AES-ECB derivation, so
the initial key, the ladder and the working key are session objects; the initial key and the
ladder of each terminal's last counter are cached (bounded), the working key is destroyed
after its one CMAC, and truncated MACs are compared on the host in constant time.

SoftHSM2 has no TR-31 mechanism, so TR-31 runs on the host with psec: an exported initial key
is derived as an extractable session object only for the moment it is wrapped, and a KBPK must
be in clear on the host to wrap or unwrap. A transport key (made on the host, shown once) or an
imported KBPK is stored in the token as a sensitive, non-extractable K1 key, and its clear value
stays in this process's memory for TRANSPORT_KEY_HOLD_SECONDS, then is dropped: later TR-31
work under it needs a new transport key. A payment HSM (payShield, AWS Payment Cryptography)
does TR-31 inside, and none of these values ever reaches the host.
"""

from __future__ import annotations

import functools
import logging
import os
import secrets
import threading
import time
from collections.abc import Mapping

import pkcs11
from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass

from hsm import dukpt, key_blocks, policy
from hsm.interface import (AES_KEY_BYTES, DUKPT_MAC_BYTES, HMAC_KEY_BYTES, Hsm, HsmError,
                           KeyExists, KeyInfo, KeyUsage, UnknownKey, check_alias)
from hsm.key_check import KCV_INPUT, kcv, kcv_from_cmac
from hsm.pkcs11_objects import (CAPABILITIES, PROTECTED, TokenKey, import_template, parse_record,
                                record)

MODULE_VARIABLE = "HDFPAY_PKCS11_MODULE"
TOKEN_LABEL_VARIABLE = "HDFPAY_PKCS11_TOKEN_LABEL"
PIN_VARIABLE = "HDFPAY_PKCS11_PIN"
DUKPT_CACHE_TERMINALS = 1024         # each terminal holds up to 17 session objects in the token
TRANSPORT_KEY_HOLD_SECONDS = 15 * 60  # one terminal installation
AES_KEY_BITS = AES_KEY_BYTES * 8
HMAC_KEY_BITS = HMAC_KEY_BYTES * 8   # a CKK_GENERIC_SECRET for CKM_SHA256_HMAC
_log = logging.getLogger(__name__)


def _token_call(method):
    """Under the one lock, on an open session, with token errors turned into HsmError."""
    @functools.wraps(method)
    def locked(self: Pkcs11Hsm, *args, **kwargs):
        with self._lock:
            if self._session is None:
                raise HsmError("this PKCS#11 HSM is closed")
            try:
                return method(self, *args, **kwargs)
            except pkcs11.PKCS11Error as error:
                raise HsmError(f"PKCS#11 error {type(error).__name__} {error}") from None
    return locked


class Pkcs11Hsm(Hsm):
    def __init__(self, environ: Mapping[str, str] = os.environ, *,
                 dukpt_cache_terminals: int = DUKPT_CACHE_TERMINALS) -> None:
        module, self._token_label, pin = (_setting(environ, name) for name in (
            MODULE_VARIABLE, TOKEN_LABEL_VARIABLE, PIN_VARIABLE))
        try:
            token = pkcs11.lib(module).get_token(token_label=self._token_label)
            self._session = token.open(user_pin=pin, rw=True)
        except pkcs11.PKCS11Error as error:     # python-pkcs11's messages never hold the PIN
            raise HsmError(f"cannot log in to PKCS#11 token {self._token_label!r} through"
                           f" {module}: {type(error).__name__} {error}") from None
        self._cache_terminals = dukpt_cache_terminals
        self._lock = threading.Lock()
        self._keys: dict[str, TokenKey] = {}
        self._dukpt: dict[str, dukpt.DukptHostCache[pkcs11.SecretKey]] = {}
        self._kbpk_values: dict[str, tuple[bytes, float]] = {}
        _log.info("logged in to PKCS#11 token %r through %s", self._token_label, module)

    def __repr__(self) -> str:
        return f"Pkcs11Hsm(token={self._token_label!r})"

    @_token_call
    def generate_key(self, alias: str, usage: KeyUsage) -> KeyInfo:
        mode_of_use = policy.generated_mode(usage)
        self._require_free(alias)
        key_type, bits, kcv_mechanism = (
            (KeyType.GENERIC_SECRET, HMAC_KEY_BITS, Mechanism.SHA256_HMAC)
            if usage is KeyUsage.HMAC else (KeyType.AES, AES_KEY_BITS, Mechanism.AES_CMAC))
        handle = self._session.generate_key(
            key_type, bits, label=alias, store=True,
            template={**PROTECTED, Attribute.COPYABLE: False},
            capabilities=CAPABILITIES[usage] | MechanismFlag.SIGN)
        try:
            tag = handle.sign(KCV_INPUT, mechanism=kcv_mechanism)
            info = policy.new_key_info(alias, usage, kcv_from_cmac(tag))
            if not CAPABILITIES[usage] & MechanismFlag.SIGN:
                handle[Attribute.SIGN] = False
            handle[Attribute.ID] = record(info, mode_of_use)
        except BaseException:
            handle.destroy()
            raise
        self._keys[alias] = TokenKey(info, mode_of_use, handle)
        _log.info("generated key %s in the token", info)
        return info

    @_token_call
    def create_transport_key(self, alias: str) -> tuple[KeyInfo, bytes]:
        value = secrets.token_bytes(AES_KEY_BYTES)
        usage = KeyUsage.KEY_BLOCK_PROTECTION
        return self._import(alias, usage, key_blocks.FULL_MODE[usage], value), value

    @_token_call
    def import_key_block(self, alias: str, key_block: str, kbpk_alias: str) -> KeyInfo:
        check_alias(alias)
        kbpk = self._kbpk_value(kbpk_alias, key_blocks.UNWRAP_MODES, "unwrapping a key block")
        unwrapped = key_blocks.unwrap(kbpk, key_block)
        return self._import(alias, unwrapped.usage, unwrapped.mode_of_use, unwrapped.key)

    @_token_call
    def export_dukpt_initial_key(self, bdk_alias: str, initial_key_id: bytes,
                                 kbpk_alias: str) -> str:
        bdk = self._key(bdk_alias, KeyUsage.BDK, "deriving a DUKPT initial key")
        kbpk = self._kbpk_value(kbpk_alias, key_blocks.WRAP_MODES, "wrapping a key block")
        policy.check_initial_key_id(initial_key_id)
        initial_key = self._derive(bdk.handle, dukpt.KeyUsage.INITIAL_KEY, initial_key_id,
                                   MechanismFlag(0), {Attribute.SENSITIVE: False,
                                                      Attribute.EXTRACTABLE: True})
        try:
            value = initial_key[Attribute.VALUE]
        finally:
            initial_key.destroy()
        return key_blocks.wrap(kbpk, KeyUsage.DUKPT_INITIAL_KEY, "X", value,
                               initial_key_id=initial_key_id)

    @_token_call
    def verify_dukpt_request_mac(self, bdk_alias: str, ksn: bytes, data: bytes,
                                 mac: bytes) -> None:
        policy.request_ksn(ksn)
        tag = self._dukpt_cmac(bdk_alias, ksn, data, dukpt.KeyUsage.MAC_GENERATION)
        policy.check_request_mac(tag, mac)

    @_token_call
    def generate_dukpt_response_mac(self, bdk_alias: str, ksn: bytes, data: bytes) -> bytes:
        policy.response_ksn(ksn)
        tag = self._dukpt_cmac(bdk_alias, ksn, data, dukpt.KeyUsage.MAC_VERIFICATION)
        return tag[:DUKPT_MAC_BYTES]

    @_token_call
    def hmac_sha256(self, alias: str, data: bytes) -> bytes:
        policy.check_data(data)
        key = self._key(alias, KeyUsage.HMAC, "an HMAC-SHA-256")
        return key.handle.sign(data, mechanism=Mechanism.SHA256_HMAC)

    @_token_call
    def key_info(self, alias: str) -> KeyInfo:
        return self._key(alias).info

    @_token_call
    def list_keys(self) -> list[KeyInfo]:
        found = (parse_record(handle) for handle in self._session.get_objects(
            {Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.TOKEN: True}))
        return sorted((key.info for key in found if key), key=lambda info: info.alias)

    @_token_call
    def destroy_key(self, alias: str) -> None:
        key = self._key(alias)
        key.handle.destroy()
        self._forget(alias)
        _log.info("destroyed key %s", key.info)

    def close(self) -> None:
        """Destroy the cached session objects and log out (the process's one session)."""
        with self._lock:
            if self._session is None:
                return
            for cache in self._dukpt.values():
                cache.clear()
            self._dukpt.clear()
            self._keys.clear()
            self._kbpk_values.clear()
            self._session.close()
            self._session = None
        _log.info("logged out of PKCS#11 token %r", self._token_label)

    def _dukpt_cmac(self, bdk_alias: str, ksn: bytes, data: bytes,
                    usage: dukpt.KeyUsage) -> bytes:
        policy.check_data(data)
        derivation_key = self._dukpt_cache(bdk_alias).derivation_key(ksn)
        initial_key_id, counter = dukpt.split_ksn(ksn)
        working_key = self._derive(derivation_key, usage,
                                   dukpt.counter_seed(initial_key_id, counter),
                                   MechanismFlag.SIGN)
        try:
            return working_key.sign(data, mechanism=Mechanism.AES_CMAC)
        finally:
            working_key.destroy()

    def _dukpt_cache(self, bdk_alias: str) -> dukpt.DukptHostCache[pkcs11.SecretKey]:
        if bdk_alias not in self._dukpt:
            bdk = self._key(bdk_alias, KeyUsage.BDK, "deriving DUKPT keys").handle
            self._dukpt[bdk_alias] = dukpt.DukptHostCache(
                lambda initial_key_id: self._derive(bdk, dukpt.KeyUsage.INITIAL_KEY,
                                                    initial_key_id, MechanismFlag.DERIVE),
                lambda parent, usage, seed: self._derive(parent, usage, seed,
                                                         MechanismFlag.DERIVE),
                discard=lambda key: key.destroy(), max_entries=self._cache_terminals)
        return self._dukpt[bdk_alias]

    @staticmethod
    def _derive(parent: pkcs11.SecretKey, usage: dukpt.KeyUsage, seed: bytes,
                capabilities: MechanismFlag, template: dict = PROTECTED) -> pkcs11.SecretKey:
        """A session object equal to AES-ECB(parent, DUKPT derivation data)."""
        return parent.derive_key(KeyType.AES, AES_KEY_BITS, store=False,
                                 capabilities=capabilities, template=template,
                                 mechanism=Mechanism.AES_ECB_ENCRYPT_DATA,
                                 mechanism_param=dukpt.derivation_data(usage, seed))

    def _import(self, alias: str, usage: KeyUsage, mode_of_use: str, value: bytes) -> KeyInfo:
        self._require_free(alias)
        info = policy.new_key_info(alias, usage, kcv(value))
        handle = self._session.create_object(import_template(info, mode_of_use, value))
        self._keys[alias] = TokenKey(info, mode_of_use, handle)
        if usage is KeyUsage.KEY_BLOCK_PROTECTION:
            self._kbpk_values[alias] = (value, time.monotonic() + TRANSPORT_KEY_HOLD_SECONDS)
        _log.info("stored key %s in the token", info)
        return info

    def _key(self, alias: str, usage: KeyUsage | None = None,
             operation: str = "") -> TokenKey:
        key = self._keys.get(alias)
        if key is None:
            try:
                handle = self._session.get_key(object_class=ObjectClass.SECRET_KEY, label=alias)
            except pkcs11.NoSuchKey:
                raise UnknownKey(f"no key {alias}") from None
            key = parse_record(handle)
            if key is None:
                raise HsmError(f"token object {alias} carries no hdfpay record")
            self._keys[alias] = key
        if usage is not None:
            policy.require_usage(alias, key.info.usage, usage, operation)
        return key

    def _kbpk_value(self, alias: str, modes: frozenset[str], operation: str) -> bytes:
        key = self._key(alias, KeyUsage.KEY_BLOCK_PROTECTION, operation)
        policy.require_mode(alias, key.mode_of_use, modes, operation)
        value, expires = self._kbpk_values.get(alias, (b"", 0.0))
        if time.monotonic() >= expires:
            self._kbpk_values.pop(alias, None)
            raise HsmError(f"KBPK {alias}: its clear value is no longer held by this process"
                           " (TR-31 runs on the host with this token): make a new transport key")
        return value

    def _require_free(self, alias: str) -> None:
        check_alias(alias)
        if alias in self._keys or list(self._session.get_objects({Attribute.LABEL: alias})):
            raise KeyExists(f"key {alias} already exists")

    def _forget(self, alias: str) -> None:
        self._keys.pop(alias, None)
        self._kbpk_values.pop(alias, None)
        cache = self._dukpt.pop(alias, None)
        if cache is not None:
            cache.clear()


def _setting(environ: Mapping[str, str], name: str) -> str:
    value = environ.get(name, "")
    if not value:
        raise HsmError(f"{name} is not set (the PKCS#11 backend needs {MODULE_VARIABLE},"
                       f" {TOKEN_LABEL_VARIABLE} and {PIN_VARIABLE})")
    return value
