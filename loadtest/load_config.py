"""What a locust run of these scenarios needs to know, read from HDFPAY_LOADTEST_* variables.

Environment variables rather than locust options, so that `hdfpay loadtest` (which provisions
everything and sets them) and a hand-typed `locust -f loadtest/peak.py ...` against a staging
authorizer configure the users the same way, and the key file's path never appears on a command
line. Read once per locust process (`load_config()`), lazily, so that `locust --help` or `--list`
works without any of them.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from hdfpay.config import ConfigError, int_from_env

KEY_FILE_VARIABLE = "HDFPAY_LOADTEST_KEY_FILE"
TERMINALS_VARIABLE = "HDFPAY_LOADTEST_TERMINALS"
JOURNAL_DIR_VARIABLE = "HDFPAY_LOADTEST_JOURNAL_DIR"
CARDS_VARIABLE = "HDFPAY_LOADTEST_CARDS"
MAX_PURCHASE_VARIABLE = "HDFPAY_LOADTEST_MAX_PURCHASE_CENTS"
HOT_CARD_VARIABLE = "HDFPAY_LOADTEST_HOT_CARD"
THINK_TIME_VARIABLE = "HDFPAY_LOADTEST_THINK_MS"
COUNTER_START_VARIABLE = "HDFPAY_LOADTEST_COUNTER_START"
RANDOM_SEED_VARIABLE = "HDFPAY_LOADTEST_RANDOM_SEED"

DEFAULT_CARDS = 1000                      # `hdfpay seed`'s default region
DEFAULT_MAX_PURCHASE_CENTS = 300_00       # the ledger's default purchase limit (table rules)
DEFAULT_HOT_CARD = 4                      # the lowest demo beneficiary whose card is approved
MAX_THINK_MS = 600_000                    # a cashier never waits ten minutes between sales
MAX_COUNTER_START = 0xFFFF_0000           # leaves room below the 32-bit DUKPT counter
PARTNER_CATEGORIES = ("BOOKSHOP", "EQUIPMENT")


class LoadConfigError(ValueError):
    """A variable is missing or unusable; the message names it."""


@dataclass(frozen=True)
class TerminalSlot:
    """A terminal the users may take, and what its shop sells (None: unknown, mixed baskets)."""
    terminal_id: str
    category: str | None = None


@dataclass(frozen=True)
class LoadConfig:
    key_file: Path                        # 0600 JSON of TR-31 blocks (loadtest.bench_keys)
    terminals: tuple[TerminalSlot, ...]   # in the order users take them
    journal_dir: Path | None              # where each locust process writes the answers it got
    cards: int                            # demo beneficiaries 1..cards exist
    max_purchase_cents: int               # the server's per-purchase ceiling (61 above it)
    hot_card: int                         # the hot-card scenario's beneficiary number
    think_ms: int                         # a cashier's mean pause between two sales
    counter_start: int                    # every terminal's KSN counters start above this
    random_seed: str | None               # reproducible draws when set


def load_config_from(environ: Mapping[str, str]) -> LoadConfig:
    key_file = environ.get(KEY_FILE_VARIABLE)
    if not key_file:
        raise LoadConfigError(f"{KEY_FILE_VARIABLE} is not set: the users need the terminals' "
                              f"keys (`hdfpay loadtest` sets it up)")
    key_path = Path(key_file)
    try:
        known = sorted(json.loads(key_path.read_text()))
    except (OSError, ValueError) as exc:
        raise LoadConfigError(f"{KEY_FILE_VARIABLE}: cannot read {key_path}: {exc}") from None
    journal = environ.get(JOURNAL_DIR_VARIABLE)
    return LoadConfig(
        key_file=key_path,
        terminals=_terminals(environ.get(TERMINALS_VARIABLE, ""), known),
        journal_dir=Path(journal) if journal else None,
        cards=_int(environ, CARDS_VARIABLE, DEFAULT_CARDS, 1, 100_000_000),
        max_purchase_cents=_int(environ, MAX_PURCHASE_VARIABLE, DEFAULT_MAX_PURCHASE_CENTS,
                                1, 10_000_000),
        hot_card=_int(environ, HOT_CARD_VARIABLE, DEFAULT_HOT_CARD, 1, 100_000_000),
        think_ms=_int(environ, THINK_TIME_VARIABLE, 0, 0, MAX_THINK_MS),
        counter_start=_int(environ, COUNTER_START_VARIABLE, 0, 0, MAX_COUNTER_START),
        random_seed=environ.get(RANDOM_SEED_VARIABLE) or None,
    )


@functools.cache
def load_config() -> LoadConfig:
    """This process's configuration (the environment does not change during a run)."""
    return load_config_from(os.environ)


def terminals_variable(slots: list[TerminalSlot]) -> str:
    """The value of HDFPAY_LOADTEST_TERMINALS: `ID:CATEGORY,ID:CATEGORY,...`."""
    return ",".join(f"{s.terminal_id}:{s.category}" if s.category else s.terminal_id
                    for s in slots)


def _terminals(text: str, known: list[str]) -> tuple[TerminalSlot, ...]:
    """The listed terminals (each must have a key), or every terminal of the key file."""
    if not text.strip():
        return tuple(TerminalSlot(t) for t in known)
    slots = []
    for item in text.split(","):
        terminal_id, _, category = item.strip().partition(":")
        if terminal_id not in known:
            raise LoadConfigError(f"{TERMINALS_VARIABLE}: no key for terminal {terminal_id!r}")
        if category and category not in PARTNER_CATEGORIES:
            raise LoadConfigError(f"{TERMINALS_VARIABLE}: category {category!r} is not one of "
                                  f"{', '.join(PARTNER_CATEGORIES)}")
        slots.append(TerminalSlot(terminal_id, category or None))
    if len({s.terminal_id for s in slots}) != len(slots):
        raise LoadConfigError(f"{TERMINALS_VARIABLE}: a terminal is listed twice (one user each)")
    return tuple(slots)


def _int(environ: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    try:
        return int_from_env(name, default, low, high, environ)
    except ConfigError as error:
        raise LoadConfigError(str(error)) from None
