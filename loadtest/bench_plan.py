"""What a bench run is made of: its options, the plan of runs, and the state they share (read by
loadtest.bench, which runs them, and loadtest.bench_report, which checks and reports them)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

from hdfpay.config import Settings
from loadtest.bench_keys import BenchKeys
from loadtest.bench_load import first_approvable

HOT_CARD_COUNT = 10
# Open-loop runs at these fractions of the highest closed-loop e2e tps (issue 16 §3).
OPEN_LOOP_LOAD_FRACTIONS = (0.25, 0.50, 0.75)
HALF_LOAD_FRACTION = 0.50             # the one the last line quotes
# The seed's linearity: a seed of cards / this many, timed before the real one.
SEED_LINEARITY_SCALE = 10


@dataclasses.dataclass(frozen=True)
class BenchOptions:
    cards: int
    seconds: int
    concurrency: list[int]
    output: str


@dataclasses.dataclass(frozen=True)
class Run:
    """One pair of runs (pgbench, then end to end): MACs on (the server checks them, the load
    generator signs, pgbench passes the KSN) or off; the server's per-request metrics on or off
    (pgbench's work is the same either way)."""
    concurrency: int
    hot: bool = False
    mac: bool = True
    metrics: bool = True
    # The server's group commit (authorizer/group_commit.py) on, or one commit per message.
    group_commit: bool = True

    @property
    def plain(self) -> bool:
        """MACs and metrics on, uniform cards: as production runs; the limit is measured beside."""
        return self.mac and self.metrics and self.group_commit and not self.hot


def bench_plan(concurrencies: list[int]) -> list[Run]:
    """Each concurrency with MACs and metrics; then at the highest, metrics off right after the
    normal run (the metrics cost, likely the smaller, compares neighbours), MACs off, hot cards;
    last, uniform and hot cards again with one commit per message (group commit off)."""
    top = max(concurrencies)
    return [Run(c) for c in concurrencies] + [Run(top, metrics=False), Run(top, mac=False),
                                              Run(top, hot=True), Run(top, group_commit=False),
                                              Run(top, hot=True, group_commit=False)]


@dataclasses.dataclass
class Bench:
    """What the runs share: the database, the tools, the mix, and the results so far."""
    dsn: str
    pgbench: Path
    workdir: Path
    own_cluster: bool
    settings: Settings
    options: BenchOptions
    seconds: int
    business_time: dt.datetime | None = None    # the demo's moment, set once migrated
    school_year: int = 0
    hot_cards: list[int] = dataclasses.field(
        default_factory=lambda: first_approvable(HOT_CARD_COUNT))
    keys: BenchKeys | None = None
    server_pid: int = 0
    portal_url: str = ""                        # the students' space of the server under test
    seed_s: float = 0.0
    seed_small: dict = dataclasses.field(default_factory=dict)   # the linearity check's seed
    postmaster: int | None = None               # PostgreSQL's, when local: its CPU is measured
    merchant_account_id: int = 0                # the minimal debit's journal rows credit it
    postgres_version: str = ""
    wal_ready_bytes: int = 0                    # WAL segments ready before the runs
    runs: list[dict] = dataclasses.field(default_factory=list)
    mac_cost: dict = dataclasses.field(default_factory=dict)
    metrics_cost: dict = dataclasses.field(default_factory=dict)
    group_commit_gain: dict = dataclasses.field(default_factory=dict)
    open_loop: list[dict] = dataclasses.field(default_factory=list)
    journal_footprint: dict = dataclasses.field(default_factory=dict)   # bytes per message
