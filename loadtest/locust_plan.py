"""A load test's options and the state its steps share (read by loadtest.locust_runner, which
runs them, and loadtest.locust_checks, which checks what the scenario left)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

from hdfpay.config import Settings
from loadtest.bench_keys import BenchKeys

DEFAULT_CARDS = 100_000            # as `hdfpay bench`: a minute of peak leaves most wallets funded


@dataclasses.dataclass(frozen=True)
class LoadtestOptions:
    scenario: str
    users: int
    seconds: int
    cards: int = DEFAULT_CARDS
    output: str = "loadtest-results"
    think_ms: int = 0


@dataclasses.dataclass
class LoadRun:
    """What the steps share. `dsn`, `keys`, `workdir` and `server_pid` are what
    loadtest.bench's server helper reads."""
    options: LoadtestOptions
    settings: Settings
    dsn: str
    workdir: Path
    output: Path
    business_time: dt.datetime | None = None    # the demo's moment, set once migrated
    school_year: int = 0
    keys: BenchKeys | None = None
    categories: dict[str, str] = dataclasses.field(default_factory=dict)
    max_purchase_cents: int = 0          # the ledger's rule, read once the database is ready
    server_pid: int = 0
    portal_url: str = ""                  # the students' space (set with the server)
    student_dossiers: list[str] = dataclasses.field(default_factory=list)

    @property
    def terminals(self) -> list[str]:
        return self.keys.e2e_terminals
