"""A terminal's AES-DUKPT key and counter: signs each request under a fresh KSN and checks the
server's answer under the same KSN.

The terminal receives its initial key as a TR-31 block wrapped under its transport key
(`hdfpay terminals add`); nothing here writes a key to disk.
"""

from __future__ import annotations

import hmac
from typing import Protocol

from cryptography.hazmat.primitives.cmac import CMAC
from cryptography.hazmat.primitives.ciphers.algorithms import AES

from hsm import dukpt
from hsm.interface import KeyBlockError, KeyUsage
from hsm.key_blocks import unwrap
from terminal_protocol.transport import MAC_BYTES, request_mac_input, response_mac_input


class ForgedResponse(Exception):
    """The answer's MAC is missing or wrong: treat it as no answer (reverse the purchase)."""


class Counter(Protocol):
    def next(self) -> int: ...


class TerminalKeys:
    def __init__(self, initial_key_id: bytes, initial_key: bytes, counter: Counter) -> None:
        if len(initial_key_id) != 8 or len(initial_key) != 16:
            raise ValueError("an AES-DUKPT initial key id is 8 bytes and an AES-128 key 16")
        self.initial_key_id = initial_key_id
        self._initial_key = initial_key
        self._counter = counter
        # The ladder of the last counter: the next counter re-derives only the bits that changed,
        # and the response key reuses the request's ladder.
        self._ladder = dukpt.DukptHostCache(lambda _: initial_key, dukpt.derive, max_entries=1)

    def __repr__(self) -> str:
        return f"TerminalKeys(initial_key_id={self.initial_key_id.hex().upper()})"

    @classmethod
    def from_key_block(cls, key_block: str, transport_key: bytes, counter: Counter,
                       initial_key_id: bytes | None = None) -> "TerminalKeys":
        """Unwrap the TR-31 block of `hdfpay terminals add` (or `rotate`)."""
        unwrapped = unwrap(transport_key, key_block)
        if unwrapped.usage is not KeyUsage.DUKPT_INITIAL_KEY:
            raise KeyBlockError(f"expected a DUKPT initial key (B1), got {unwrapped.usage.value}")
        key, key_id = unwrapped.key, initial_key_id or unwrapped.initial_key_id
        if key_id is None:
            raise ValueError("the key block carries no initial key id: give it explicitly")
        return cls(key_id, key, counter)

    def sign_request(self, method: str, path: str, body: bytes) -> tuple[bytes, bytes]:
        """(KSN, MAC) for one request; every call consumes a new counter."""
        ksn = dukpt.build_ksn(self.initial_key_id, self._counter.next())
        key = self._working_key(ksn, dukpt.KeyUsage.MAC_GENERATION)
        return ksn, _cmac(key, request_mac_input(method, path, ksn, body))[:MAC_BYTES]

    def check_response(self, ksn: bytes, status: int, body: bytes, mac: bytes | None) -> None:
        key = self._working_key(ksn, dukpt.KeyUsage.MAC_VERIFICATION)
        expected = _cmac(key, response_mac_input(ksn, status, body))[:MAC_BYTES]
        if mac is None or not hmac.compare_digest(expected, mac):
            raise ForgedResponse("the server's answer does not carry a valid MAC")


    def _working_key(self, ksn: bytes, usage: dukpt.KeyUsage) -> bytes:
        initial_key_id, counter = dukpt.split_ksn(ksn)
        return dukpt.derive(self._ladder.derivation_key(ksn), usage,
                            dukpt.counter_seed(initial_key_id, counter))


def _cmac(key: bytes, data: bytes) -> bytes:
    mac = CMAC(AES(key))
    mac.update(data)
    return mac.finalize()
