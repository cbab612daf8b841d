"""Partner geosearch benchmark: 10,000 partners, about 1,000 searches, p50/p99 beside a sequential
scan of the same query in the same run.

On a throwaway database (a private cluster in a temporary directory, or a fresh `hdfpay_bench_geo`
database on DATABASE_URL's server): migrate, seed partners at random across the Hauts-de-France
bounding box (set-based SQL, a fixed seed), then time ledger.partners.NEARBY_SQL from random points
(radius 5-20 km, a category or none) through asyncpg, and the same searches again with index and
bitmap scans turned off (the raw baseline). EXPLAIN must show the index partners_geo, for the
custom and for the generic plan (asyncpg's prepared statements may switch to the latter), and both
runs must return the same partners. Figures go to a JSON file.

    .venv/bin/python loadtest/bench_geosearch.py [--partners 10000] [--searches 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
from pathlib import Path

import asyncpg

from hdfpay.config import Settings
from ledger.database import connection, throwaway_database
from ledger.migrate import migrate
from ledger.partners import CATEGORIES, NEARBY_SQL, MAX_SEARCH_RESULTS_ROWS, search_arguments

BENCH_DATABASE = "hdfpay_bench_geo"
GEO_INDEX = "partners_geo"
DEFAULT_PARTNERS = 10_000
DEFAULT_SEARCHES = 1_000
WARMUP_SEARCHES = 50
# Hauts-de-France, roughly: where the partners and the search points are drawn.
REGION_LAT_MIN, REGION_LAT_MAX = 49.0, 51.1
REGION_LON_MIN, REGION_LON_MAX = 1.4, 4.3
SEARCH_RADIUS_MIN_M, SEARCH_RADIUS_MAX_M = 5_000, 20_000
SUSPENDED_SHARE = 0.05
TARGET_P99_MS = 5.0
RANDOM_SEED = 20_261_126
# NEARBY_SQL's parameter types, to PREPARE it by hand for the generic plan's EXPLAIN.
NEARBY_PARAMETER_TYPES = "float8, float8, text[], float8, float8, float8, float8, float8, text[], integer"
SEQUENTIAL_SETTINGS = ("SET enable_indexscan = off", "SET enable_bitmapscan = off",
                       "SET enable_indexonlyscan = off")

SEED_SQL = """
WITH new_accounts AS (
    INSERT INTO accounts (kind) SELECT 'MERCHANT_PAYABLE' FROM generate_series(1, $1::integer)
    RETURNING id),
numbered AS (SELECT id, row_number() OVER (ORDER BY id) AS n FROM new_accounts)
INSERT INTO partners (name, category, address, latitude, longitude, status, merchant_account_id)
SELECT 'Partenaire ' || n, CASE WHEN random() < 0.5 THEN 'BOOKSHOP' ELSE 'EQUIPMENT' END,
       n || ' rue du Banc d''essai, 59000 Lille',
       $2::float8 + random() * ($3::float8 - $2::float8), $4::float8 + random() * ($5::float8 - $4::float8),
       CASE WHEN random() < $6::float8 THEN 'SUSPENDED' ELSE 'ACTIVE' END, id
  FROM numbered
"""


async def seed_partners(conn: asyncpg.Connection, count: int, seed: int = RANDOM_SEED) -> None:
    """`count` partners spread uniformly over the region's box, the same ones for the same seed."""
    async with conn.transaction():
        await conn.execute("SELECT setseed($1)", (seed % 1_000_003) / 1_000_003)
        await conn.execute(SEED_SQL, count, REGION_LAT_MIN, REGION_LAT_MAX, REGION_LON_MIN,
                           REGION_LON_MAX, SUSPENDED_SHARE)
    await conn.execute("ANALYZE partners")


def random_searches(count: int, seed: int = RANDOM_SEED) -> list[tuple]:
    """NEARBY_SQL argument tuples: random points, radii and categories (a third without)."""
    rng = random.Random(seed)
    searches = []
    for _ in range(count):
        category = rng.choice([None, *CATEGORIES])
        searches.append(search_arguments(
            rng.uniform(REGION_LAT_MIN, REGION_LAT_MAX), rng.uniform(REGION_LON_MIN, REGION_LON_MAX),
            rng.uniform(SEARCH_RADIUS_MIN_M, SEARCH_RADIUS_MAX_M), category,
            limit_rows=MAX_SEARCH_RESULTS_ROWS))
    return searches


def plan_nodes(plan: dict) -> list[dict]:
    nodes, stack = [], [plan]
    while stack:
        node = stack.pop()
        nodes.append(node)
        stack.extend(node.get("Plans", []))
    return nodes


def uses_index(plan: dict, index: str = GEO_INDEX) -> bool:
    return any(node.get("Index Name") == index for node in plan_nodes(plan))


async def explain_plans(conn: asyncpg.Connection, arguments: tuple) -> dict[str, dict]:
    """The custom plan (planned with these values) and the generic plan (planned without)."""
    custom = json.loads(await conn.fetchval("EXPLAIN (FORMAT JSON) " + NEARBY_SQL, *arguments))
    await conn.execute(f"PREPARE nearby_generic ({NEARBY_PARAMETER_TYPES}) AS {NEARBY_SQL}")
    try:
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        literals = ", ".join(_literal(value) for value in arguments)
        generic = json.loads(await conn.fetchval(f"EXPLAIN (FORMAT JSON) EXECUTE nearby_generic ({literals})"))
    finally:
        await conn.execute("RESET plan_cache_mode")
        await conn.execute("DEALLOCATE nearby_generic")
    return {"custom": custom[0]["Plan"], "generic": generic[0]["Plan"]}


def _literal(value) -> str:
    if isinstance(value, list):
        return "ARRAY[" + ", ".join(f"'{v}'" for v in value) + "]::text[]"
    return repr(float(value)) if isinstance(value, float) else str(int(value))


async def time_searches(conn: asyncpg.Connection, searches: list[tuple]) -> tuple[list[float], list]:
    """Milliseconds per search (asyncpg round trip included) and each search's partner ids."""
    statement = await conn.prepare(NEARBY_SQL)
    for arguments in searches[:WARMUP_SEARCHES]:
        await statement.fetch(*arguments)
    timings_ms, results = [], []
    for arguments in searches:
        started = time.perf_counter()
        rows = await statement.fetch(*arguments)
        timings_ms.append((time.perf_counter() - started) * 1000)
        results.append([row["id"] for row in rows])
    return timings_ms, results


def summary(timings_ms: list[float]) -> dict:
    ordered = sorted(timings_ms)
    return {"p50_ms": round(statistics.median(ordered), 3),
            "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 3),
            "mean_ms": round(statistics.fmean(ordered), 3), "max_ms": round(ordered[-1], 3)}


async def run(dsn: str, partners: int, searches_count: int) -> dict:
    async with connection(dsn) as conn:
        await migrate(conn)
        await seed_partners(conn, partners)
        searches = random_searches(searches_count)
        plans = await explain_plans(conn, searches[0])
        indexed_ms, indexed = await time_searches(conn, searches)
        for setting in SEQUENTIAL_SETTINGS:
            await conn.execute(setting)
        sequential_plan = json.loads(await conn.fetchval("EXPLAIN (FORMAT JSON) " + NEARBY_SQL,
                                                         *searches[0]))[0]["Plan"]
        sequential_ms, sequential = await time_searches(conn, searches)
        version = await conn.fetchval("SHOW server_version")
    index, baseline = summary(indexed_ms), summary(sequential_ms)
    return {
        "partners": partners, "searches": searches_count, "postgres_version": version,
        "radius_m": [SEARCH_RADIUS_MIN_M, SEARCH_RADIUS_MAX_M],
        "mean_results_rows": round(statistics.fmean(len(r) for r in indexed), 1),
        "index": index, "sequential_scan": baseline,
        "speedup_p50": round(baseline["p50_ms"] / index["p50_ms"], 1),
        "index_used": {name: uses_index(plan) for name, plan in plans.items()},
        "baseline_is_sequential": any(n["Node Type"] == "Seq Scan" for n in plan_nodes(sequential_plan)),
        "results_match": indexed == sequential,
        "target_p99_ms": TARGET_P99_MS, "meets_target": index["p99_ms"] <= TARGET_P99_MS,
    }


async def main_async(args: argparse.Namespace) -> int:
    async with throwaway_database(Settings.from_env().database_url, BENCH_DATABASE) as dsn:
        result = await run(dsn, args.partners, args.searches)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    index, baseline = result["index"], result["sequential_scan"]
    print(f"{'':<18}{'p50 ms':>9}{'p99 ms':>9}{'mean ms':>9}")
    for name, figures in (("index (box+dist)", index), ("sequential scan", baseline)):
        print(f"{name:<18}{figures['p50_ms']:>9.3f}{figures['p99_ms']:>9.3f}{figures['mean_ms']:>9.3f}")
    ok = all(result["index_used"].values()) and result["results_match"] and result["baseline_is_sequential"]
    print(f"index used (custom, generic plan): {result['index_used']}; same results: "
          f"{result['results_match']}; p99 target {TARGET_P99_MS} ms: "
          f"{'met' if result['meets_target'] else 'MISSED'}; figures in {args.output}")
    print(f"geosearch partners={result['partners']} searches={result['searches']} "
          f"p50_ms={index['p50_ms']} p99_ms={index['p99_ms']} seqscan_p50_ms={baseline['p50_ms']} "
          f"seqscan_p99_ms={baseline['p99_ms']} speedup={result['speedup_p50']} "
          f"{'ok' if ok else 'FAILED'}")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_geosearch", description=__doc__.split("\n\n")[0])
    parser.add_argument("--partners", type=int, default=DEFAULT_PARTNERS)
    parser.add_argument("--searches", type=int, default=DEFAULT_SEARCHES)
    parser.add_argument("--output", default="geosearch-results.json", help="JSON results file")
    args = parser.parse_args(argv)
    if args.partners < 1 or not WARMUP_SEARCHES <= args.searches <= 100_000:
        parser.error(f"--partners >= 1 and --searches from {WARMUP_SEARCHES} to 100000")
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
