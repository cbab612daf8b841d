"""Benchmark of the start-of-year bulk reload: `python -m loadtest.bench_bulk_reload`.

On a throwaway database (a private cluster in a temporary directory, or a fresh
`hdfpay_bench_reload` database on DATABASE_URL's server): 300,000 beneficiaries with rights for
the school year (a tenth with an empty wallet already, 1 % with a pending fee), the programme
amounts; then, measured in the same run:
  - the baseline: one plain INSERT … SELECT of as many rows into a copy of `transfers` (same
    columns and indexes), the least any reload writing one transfer per wallet must pay;
  - the bulk reload (ledger.bulk_reload), with its progress on stderr;
  - the same again, which must credit nothing.
Then the ledger is checked and the figures written as JSON. The goal: 300,000 wallets in 30 s.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from pathlib import Path
from zoneinfo import ZoneInfo

import asyncpg
import uvloop

from hdfpay.config import Settings
from ledger.database import connection, throwaway_database
from ledger.bulk_reload import BULK_RELOAD_CHUNK_ROWS, run_bulk_reload
from ledger.clock import pin_clock
from ledger.demo_region import ESTABLISHMENTS
from ledger.invariants import ledger_violations
from ledger.migrate import migrate

BENCH_DATABASE = "hdfpay_bench_reload"
DEFAULT_BENEFICIARIES = 300_000
GOAL_SECONDS = 30.0
SCHOOL_YEAR = 2026
BUSINESS_TIME = dt.datetime(SCHOOL_YEAR, 8, 25, 10, 0, tzinfo=ZoneInfo("Europe/Paris"))
AMOUNTS_CENTS = {"BOOKS": 100_00, "EQUIPMENT": 150_00}
EXISTING_WALLET_EVERY = 10     # beneficiary i % 10 == 0 has an empty wallet for the year already
PENDING_FEE_EVERY = 100        # i % 100 == 1 owes a replacement fee
PENDING_FEE_CENTS = 5_00
ACTOR = "bench:bulk-reload"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench_bulk_reload",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--beneficiaries", type=int, default=DEFAULT_BENEFICIARIES)
    parser.add_argument("--chunk-rows", type=int, default=BULK_RELOAD_CHUNK_ROWS)
    parser.add_argument("--output", default="bench-bulk-reload.json", help="JSON results file")
    args = parser.parse_args(argv)
    if args.beneficiaries < PENDING_FEE_EVERY:
        parser.error(f"--beneficiaries must be at least {PENDING_FEE_EVERY}")
    results = uvloop.run(_bench_on_throwaway(Settings.from_env(), args.beneficiaries,
                                             args.chunk_rows))
    Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
    print(f"results written to {args.output}")
    r = results
    print(f"wallets={r['wallets_credited']} seconds={r['bulk_reload_s']} "
          f"wallets_per_s={r['wallets_per_s']} second_run_s={r['second_run_s']} "
          f"baseline_insert_s={r['baseline_insert_s']} ratio={r['ratio_to_baseline']} "
          f"goal={'met' if r['goal_met'] else 'MISSED'}")
    return 0 if not r["problems"] else 1


async def _bench_on_throwaway(settings: Settings, beneficiaries: int, chunk_rows: int) -> dict:
    async with throwaway_database(settings.database_url, BENCH_DATABASE) as dsn:
        return await _bench(dsn, beneficiaries, chunk_rows)


async def _bench(dsn: str, beneficiaries: int, chunk_rows: int) -> dict:
    async with connection(dsn) as conn:
        await migrate(conn)
        await pin_clock(conn, BUSINESS_TIME)
        started = time.perf_counter()
        await _seed(conn, beneficiaries)
        seed_s = time.perf_counter() - started
        print(f"seeded {beneficiaries} beneficiaries with rights for {SCHOOL_YEAR}-{SCHOOL_YEAR + 1} "
              f"in {seed_s:.1f} s", file=sys.stderr)
        await conn.execute("VACUUM ANALYZE")
        if await conn.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"):
            await conn.execute("CHECKPOINT")
        baseline_s = await _baseline(conn)
        print(f"baseline: INSERT … SELECT of {beneficiaries} transfer rows in {baseline_s:.2f} s",
              file=sys.stderr)

        def progress(run) -> None:
            print(f"\r  {run.beneficiaries_seen}/{run.beneficiaries_total} beneficiaries, "
                  f"{run.chunks_done} chunks, {time.perf_counter() - started:.1f} s",
                  end="", file=sys.stderr, flush=True)

        started = time.perf_counter()
        first = await run_bulk_reload(conn, SCHOOL_YEAR, actor=ACTOR, chunk_rows=chunk_rows,
                                      progress=progress)
        first_s = time.perf_counter() - started
        print(f"\nbulk reload: {first.wallets_credited} wallets in {first_s:.2f} s", file=sys.stderr)
        started = time.perf_counter()
        second = await run_bulk_reload(conn, SCHOOL_YEAR, actor=ACTOR, chunk_rows=chunk_rows,
                                       progress=progress)
        second_s = time.perf_counter() - started
        print(f"\nsecond run: {second.wallets_credited} credited in {second_s:.2f} s", file=sys.stderr)
        problems = await _verify(conn, beneficiaries, first, second)
        version = await conn.fetchval("SHOW server_version")
    for problem in problems:
        print(f"PROBLEM: {problem}", file=sys.stderr)
    return {
        "beneficiaries": beneficiaries, "chunk_rows": chunk_rows, "seed_s": round(seed_s, 2),
        "bulk_reload_s": round(first_s, 2), "wallets_credited": first.wallets_credited,
        "wallets_opened": first.wallets_opened, "credited_cents": first.credited_cents,
        "fee_recovered_cents": first.fee_recovered_cents,
        "wallets_per_s": round(first.wallets_credited / first_s),
        "second_run_s": round(second_s, 2), "second_run_credited": second.wallets_credited,
        "baseline_insert_s": round(baseline_s, 2),
        "ratio_to_baseline": round(first_s / baseline_s, 2),
        "goal_seconds": GOAL_SECONDS,
        "goal_met": first_s <= GOAL_SECONDS * beneficiaries / DEFAULT_BENEFICIARIES,
        "postgres_version": version, "cpus": os.cpu_count(), "problems": problems,
    }


async def _seed(conn: asyncpg.Connection, beneficiaries: int) -> None:
    """Set-based, like the demo region's seed, without its per-beneficiary reloads."""
    async with conn.transaction():
        await conn.executemany("INSERT INTO establishments (uai, name, kind) VALUES ($1, $2, $3)",
                               [(uai, name, kind) for uai, name, kind, _ in ESTABLISHMENTS])
        await conn.execute(
            """
            INSERT INTO beneficiaries (dossier_number, last_name, first_name, birth_date, email,
                                       establishment_id)
            SELECT 'HDF' || lpad(i::text, 7, '0'), 'Martin', 'Léa', date '2008-01-01' + i % 1000,
                   'eleve' || i || '@exemple.fr', (SELECT min(id) FROM establishments) + i % $2
              FROM generate_series(1, $1::integer) AS i
            """, beneficiaries, len(ESTABLISHMENTS))
        await conn.execute(
            "INSERT INTO rights (beneficiary_id, school_year, renewed_by, programme)"
            " SELECT b.id, $1, e.uai, default_programme(e.kind) FROM beneficiaries b"
            " JOIN establishments e ON e.id = b.establishment_id", SCHOOL_YEAR)
        await conn.execute(
            """
            WITH existing AS (SELECT id AS beneficiary_id,
                                     nextval(pg_get_serial_sequence('accounts', 'id')) AS account_id
                                FROM beneficiaries WHERE id % $2 = 0),
                 accounts AS (INSERT INTO accounts (id, kind) OVERRIDING SYSTEM VALUE
                              SELECT account_id, 'WALLET' FROM existing)
            INSERT INTO wallets (beneficiary_id, school_year, account_id)
            SELECT beneficiary_id, $1, account_id FROM existing
            """, SCHOOL_YEAR, EXISTING_WALLET_EVERY)
        await conn.execute(
            "INSERT INTO pending_fees (beneficiary_id, amount_cents, reason)"
            " SELECT id, $1, 'bench: replacement card' FROM beneficiaries WHERE id % $2 = 1",
            PENDING_FEE_CENTS, PENDING_FEE_EVERY)
        for programme, cents in AMOUNTS_CENTS.items():
            await conn.execute("INSERT INTO reload_programmes VALUES ($1, $2, $3)",
                               SCHOOL_YEAR, programme, cents)


async def _baseline(conn: asyncpg.Connection) -> float:
    """The same number of transfer rows, written by one plain INSERT … SELECT into a logged copy
    of `transfers` with its indexes: no wallet, no fee, no lock, no chunk."""
    await conn.execute("CREATE TABLE bench_baseline_transfers (LIKE transfers INCLUDING ALL)")
    try:
        started = time.perf_counter()
        await conn.execute(
            "INSERT INTO bench_baseline_transfers (code, debit_account_id, credit_account_id,"
            " amount_cents, reference, created_at)"
            " SELECT 'RELOAD', 1, beneficiary_id + 1000, 10000,"
            " bulk_reload_reference(school_year, beneficiary_id),"
            " business_now() FROM rights WHERE school_year = $1", SCHOOL_YEAR)
        return time.perf_counter() - started
    finally:
        await conn.execute("DROP TABLE bench_baseline_transfers")


async def _verify(conn: asyncpg.Connection, beneficiaries: int, first, second) -> list[str]:
    problems = [f"ledger: {rule}: {detail}" for rule, detail in await ledger_violations(conn)]
    if not first.finished or first.wallets_credited != beneficiaries:
        problems.append(f"first run credited {first.wallets_credited} of {beneficiaries}")
    if second.wallets_credited or second.credited_cents:
        problems.append(f"second run credited {second.wallets_credited} wallets")
    reloads = await conn.fetchval("SELECT count(*) FROM transfers WHERE code = 'RELOAD'")
    if reloads != beneficiaries:
        problems.append(f"{reloads} RELOAD transfers for {beneficiaries} beneficiaries")
    open_fees = await conn.fetchval("SELECT count(*) FROM pending_fees WHERE recovered_cents < amount_cents")
    if open_fees:
        problems.append(f"{open_fees} pending fees not recovered")
    return problems


if __name__ == "__main__":
    sys.exit(main())
