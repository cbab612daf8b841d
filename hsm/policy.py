"""Rules both backends apply the same way: which key may do what, and how a request's MAC and
KSN are judged. One place, so that the software HSM and the PKCS#11 one cannot drift apart."""

from __future__ import annotations

import datetime as dt
import hmac

from hsm import dukpt
from hsm.interface import (DUKPT_MAC_BYTES, INITIAL_KEY_ID_BYTES, HsmError, KeyInfo, KeyUsage,
                           KeyUsageError, VerificationFailed)
from hsm.key_blocks import FULL_MODE

# A KBPK must be known at the other end and a DUKPT initial key comes from a BDK: generating
# either at random would make a key nobody else can use (create_transport_key and
# export_dukpt_initial_key make those).
GENERATED_USAGES = frozenset({KeyUsage.BDK, KeyUsage.MAC, KeyUsage.HMAC})


def generated_mode(usage: KeyUsage) -> str:
    if usage not in GENERATED_USAGES:
        raise KeyUsageError(f"keys of usage {usage.value} are not generated at random here"
                            " (transport keys: create_transport_key; initial keys: derived)")
    return FULL_MODE[usage]


def new_key_info(alias: str, usage: KeyUsage, kcv: str) -> KeyInfo:
    """A new key's description, stamped now (UTC, whole seconds)."""
    return KeyInfo(alias, usage, kcv, dt.datetime.now(dt.timezone.utc).replace(microsecond=0))


def require_usage(alias: str, usage: KeyUsage, expected: KeyUsage, operation: str) -> None:
    if usage is not expected:
        raise KeyUsageError(f"key {alias} has usage {usage.value}; {operation} needs"
                            f" {expected.value}")


def require_mode(alias: str, mode_of_use: str, allowed: frozenset[str], operation: str) -> None:
    if mode_of_use not in allowed:
        raise KeyUsageError(f"key {alias} has mode of use {mode_of_use}; {operation} needs one"
                            f" of {''.join(sorted(allowed))}")


def request_ksn(ksn: bytes) -> tuple[bytes, int]:
    """A request's KSN comes from the network: a malformed one fails verification."""
    try:
        return dukpt.split_ksn(ksn)
    except dukpt.InvalidKsn as error:
        raise VerificationFailed(str(error)) from None


def response_ksn(ksn: bytes) -> tuple[bytes, int]:
    """A response is MAC'd only for a verified request: a bad KSN here is a caller's bug."""
    try:
        return dukpt.split_ksn(ksn)
    except dukpt.InvalidKsn as error:
        raise HsmError(str(error)) from None


def check_request_mac(full_tag: bytes, mac: bytes) -> None:
    """Compare the protocol's truncated MAC with the full tag's prefix in constant time."""
    if not isinstance(mac, bytes) or len(mac) != DUKPT_MAC_BYTES:
        raise VerificationFailed(f"a request MAC has {DUKPT_MAC_BYTES} bytes")
    if not hmac.compare_digest(full_tag[:DUKPT_MAC_BYTES], mac):
        raise VerificationFailed("request MAC does not verify")


def check_data(data: bytes) -> None:
    if not isinstance(data, bytes):
        raise HsmError("MAC'd data must be bytes")


def check_initial_key_id(initial_key_id: bytes) -> None:
    if not isinstance(initial_key_id, bytes) or len(initial_key_id) != INITIAL_KEY_ID_BYTES:
        raise HsmError(f"an initial key ID has {INITIAL_KEY_ID_BYTES} bytes")
