"""Who sent a terminal request, proven before its content is parsed; and the answer's MAC.

DUKPT mode (the default): the request carries its terminal id, a KSN and an AES-CMAC over the
method, path, KSN and exact body (terminal_protocol/transport.py). The MAC is verified by the HSM
under the request key of that KSN; the ledger then checks, in the authorization's own round trip,
that the KSN's initial key belongs to that terminal and that its counter increased.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping, Protocol

from hsm.key_aliases import BDK_ID_BYTES, bdk_alias
from hsm.interface import Hsm, HsmError, UnknownKey, VerificationFailed
from ledger.authorization_store import MessageOrigin
from terminal_protocol.transport import (
    KSN_HEADER, KSN_HEX_CHARS, MAC_BYTES, MAC_HEADER, TERMINAL_ID_HEADER, request_mac_input,
    response_mac_input,
)

_TERMINAL_ID = re.compile(r"^[A-Z0-9-]{4,32}$")
_HEX = re.compile(r"^[0-9A-Fa-f]*$")


class AuthenticationError(ValueError):
    """Missing or malformed identity (code 30), or a MAC that does not verify (code 63)."""

    def __init__(self, rc: str, detail: str) -> None:
        super().__init__(detail)
        self.rc = rc


@dataclass(frozen=True)
class Authenticated:
    origin: MessageOrigin
    ksn: bytes | None = None


class TerminalAuthenticator(Protocol):
    def authenticate(self, method: str, path: str, headers: Mapping[str, str],
                     body: bytes) -> Authenticated:
        """Raises AuthenticationError."""

    def response_headers(self, request: Authenticated, status: int, body: bytes) -> dict[str, str]:
        """Headers proving the answer comes from the server."""


def _terminal_id(headers: Mapping[str, str]) -> str:
    terminal_id = headers.get(TERMINAL_ID_HEADER, "")
    if not _TERMINAL_ID.match(terminal_id):
        raise AuthenticationError("30", f"missing or malformed {TERMINAL_ID_HEADER} header")
    return terminal_id


def _hex_header(headers: Mapping[str, str], name: str, chars: int) -> bytes:
    value = headers.get(name, "")
    if len(value) != chars or not _HEX.match(value):
        raise AuthenticationError("30", f"missing or malformed {name} header ({chars} hex digits)")
    return bytes.fromhex(value)


class DukptMacAuthenticator:
    def __init__(self, hsm: Hsm) -> None:
        self._hsm = hsm

    def authenticate(self, method: str, path: str, headers: Mapping[str, str],
                     body: bytes) -> Authenticated:
        terminal_id = _terminal_id(headers)
        ksn = _hex_header(headers, KSN_HEADER, KSN_HEX_CHARS)
        mac = _hex_header(headers, MAC_HEADER, 2 * MAC_BYTES)
        try:
            self._hsm.verify_dukpt_request_mac(bdk_alias(ksn[:BDK_ID_BYTES]), ksn,
                                               request_mac_input(method, path, ksn, body), mac)
        except (VerificationFailed, UnknownKey):
            raise AuthenticationError("63", "message authentication failed") from None
        except HsmError as exc:
            raise AuthenticationError("63", f"message authentication failed: {exc}") from None
        origin = MessageOrigin(terminal_id, initial_key_id=ksn[:8],
                               ksn_counter=int.from_bytes(ksn[8:], "big"))
        return Authenticated(origin, ksn)

    def response_headers(self, request: Authenticated, status: int, body: bytes) -> dict[str, str]:
        assert request.ksn is not None
        mac = self._hsm.generate_dukpt_response_mac(
            bdk_alias(request.ksn[:BDK_ID_BYTES]), request.ksn,
            response_mac_input(request.ksn, status, body))
        return {MAC_HEADER: mac.hex().upper()}


class DeclaredTerminals:
    """Believes the terminal id header. Only for a server explicitly run without terminal
    authentication on loopback (benchmarking the cost of MACs)."""

    def authenticate(self, method: str, path: str, headers: Mapping[str, str],
                     body: bytes) -> Authenticated:
        return Authenticated(MessageOrigin(_terminal_id(headers)))

    def response_headers(self, request: Authenticated, status: int, body: bytes) -> dict[str, str]:
        return {}
