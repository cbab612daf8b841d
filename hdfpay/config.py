"""Settings from the environment, each limit a named value with its unit."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping
from urllib.parse import urlsplit

from authorizer.card_gate import MAX_IN_FLIGHT_PER_CARD
from ledger.bulk_reload import BULK_RELOAD_CHUNK_ROWS, MAX_BULK_RELOAD_CHUNK_ROWS


LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")
DEFAULT_OPS_PORT = 8081
DEFAULT_PORTAL_PORT = 8082
DEFAULT_WORKER_METRICS_PORT = 9180   # worker i of `serve --workers` serves /metrics on this + i
MAX_WORKERS = 64


# Rules that were settings and are now data the ledger holds (table rules): a site that still
# sets one is told, rather than silently getting the ledger's value.
RETIRED_VARIABLES = {"HDFPAY_MAX_PURCHASE_AMOUNT_CENTS": "--max-purchase EUROS",
                     "HDFPAY_RENEWAL_OPENS": "--renewal-opens MM-DD"}


class ConfigError(ValueError):
    """A setting is present but unusable; the message names it."""


def int_from_env(name: str, default: int, minimum: int, maximum: int,
                 environ: Mapping[str, str] = os.environ) -> int:
    """A bounded integer setting; absent or empty means the default."""
    raw = environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if not minimum <= value <= maximum:
        raise ConfigError(f"{name} must be between {minimum} and {maximum}, got {value}")
    return value


@dataclass(frozen=True)
class Settings:
    database_url: str | None
    host: str
    port: int
    db_pool_size: int
    pool_acquire_timeout_ms: int
    db_statement_timeout_ms: int
    # Beyond this many requests in progress the server answers 91 at once instead of queueing.
    max_in_flight_requests: int
    # Above pool acquisition plus statement timeout, below the terminal's 5 s.
    request_timeout_ms: int
    # "dukpt" (MAC'd, replay-proof terminal messages) or "none" (loopback benchmarking only).
    terminal_authentication: str
    # Off only to measure what metrics cost on the hot path (hdfpay bench).
    metrics_enabled: bool
    # After SIGTERM, how long /readyz says no while the server still serves, so that the load
    # balancer stops sending before the listener closes.
    drain_notice_ms: int
    tls_cert_file: str | None
    tls_key_file: str | None
    allow_plain_http: bool
    # The operator listener (login, accounts, region operations): its own address and pool, so
    # that bulk work never holds up a till. ops_port None: DEFAULT_OPS_PORT, or a free port
    # when the terminal listener takes one (port 0: tests, the demo), so that throwaway
    # servers never collide on a fixed port.
    ops_host: str = "127.0.0.1"
    ops_port: int | None = None
    ops_db_pool_size: int = 4
    # The students' web space: its own listener and pool, like the operators'.
    portal_host: str = "127.0.0.1"
    portal_port: int | None = None
    portal_db_pool_size: int = 4
    # Where students reach the portal from outside (e-mailed links point there); None: the
    # listener's own address (loopback: tests, the demo).
    portal_public_url: str | None = None
    # Applicants' photos: outside any web root, the server's user only (portal/photos.py).
    photo_dir: Path = field(default_factory=lambda: default_photo_dir())
    # Purchases of one card in progress at once (authorizer/card_gate.py); 91 "card busy" beyond.
    max_in_flight_per_card: int = MAX_IN_FLIGHT_PER_CARD
    # `serve` as this many processes on the same ports (hdfpay/workers.py); each also serves its
    # own /metrics on 127.0.0.1:worker_metrics_port + its index.
    workers: int = 1
    worker_metrics_port: int = DEFAULT_WORKER_METRICS_PORT
    # Set for a worker: its listeners share their ports with the other workers (SO_REUSEPORT).
    reuse_port: bool = False
    # Beneficiaries per committed chunk of a bulk reload started from the operator listener (the
    # API or the back office's page), as 'hdfpay reload bulk --chunk-rows'.
    bulk_reload_chunk_rows: int = BULK_RELOAD_CHUNK_ROWS
    # HDFPAY_GROUP_COMMIT=off: one call and one commit per terminal message (authorizer.group_commit).
    group_commit: bool = True

    @property
    def ops_listen_port(self) -> int:
        if self.ops_port is not None:
            return self.ops_port
        return 0 if self.port == 0 else DEFAULT_OPS_PORT

    @property
    def portal_listen_port(self) -> int:
        if self.portal_port is not None:
            return self.portal_port
        return 0 if self.port == 0 else DEFAULT_PORTAL_PORT

    def check_transport(self) -> None:
        """Plain HTTP and unauthenticated terminals only on loopback, unless explicitly allowed;
        the operator listener (passwords, tokens) under the same rule."""
        loopback = self.host in LOOPBACK_HOSTS
        if self.terminal_authentication not in ("dukpt", "none"):
            raise ConfigError("HDFPAY_TERMINAL_AUTHENTICATION must be 'dukpt' or 'none'")
        if self.terminal_authentication == "none" and (not loopback or self.allow_plain_http):
            raise ConfigError("HDFPAY_TERMINAL_AUTHENTICATION=none is refused off loopback and "
                              "behind a proxy (HDFPAY_ALLOW_PLAIN_HTTP): anyone reaching the "
                              "server could debit cards")
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ConfigError("set both HDFPAY_TLS_CERT and HDFPAY_TLS_KEY, or neither")
        if not self.tls_cert_file and not loopback and not self.allow_plain_http:
            raise ConfigError(f"listening on {self.host} without TLS: set HDFPAY_TLS_CERT and "
                              "HDFPAY_TLS_KEY (or HDFPAY_ALLOW_PLAIN_HTTP=1 behind a TLS proxy)")
        if (not self.tls_cert_file and self.ops_host not in LOOPBACK_HOSTS
                and not self.allow_plain_http):
            raise ConfigError(f"operator listener on {self.ops_host} without TLS: set "
                              "HDFPAY_TLS_CERT and HDFPAY_TLS_KEY (or HDFPAY_ALLOW_PLAIN_HTTP=1 "
                              "behind a TLS proxy)")
        if (not self.tls_cert_file and self.portal_host not in LOOPBACK_HOSTS
                and not self.allow_plain_http):
            raise ConfigError(f"students' listener on {self.portal_host} without TLS: set "
                              "HDFPAY_TLS_CERT and HDFPAY_TLS_KEY (or HDFPAY_ALLOW_PLAIN_HTTP=1 "
                              "behind a TLS proxy)")
        ports = [p for p in (self.port, self.ops_listen_port, self.portal_listen_port) if p != 0]
        if len(ports) != len(set(ports)):
            raise ConfigError("HDFPAY_PORT, HDFPAY_OPS_PORT and HDFPAY_PORTAL_PORT need a port"
                              " each: the terminal, operator and students' listeners")

    @classmethod
    def from_env(cls) -> "Settings":
        for retired, rule in RETIRED_VARIABLES.items():
            if os.environ.get(retired):
                raise ConfigError(f"{retired} is no longer read: the ledger holds this rule for "
                                  f"every server; set it with 'hdfpay rules set {rule}'")
        return cls(
            database_url=os.environ.get("DATABASE_URL") or None,
            host=os.environ.get("HDFPAY_HOST", "127.0.0.1"),
            port=int_from_env("HDFPAY_PORT", 8080, 0, 65535),
            db_pool_size=int_from_env("HDFPAY_DB_POOL_SIZE", 8, 1, 100),
            pool_acquire_timeout_ms=int_from_env("HDFPAY_POOL_ACQUIRE_TIMEOUT_MS", 1000, 1, 60_000),
            db_statement_timeout_ms=int_from_env("HDFPAY_DB_STATEMENT_TIMEOUT_MS", 2000, 1, 60_000),
            max_in_flight_requests=int_from_env("HDFPAY_MAX_IN_FLIGHT_REQUESTS", 512, 1, 100_000),
            request_timeout_ms=int_from_env("HDFPAY_REQUEST_TIMEOUT_MS", 4000, 1, 60_000),
            terminal_authentication=os.environ.get("HDFPAY_TERMINAL_AUTHENTICATION", "dukpt"),
            metrics_enabled=os.environ.get("HDFPAY_METRICS", "on") != "off",
            drain_notice_ms=int_from_env("HDFPAY_DRAIN_NOTICE_MS", 5000, 0, 60_000),
            tls_cert_file=os.environ.get("HDFPAY_TLS_CERT") or None,
            tls_key_file=os.environ.get("HDFPAY_TLS_KEY") or None,
            allow_plain_http=os.environ.get("HDFPAY_ALLOW_PLAIN_HTTP", "") == "1",
            ops_host=os.environ.get("HDFPAY_OPS_HOST") or "127.0.0.1",
            ops_port=(int_from_env("HDFPAY_OPS_PORT", DEFAULT_OPS_PORT, 0, 65535)
                      if os.environ.get("HDFPAY_OPS_PORT") else None),
            ops_db_pool_size=int_from_env("HDFPAY_OPS_DB_POOL_SIZE", 4, 1, 100),
            portal_host=os.environ.get("HDFPAY_PORTAL_HOST") or "127.0.0.1",
            portal_port=(int_from_env("HDFPAY_PORTAL_PORT", DEFAULT_PORTAL_PORT, 0, 65535)
                         if os.environ.get("HDFPAY_PORTAL_PORT") else None),
            portal_db_pool_size=int_from_env("HDFPAY_PORTAL_DB_POOL_SIZE", 4, 1, 100),
            portal_public_url=_public_url(os.environ.get("HDFPAY_PORTAL_PUBLIC_URL")),
            photo_dir=default_photo_dir(),
            max_in_flight_per_card=int_from_env("HDFPAY_MAX_IN_FLIGHT_PER_CARD",
                                                MAX_IN_FLIGHT_PER_CARD, 1, 1_000),
            workers=int_from_env("HDFPAY_WORKERS", 1, 1, MAX_WORKERS),
            worker_metrics_port=int_from_env("HDFPAY_WORKER_METRICS_PORT",
                                             DEFAULT_WORKER_METRICS_PORT, 1, 65535 - MAX_WORKERS),
            bulk_reload_chunk_rows=int_from_env("HDFPAY_BULK_RELOAD_CHUNK_ROWS",
                                                BULK_RELOAD_CHUNK_ROWS, 1,
                                                MAX_BULK_RELOAD_CHUNK_ROWS),
            group_commit=os.environ.get("HDFPAY_GROUP_COMMIT", "on") != "off",
        )


def _public_url(text: str | None) -> str | None:
    """An absolute https URL (http only for loopback), without a trailing slash."""
    if not text:
        return None
    url = text.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ConfigError(f"HDFPAY_PORTAL_PUBLIC_URL must be an absolute URL such as "
                          f"https://monespace.example.fr, got {text!r}")
    if parts.scheme == "http" and parts.hostname not in LOOPBACK_HOSTS:
        raise ConfigError("HDFPAY_PORTAL_PUBLIC_URL must use https: e-mailed links carry "
                          "single-use secrets")
    return url


def default_photo_dir() -> Path:
    """HDFPAY_PHOTO_DIR, else beside the embedded cluster's default place."""
    if explicit := os.environ.get("HDFPAY_PHOTO_DIR"):
        return Path(explicit)
    if os.geteuid() == 0:
        return Path("/var/lib/hdfpay/photos")
    xdg = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return Path(xdg) / "hdfpay" / "photos"
