"""A chaos run's options and what its steps gather (run by loadtest.chaos, printed and
written by loadtest.chaos_report)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from loadtest.chaos_setup import ChaosBank
from loadtest.chaos_till import TillTally
from loadtest.nemesis import FAULT_KINDS


@dataclass(frozen=True)
class ChaosOptions:
    seconds: int = 60
    terminals: int = 8
    cards: int = 500
    workers: int = 2
    seed: int = 17
    think_ms: int = 20
    faults: tuple[str, ...] = FAULT_KINDS
    output: str = "chaos-results"
    business_time: dt.datetime | None = None     # None: today if the wallets are open


@dataclass
class ChaosRun:
    """What the run gathered, for the report."""
    options: ChaosOptions
    bank: ChaosBank | None = None
    tally: TillTally = field(default_factory=TillTally)
    faults: list = field(default_factory=list)
    counts: dict = field(default_factory=dict)
    commands: dict = field(default_factory=dict)
    leaders: tuple[str | None, str | None] = (None, None)
    selling_s: float = 0.0
    settle_s: float = 0.0
    problems: list[str] = field(default_factory=list)
