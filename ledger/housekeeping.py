"""What PostgreSQL's own housekeeping did between two moments: autovacuum and autoanalyze of each
table, and checkpoints. During a bench, autovacuum passes over the journal once a minute
(autovacuum_naptime): 1.3-2.2 s from its first table to its last, the analyze of authorizations
alone 0.2-0.4 s of CPU. On two shared cores that is felt in the latency of a run it falls into, so
the bench reports it beside each open-loop run (loadtest/bench.py)."""

from __future__ import annotations

import asyncpg

# pg_stat_user_tables' counters and pg_stat_bgwriter's (PostgreSQL 15) of one moment.
SNAPSHOT_SQL = """
SELECT 'autovacuum ' || relname, autovacuum_count FROM pg_stat_user_tables
UNION ALL
SELECT 'autoanalyze ' || relname, autoanalyze_count FROM pg_stat_user_tables
UNION ALL
SELECT 'checkpoint', checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter
"""


async def housekeeping_counts(conn: asyncpg.Connection) -> dict[str, int]:
    """Each table's autovacuum and autoanalyze counts, and the checkpoints, so far."""
    return {name: count for name, count in await conn.fetch(SNAPSHOT_SQL)}


def housekeeping_between(before: dict[str, int], after: dict[str, int]) -> list[str]:
    """What ran between two snapshots, e.g. ['autovacuum transfers', 'checkpoint'] (counters
    reach the statistics within about a second of the work's end)."""
    return sorted(name for name, count in after.items() if count > before.get(name, 0))
