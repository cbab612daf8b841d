"""Who sent a terminal request. The one layer that terminal security (MAC, DUKPT, replay) replaces.

Today the terminal names itself in a header and is believed: the endpoint is only for loopback
and trusted networks until MAC verification lands.
"""

from __future__ import annotations

import re
from typing import Mapping, Protocol

from terminal_protocol.transport import TERMINAL_ID_HEADER

_TERMINAL_ID = re.compile(r"^[A-Z0-9-]{4,32}$")


class IdentificationError(ValueError):
    """The request does not say which terminal sent it (code 30) or cannot prove it (code 63)."""

    def __init__(self, rc: str, detail: str) -> None:
        super().__init__(detail)
        self.rc = rc


class TerminalIdentifier(Protocol):
    def identify(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> str:
        """The terminal id the request is from; raises IdentificationError."""


class DeclaredTerminalIdentifier:
    """Believes the terminal id header (no authentication yet)."""

    def identify(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> str:
        terminal_id = headers.get(TERMINAL_ID_HEADER, "")
        if not _TERMINAL_ID.match(terminal_id):
            raise IdentificationError("30", f"missing or malformed {TERMINAL_ID_HEADER} header")
        return terminal_id
