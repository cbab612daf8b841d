"""What PostgreSQL's own housekeeping did between two moments: autovacuum and autoanalyze of each
table, checkpoints, and new WAL segments. During a bench, autovacuum passes over the journal once
a minute (autovacuum_naptime): 1.3-2.2 s from its first table to its last, the analyze of
authorizations alone 0.2-0.4 s of CPU; a new WAL segment stops every commit for 105-169 ms. On
two shared cores both are felt in the latency of a run they fall into, so the bench reports them
beside each open-loop run (loadtest/bench.py)."""

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


# The WAL segment files: between two checkpoints their number grows only when PostgreSQL creates
# one (ledger/wal_reserve.py: 105-169 ms during which every commit waits).
WAL_FILES_SQL = "SELECT count(*) FROM pg_ls_waldir() WHERE name ~ '^[0-9A-F]{24}$'"
NEW_WAL_SEGMENT = "new WAL segment"


async def housekeeping_counts(conn: asyncpg.Connection) -> dict[str, int]:
    """Each table's autovacuum and autoanalyze counts, the checkpoints, and (for a role that may
    list pg_wal: a superuser, pg_monitor) the WAL segment files, so far."""
    counts = {name: count for name, count in await conn.fetch(SNAPSHOT_SQL)}
    try:
        counts[NEW_WAL_SEGMENT] = await conn.fetchval(WAL_FILES_SQL)
    except asyncpg.InsufficientPrivilegeError:
        pass
    return counts


def housekeeping_between(before: dict[str, int], after: dict[str, int]) -> list[str]:
    """What ran between two snapshots, e.g. ['autovacuum transfers', 'new WAL segment ×2']
    (counters reach the statistics within about a second of the work's end)."""
    grown = {name: count - before.get(name, 0) for name, count in after.items()
             if count > before.get(name, 0)}
    return [name if n == 1 else f"{name} ×{n}" for name, n in sorted(grown.items())]
