"""The start-of-year reload of every beneficiary with rights, by programme amounts.

Set-based and chunked: each chunk is one call of bulk_reload_chunk() (ledger/sql/functions), one
round trip and one transaction for up to BULK_RELOAD_CHUNK_ROWS beneficiaries. A crash loses at
most the chunk in progress; the next run resumes the open run where its last chunk committed.
Each beneficiary is credited at most once per school year (reference 'bulk:<year>:<id on 12
digits>'), so running again credits only those renewed since. A beneficiary who already had the
year's credit from a manual reload without an explicit reference (ledger.reload, sql/functions/reload_wallet.sql)
is skipped, and that manual reload is refused after the bulk one: the year's credit is made once,
whichever path comes first. Manual reloads with an explicit reference (corrections) do not count.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable

import asyncpg

from ledger.audit import append_audit
from ledger.programmes import missing_amounts

BULK_RELOAD_CHUNK_ROWS = 20_000
MAX_BULK_RELOAD_CHUNK_ROWS = 200_000
# Cursor moves forward each chunk, so a run ends; this bounds a single call anyway.
MAX_CHUNKS_PER_CALL = 100_000
# pg_try_advisory_lock(key, school_year): one process at a time works on a year's run.
BULK_RELOAD_LOCK_KEY = 0x4844_5242  # "HDRB"


class BulkReloadRefused(ValueError):
    """The run cannot start or go on: closed school year, missing amounts, already running."""


@dataclass(frozen=True)
class BulkReloadRun:
    id: int
    school_year: int
    started_by: str
    started_at: object
    finished_at: object
    amounts: dict
    beneficiaries_total: int
    after_beneficiary_id: int
    chunks_done: int
    beneficiaries_seen: int
    wallets_credited: int
    wallets_opened: int
    without_amount: int
    credited_cents: int
    fee_recovered_cents: int

    @property
    def finished(self) -> bool:
        return self.finished_at is not None

    def as_json(self) -> dict:
        return {k: (v.isoformat() if hasattr(v, "isoformat") else v)
                for k, v in self.__dict__.items()} | {"finished": self.finished}


def _run(row: asyncpg.Record) -> BulkReloadRun:
    values = dict(row)
    values["amounts"] = json.loads(values["amounts"]) if isinstance(values["amounts"], str) \
        else values["amounts"]
    return BulkReloadRun(**values)


async def latest_run(conn: asyncpg.Connection, school_year: int) -> BulkReloadRun | None:
    row = await conn.fetchrow("SELECT * FROM bulk_reload_runs WHERE school_year = $1"
                              " ORDER BY id DESC LIMIT 1", school_year)
    return None if row is None else _run(row)


async def get_run(conn: asyncpg.Connection, run_id: int) -> BulkReloadRun | None:
    row = await conn.fetchrow("SELECT * FROM bulk_reload_runs WHERE id = $1", run_id)
    return None if row is None else _run(row)


async def check_bulk_reload(conn: asyncpg.Connection, school_year: int) -> None:
    """Raise BulkReloadRefused if a run of `school_year` could not start or resume now."""
    closed, closes_at = await conn.fetchrow(
        "SELECT business_now() >= wallet_closes_at($1), business_time_text(wallet_closes_at($1))",
        school_year)
    if closed:
        raise BulkReloadRefused(f"the wallets of school year {school_year}-{school_year + 1} "
                                f"closed on {closes_at}: nothing can be reloaded")
    if await conn.fetchval("SELECT EXISTS (SELECT 1 FROM bulk_reload_runs WHERE school_year = $1"
                           " AND finished_at IS NULL)", school_year):
        return
    missing = await missing_amounts(conn, school_year)
    if missing:
        listed = ", ".join(f"{p} ({n} beneficiaries)" for p, n in missing)
        raise BulkReloadRefused(f"no amount for school year {school_year} and programme(s) "
                                f"{listed}: set them first ('hdfpay programmes set')")


async def start_or_resume(conn: asyncpg.Connection, school_year: int,
                          actor: str) -> tuple[BulkReloadRun, bool]:
    """The year's open run (resumed: True), or a new one with today's amounts. Audited."""
    async with conn.transaction():
        row = await conn.fetchrow("SELECT * FROM bulk_reload_runs WHERE school_year = $1"
                                  " AND finished_at IS NULL FOR UPDATE", school_year)
        await check_bulk_reload(conn, school_year)
        if row is not None:
            run = _run(row)
            await append_audit(conn, actor=actor, action="reload.bulk_resume",
                               subject=f"school_year:{school_year}",
                               after={"run": run.id, "after_beneficiary_id": run.after_beneficiary_id,
                                      "chunks_done": run.chunks_done})
            return run, True
        row = await conn.fetchrow(
            """
            INSERT INTO bulk_reload_runs (school_year, started_by, started_at, amounts, beneficiaries_total)
            SELECT $1, $2, business_now(),
                   coalesce((SELECT jsonb_object_agg(programme, amount_cents) FROM reload_programmes
                              WHERE school_year = $1), '{}'::jsonb),
                   (SELECT count(*) FROM rights WHERE school_year = $1)
            RETURNING *
            """, school_year, actor)
        run = _run(row)
        await append_audit(conn, actor=actor, action="reload.bulk_start",
                           subject=f"school_year:{school_year}",
                           after={"run": run.id, "amounts": run.amounts,
                                  "beneficiaries_total": run.beneficiaries_total})
        return run, False


async def _replan_everywhere(conn: asyncpg.Connection) -> None:
    """Statistics for the wallets just opened. ANALYZE also invalidates every session's cached
    plans on these tables: a server connection that planned its statements on a near-empty
    accounts table (a fresh install: a sequential scan is cheapest on one page) re-plans now,
    instead of scanning every wallet per purchase until autovacuum's next ANALYZE. Once, after
    the first chunk that opened wallets: the step from empty is what turns a plan upside down."""
    await conn.execute("SELECT refresh_wallet_statistics()")   # as the owner: see its file


async def run_bulk_reload(conn: asyncpg.Connection, school_year: int, *, actor: str,
                          chunk_rows: int = BULK_RELOAD_CHUNK_ROWS, max_chunks: int | None = None,
                          progress: Callable[[BulkReloadRun], None] | None = None) -> BulkReloadRun:
    """Start or resume the year's run and work through it, chunk by chunk, each committed on
    its own. `max_chunks` stops early (the run stays open, to be resumed); `progress` is called
    with the run after each chunk."""
    if not 1 <= chunk_rows <= MAX_BULK_RELOAD_CHUNK_ROWS:
        raise BulkReloadRefused(f"chunk size is 1 to {MAX_BULK_RELOAD_CHUNK_ROWS} beneficiaries")
    if not await conn.fetchval("SELECT pg_try_advisory_lock($1::integer, $2::integer)",
                               BULK_RELOAD_LOCK_KEY, school_year):
        raise BulkReloadRefused(f"a bulk reload of school year {school_year} is running in "
                                f"another session")
    try:
        run, _ = await start_or_resume(conn, school_year, actor)
        if progress:
            progress(run)
        limit = MAX_CHUNKS_PER_CALL if max_chunks is None else max_chunks
        done, analysed = 0, False
        while not run.finished and done < limit:
            chunk = await conn.fetchrow("SELECT * FROM bulk_reload_chunk($1, $2, $3)",
                                        run.id, chunk_rows, actor)
            done += 0 if chunk["finished"] else 1
            run = await get_run(conn, run.id)
            if chunk["wallets_opened"] and not analysed:
                await _replan_everywhere(conn)
                analysed = True
            if progress:
                progress(run)
        return run
    except asyncpg.CheckViolationError as exc:
        raise BulkReloadRefused(str(exc)) from None
    finally:
        if not conn.is_closed():
            await conn.execute("SELECT pg_advisory_unlock($1::integer, $2::integer)",
                               BULK_RELOAD_LOCK_KEY, school_year)
