"""WAL segments made ready before they are needed.

When PostgreSQL's write-ahead log reaches the end of its last segment and no recycled segment is
waiting, it creates the next one: 16 MB written with zeros and flushed while it holds the WAL
write lock, so every commit in the cluster waits. Measured in `hdfpay bench` on this machine: 105
to 169 ms per new segment, the hard stalls of the open-loop runs (an approval at 25 % of the
maximum rate waiting 130-170 ms). A checkpoint recycles the segments it no longer needs into
future ones, keeping at least min_wal_size of them (deploy/postgresql/hdfpay.conf,
ledger/embedded.py: 1 GB), so a server that has run a while creates none. A new cluster has not:
`reserve_wal` writes that much WAL once, then checkpoints, so that the segments are there before
the first purchase (the bench calls it after its seed).
"""

from __future__ import annotations

import asyncpg

# The end of the current segment: a tiny WAL record, then a switch to the next segment.
_NEXT_SEGMENT_SQL = "SELECT pg_logical_emit_message(false, 'hdfpay.wal_reserve', ''), " \
                    "pg_switch_wal()"
# Segments in pg_wal after the one being written: recycled ones, ready.
_READY_SEGMENTS_SQL = """
SELECT count(*) FROM pg_ls_waldir()
 WHERE name ~ '^[0-9A-F]{24}$' AND name > pg_walfile_name(pg_current_wal_insert_lsn())
"""


async def wal_segment_bytes(conn: asyncpg.Connection) -> int:
    return await conn.fetchval("SELECT pg_size_bytes(current_setting('wal_segment_size'))")


async def ready_wal_segments(conn: asyncpg.Connection) -> int:
    """How many segments wait, recycled, after the one being written (needs pg_ls_waldir)."""
    return await conn.fetchval(_READY_SEGMENTS_SQL)


async def reserve_wal(conn: asyncpg.Connection, reserve_bytes: int) -> int:
    """Make about `reserve_bytes` of WAL segments ready (a superuser's work: pg_switch_wal,
    CHECKPOINT); the segments ready afterwards. The server keeps at most its min_wal_size of
    them: fewer on a server configured below `reserve_bytes`."""
    segments = -(-reserve_bytes // await wal_segment_bytes(conn))
    for _ in range(segments):
        await conn.execute(_NEXT_SEGMENT_SQL)
    await conn.execute("CHECKPOINT")
    return await ready_wal_segments(conn)
