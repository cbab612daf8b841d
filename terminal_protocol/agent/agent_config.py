"""The agent's configuration: a TOML file written by the installer, each key overridable by an
HDFPAY_TERMINAL_<KEY> environment variable. Errors name the key and its source.

```toml
server_url = "https://auth.hdfpay.example:8443"
terminal_id = "P0001-T01"
state_dir = "/var/lib/hdfpay-terminal"     # sealed keys and the journal
reader = "ACS ACR122U PICC Interface 00 00" # optional: the first reader otherwise
answer_timeout_ms = 5000
shop_name = "Librairie du Beffroi, Arras"   # optional: on the tickets (the terminal id otherwise)
receipt_printer = "/dev/usb/lp0"             # optional: an ESC/POS printer's device file
```
The key that seals the DUKPT state is never in this file: HDFPAY_TERMINAL_STATE_KEY (64 hex
digits), HDFPAY_TERMINAL_PASSPHRASE, or typed at the prompt.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping
from urllib.parse import urlsplit

from terminal_protocol.client import TERMINAL_TIMEOUT_MS

ENV_PREFIX = "HDFPAY_TERMINAL_"
LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")
DEFAULT_TILL_API_PORT = 8731
# The till's own guard against a mistyped amount (3000 for 30,00), not the region's rule: the
# ledger declines above its own limit (table rules, 300 € by default) whatever the till allows.
DEFAULT_MAX_SALE_CENTS = 300_00
DEFAULT_TAP_TIMEOUT_MS = 60_000

# key: (type, default, minimum, maximum); a default of None means required.
_INTEGERS = {
    "answer_timeout_ms": (TERMINAL_TIMEOUT_MS, 500, 30_000),
    "tap_timeout_ms": (DEFAULT_TAP_TIMEOUT_MS, 1_000, 600_000),
    "max_sale_cents": (DEFAULT_MAX_SALE_CENTS, 1, 10_000_000),
    "till_api_port": (DEFAULT_TILL_API_PORT, 1, 65_535),
}
_TEXTS = ("server_url", "terminal_id", "state_dir", "reader", "ca_file", "shop_name",
          "receipt_printer")
_REQUIRED = ("server_url", "terminal_id", "state_dir")


class AgentConfigError(ValueError):
    """A missing or unusable setting; the message says which and where."""


@dataclass(frozen=True)
class AgentConfig:
    server_url: str
    terminal_id: str
    state_dir: Path
    reader: str | None
    ca_file: str | None
    answer_timeout_ms: int
    tap_timeout_ms: int
    max_sale_cents: int
    till_api_port: int
    shop_name: str | None = None
    receipt_printer: str | None = None

    @property
    def keys_file(self) -> Path:
        return self.state_dir / "dukpt-state.sealed"

    @property
    def supervisor_pin_file(self) -> Path:
        return self.state_dir / "supervisor-pin.sealed"

    @property
    def journal_file(self) -> Path:
        return self.state_dir / "journal.sqlite"

    @classmethod
    def load(cls, path: Path | str | None, environ: Mapping[str, str] = os.environ) -> "AgentConfig":
        values: dict[str, object] = {}
        sources: dict[str, str] = {}
        if path is not None:
            try:
                values = tomllib.loads(Path(path).read_text())
            except FileNotFoundError:
                raise AgentConfigError(f"configuration file {path} not found") from None
            except tomllib.TOMLDecodeError as exc:
                raise AgentConfigError(f"{path}: {exc}") from None
            unknown = set(values) - set(_INTEGERS) - set(_TEXTS)
            if unknown:
                raise AgentConfigError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}")
            sources = {key: str(path) for key in values}
        for key in (*_TEXTS, *_INTEGERS):
            raw = environ.get(ENV_PREFIX + key.upper())
            if raw:
                values[key], sources[key] = raw, ENV_PREFIX + key.upper()
        for key in _REQUIRED:
            if not values.get(key):
                raise AgentConfigError(f"{key} is required (in the file or {ENV_PREFIX}{key.upper()})")
        settings = {key: _integer(key, values.get(key), sources.get(key), *bounds)
                    for key, bounds in _INTEGERS.items()}
        for key in _TEXTS:
            value = values.get(key)
            if value is not None and not isinstance(value, str):
                raise AgentConfigError(f"{key} ({sources[key]}) must be a string")
            settings[key] = value or None
        _check_url(settings["server_url"])
        return cls(**{**settings, "state_dir": Path(settings["state_dir"])})


def _integer(key: str, value: object, source: str | None, default: int, minimum: int,
             maximum: int) -> int:
    if value is None:
        return default
    try:
        number = int(value) if not isinstance(value, bool) else None
    except (TypeError, ValueError):
        number = None
    if number is None or not minimum <= number <= maximum:
        raise AgentConfigError(f"{key} ({source}) must be an integer from {minimum} to {maximum},"
                               f" got {value!r}")
    return number


def _check_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise AgentConfigError(f"server_url must be an http(s) URL, got {url!r}")
    if parts.scheme == "http" and parts.hostname not in LOOPBACK_HOSTS:
        raise AgentConfigError("server_url must use https beyond this machine (plain http is for"
                               " a server on loopback)")
