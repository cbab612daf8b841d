"""Settlement benchmark: 1,000,000 terminal transactions (authorizations and their transfers)
settled in one run, beside the bare GROUP BY over the same rows measured in the same run.

On a throwaway database (a private cluster in a temporary directory, or a fresh
`hdfpay_bench_settlement` database on DATABASE_URL's server): migrate, seed the demo region's
wallets, partners with one terminal each, then set-based: purchases spread in time order over a
few closed days, a void for one in 23 and a half refund for another one in 23, their
transfers, and the wallets' posted totals. Then, vacuumed and analysed: the raw baseline (the
per-partner-and-day GROUP BY alone, parallel workers allowed, then in one process as an INSERT
runs), the settlement run (ledger.settlement.settle, audit included), a second run that must move
nothing, and the checks: the ledger balances, the run counted every transaction, every merchant
account is back to zero. Figures go to a JSON file.

    .venv/bin/python loadtest/bench_settlement.py [--transactions 1000000] [--partners 1000] [--days 5]
                                                  [--wallets 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sys
import time
from pathlib import Path
from zoneinfo import ZoneInfo

import asyncpg

from hdfpay.config import Settings
from ledger.database import connection, throwaway_database
from ledger.clock import pin_clock
from ledger.demo_region import seed_demo_region
from ledger.invariants import ledger_violations
from ledger.migrate import migrate
from ledger.settlement import run_lines, settle

BENCH_DATABASE = "hdfpay_bench_settlement"
DEFAULT_TRANSACTIONS = 1_000_000
DEFAULT_PARTNERS = 1_000
DEFAULT_DAYS = 5
DEFAULT_WALLETS = 20_000
SCHOOL_YEAR = 2026
# The run happens early on this day; the transactions fill the days before it.
RUN_MOMENT = dt.datetime(2026, 11, 27, 6, 0, tzinfo=ZoneInfo("Europe/Paris"))
PURCHASE_MIN_CENTS, PURCHASE_SPREAD_CENTS = 1_00, 50_00   # amounts from 1 € to 51 €
# Purchases with id % 23 = 0 are voided, = 1 half refunded. A prime, unlike the terminals'
# count, so that follow-ups fall on every partner rather than on a few every time.
FOLLOW_UP_MODULUS = 23
TARGET_SECONDS = 10.0
ACTOR = "bench:settlement"

SEED_PARTNERS_SQL = """
WITH new_accounts AS (
    INSERT INTO accounts (kind) SELECT 'MERCHANT_PAYABLE' FROM generate_series(1, $1::integer) RETURNING id),
numbered AS (SELECT id, row_number() OVER (ORDER BY id) AS n FROM new_accounts),
shops AS (
    INSERT INTO partners (name, category, address, latitude, longitude, status, merchant_account_id)
    SELECT 'Partenaire de banc ' || n, CASE WHEN n % 2 = 0 THEN 'BOOKSHOP' ELSE 'EQUIPMENT' END,
           n || ' rue du Banc d''essai, 59000 Lille', 50.6, 3.0, 'ACTIVE', id FROM numbered
    RETURNING id)
INSERT INTO terminals (id, partner_id, status) SELECT 'BENCH-' || lpad(id::text, 6, '0'), id, 'ACTIVE' FROM shops
"""

# Purchases in time order over [first day 00:00, run day 00:00) Paris, on numbered wallets and terminals.
PURCHASES_SQL = """
WITH w AS (SELECT row_number() OVER (ORDER BY account_id) - 1 AS n, account_id, c.id AS card_id
             FROM wallets JOIN cards c USING (beneficiary_id) WHERE school_year = $4 AND c.status = 'ACTIVE'),
     t AS (SELECT row_number() OVER (ORDER BY id) - 1 AS n, id FROM terminals WHERE id LIKE 'BENCH-%')
INSERT INTO authorizations (terminal_id, request_id, message_type, request_hash, stan, card_id,
                            wallet_account_id, school_year, amount_requested_cents, amount_approved_cents,
                            response_code, auth_code, rrn, created_at, response)
SELECT t.id, 'p' || g, 'PURCHASE', '\\x01'::bytea, g % 1000000, w.card_id, w.account_id, $4,
       $5 + (g * 7919) % $6, $5 + (g * 7919) % $6, '00', right(lpad(g::text, 6, '0'), 6),
       'B' || lpad(g::text, 11, '0'), $2::timestamptz + (g - 1) * $3::interval, '{}'
  FROM generate_series(1, $1::bigint) AS g
  JOIN w ON w.n = g % (SELECT count(*) FROM w)
  JOIN t ON t.n = (g * 31) % (SELECT count(*) FROM t)
"""

FOLLOW_UPS_SQL = """
INSERT INTO authorizations (terminal_id, request_id, message_type, request_hash, stan, card_id,
                            wallet_account_id, school_year, original_id, amount_requested_cents,
                            amount_approved_cents, response_code, rrn, created_at, response)
SELECT terminal_id, CASE WHEN id % $1 = 0 THEN 'v' ELSE 'r' END || id,
       CASE WHEN id % $1 = 0 THEN 'REVERSAL' ELSE 'REFUND' END, '\\x01'::bytea, stan, card_id,
       wallet_account_id, school_year, id, amount_approved_cents,
       CASE WHEN id % $1 = 0 THEN amount_approved_cents ELSE amount_approved_cents / 2 END,
       '00', 'F' || lpad(id::text, 11, '0'), created_at + $2::interval / 2, '{}'
  FROM authorizations WHERE message_type = 'PURCHASE' AND terminal_id LIKE 'BENCH-%' AND id % $1 IN (0, 1)
"""

TRANSFERS_SQL = """
INSERT INTO transfers (code, debit_account_id, credit_account_id, amount_cents, authorization_id, created_at)
SELECT a.message_type,
       CASE WHEN a.message_type = 'PURCHASE' THEN a.wallet_account_id ELSE p.merchant_account_id END,
       CASE WHEN a.message_type = 'PURCHASE' THEN p.merchant_account_id ELSE a.wallet_account_id END,
       a.amount_approved_cents, a.id, a.created_at
  FROM authorizations a JOIN terminals t ON t.id = a.terminal_id JOIN partners p ON p.id = t.partner_id
 WHERE a.terminal_id LIKE 'BENCH-%' ORDER BY a.created_at, a.id
"""

# The settlement's aggregation alone (the same groups and sums, nothing written): what any
# settlement has to read and group.
BASELINE_SQL = """
SELECT p.id, (t.created_at AT TIME ZONE 'Europe/Paris')::date AS day,
       count(*) FILTER (WHERE t.code = 'PURCHASE'), sum(t.amount_cents) FILTER (WHERE t.code = 'PURCHASE'),
       count(*) FILTER (WHERE t.code = 'REVERSAL'), sum(t.amount_cents) FILTER (WHERE t.code = 'REVERSAL'),
       count(*) FILTER (WHERE t.code = 'REFUND'), sum(t.amount_cents) FILTER (WHERE t.code = 'REFUND')
  FROM transfers t
  JOIN partners p ON p.merchant_account_id =
       CASE WHEN t.code = 'PURCHASE' THEN t.credit_account_id ELSE t.debit_account_id END
 WHERE t.code IN ('PURCHASE', 'REVERSAL', 'REFUND') AND t.created_at < $1
 GROUP BY 1, 2
"""


async def seed(conn: asyncpg.Connection, transactions: int, partners: int, days: int,
               wallets: int) -> dict:
    """About `transactions` approved messages: 10 purchases for each void and refund pair."""
    started = time.perf_counter()
    purchases = round(transactions * FOLLOW_UP_MODULUS / (FOLLOW_UP_MODULUS + 2))
    # Each wallet gets enough for its share of the purchases at the highest amount: none runs dry.
    top_up_cents = (purchases // wallets + 1) * (PURCHASE_MIN_CENTS + PURCHASE_SPREAD_CENTS)
    await pin_clock(conn, RUN_MOMENT - dt.timedelta(days=days))
    await seed_demo_region(conn, beneficiaries=wallets, school_year=SCHOOL_YEAR)
    async with conn.transaction():
        await conn.execute(SEED_PARTNERS_SQL, partners)
        await conn.execute(
            "WITH top_up AS (INSERT INTO transfers (code, debit_account_id, credit_account_id, amount_cents,"
            " reference) SELECT 'RELOAD', (SELECT id FROM accounts WHERE kind = 'REGION_FUNDING'),"
            " account_id, $1, 'bench-top-up:' || account_id FROM wallets RETURNING credit_account_id)"
            " UPDATE accounts SET credits_posted = credits_posted + $1 FROM top_up WHERE id = credit_account_id",
            top_up_cents)
        first = dt.datetime.combine(RUN_MOMENT.date() - dt.timedelta(days=days), dt.time(),
                                    RUN_MOMENT.tzinfo)
        spacing = (RUN_MOMENT.replace(hour=0) - first) / purchases
        await conn.execute(PURCHASES_SQL, purchases, first, spacing, SCHOOL_YEAR, PURCHASE_MIN_CENTS,
                           PURCHASE_SPREAD_CENTS)
        await conn.execute(FOLLOW_UPS_SQL, FOLLOW_UP_MODULUS, spacing)   # before the next sale
        await conn.execute(
            "UPDATE authorizations o SET amount_reversed_cents = f.amount_approved_cents * (f.message_type = 'REVERSAL')::int,"
            " amount_refunded_cents = f.amount_approved_cents * (f.message_type = 'REFUND')::int"
            " FROM authorizations f WHERE f.original_id = o.id AND f.terminal_id LIKE 'BENCH-%'")
        await conn.execute(TRANSFERS_SQL)
        await conn.execute(
            "UPDATE accounts a SET debits_posted = a.debits_posted + m.debits, credits_posted = a.credits_posted + m.credits"
            " FROM (SELECT wallet_account_id AS id,"
            "   sum(amount_approved_cents) FILTER (WHERE message_type = 'PURCHASE') AS debits,"
            "   coalesce(sum(amount_approved_cents) FILTER (WHERE message_type <> 'PURCHASE'), 0) AS credits"
            "   FROM authorizations WHERE terminal_id LIKE 'BENCH-%' GROUP BY 1) m WHERE a.id = m.id")
    count = await conn.fetchval("SELECT count(*) FROM authorizations WHERE terminal_id LIKE 'BENCH-%'")
    await conn.execute("VACUUM ANALYZE")
    if await conn.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"):
        await conn.execute("CHECKPOINT")
    await pin_clock(conn, RUN_MOMENT)
    return {"transactions": count, "purchases": purchases, "seed_s": round(time.perf_counter() - started, 2)}


async def timed(coro) -> tuple[float, object]:
    started = time.perf_counter()
    result = await coro
    return time.perf_counter() - started, result


async def run(dsn: str, transactions: int, partners: int, days: int, wallets: int) -> dict:
    async with connection(dsn) as conn:
        await migrate(conn)
        seeded = await seed(conn, transactions, partners, days, wallets)
        cutoff = RUN_MOMENT.replace(hour=0)
        await conn.fetch(BASELINE_SQL, cutoff)                                  # warm the cache
        baseline_s, groups = await timed(conn.fetch(BASELINE_SQL, cutoff))
        await conn.execute("SET max_parallel_workers_per_gather = 0")
        serial_s, _ = await timed(conn.fetch(BASELINE_SQL, cutoff))
        await conn.execute("RESET max_parallel_workers_per_gather")
        settle_s, outcome = await timed(settle(conn, actor=ACTOR))
        again_s, again = await timed(settle(conn, actor=ACTOR))
        lines = await run_lines(conn, outcome.run.run_id)
        problems = [f"{rule}: {detail}" for rule, detail in await ledger_violations(conn)]
        messages = await conn.fetchval("SELECT count(*) FROM authorizations WHERE amount_approved_cents > 0"
                                       " AND message_type IN ('PURCHASE', 'REVERSAL', 'REFUND')")
        unsettled = await conn.fetchval(
            "SELECT count(*) FROM (SELECT m.account_id FROM (SELECT credit_account_id AS account_id,"
            " amount_cents AS cents FROM transfers UNION ALL SELECT debit_account_id, -amount_cents"
            " FROM transfers) m JOIN partners p ON p.merchant_account_id = m.account_id"
            " GROUP BY m.account_id HAVING sum(m.cents) <> 0) owed")
        version = await conn.fetchval("SHOW server_version")
    run_ = outcome.run
    if run_.transactions != messages:
        problems.append(f"the run settled {run_.transactions} transactions, the ledger holds {messages}")
    if len(lines) != len(groups):
        problems.append(f"{len(lines)} settlement lines, the baseline found {len(groups)} partner-days")
    if again.created:
        problems.append("a second run over the same days moved money")
    if unsettled:
        problems.append(f"{unsettled} merchant accounts are not back to zero")
    return {
        **seeded, "partners": partners, "days": days, "postgres_version": version,
        "settled_transactions": run_.transactions, "lines": run_.lines, "payments": run_.payments,
        "paid_cents": run_.paid_cents,
        "settle_s": round(settle_s, 3), "settle_tps": round(run_.transactions / settle_s),
        "baseline_group_by_s": round(baseline_s, 3),
        "baseline_group_by_tps": round(run_.transactions / baseline_s),
        "baseline_group_by_one_process_s": round(serial_s, 3),
        "ratio_settle_to_baseline": round(settle_s / baseline_s, 2),
        "ratio_settle_to_one_process_baseline": round(settle_s / serial_s, 2),
        "second_run_s": round(again_s, 3), "second_run_moved_nothing": not again.created,
        "target_s": TARGET_SECONDS, "meets_target": settle_s <= TARGET_SECONDS, "problems": problems,
    }


async def main_async(args: argparse.Namespace) -> int:
    print(f"seeding about {args.transactions:,} transactions over {args.partners} partners and "
          f"{args.days} days, then settling them …", flush=True)
    async with throwaway_database(Settings.from_env().database_url, BENCH_DATABASE) as dsn:
        r = await run(dsn, args.transactions, args.partners, args.days, args.wallets)
    Path(args.output).write_text(json.dumps(r, indent=2) + "\n")
    print(f"seeded {r['transactions']:,} transactions in {r['seed_s']} s (PostgreSQL {r['postgres_version']})")
    print(f"{'':<34}{'seconds':>9}{'txn/s':>12}")
    print(f"{'settlement run (lines, transfers)':<34}{r['settle_s']:>9.3f}{r['settle_tps']:>12,}")
    print(f"{'bare GROUP BY (parallel allowed)':<34}{r['baseline_group_by_s']:>9.3f}{r['baseline_group_by_tps']:>12,}")
    print(f"{'bare GROUP BY (one process)':<34}{r['baseline_group_by_one_process_s']:>9.3f}")
    print(f"second run over the same days: {r['second_run_s']:.3f} s, moved nothing: {r['second_run_moved_nothing']}")
    for problem in r["problems"]:
        print(f"PROBLEM {problem}")
    ok = not r["problems"] and r["meets_target"]
    print(f"figures in {args.output}")
    print(f"settlement transactions={r['settled_transactions']} lines={r['lines']} settle_s={r['settle_s']} "
          f"settle_tps={r['settle_tps']} baseline_s={r['baseline_group_by_s']} "
          f"ratio={r['ratio_settle_to_baseline']} target_s={TARGET_SECONDS} {'ok' if ok else 'FAILED'}")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_settlement", description=__doc__.split("\n\n")[0])
    parser.add_argument("--transactions", type=int, default=DEFAULT_TRANSACTIONS)
    parser.add_argument("--partners", type=int, default=DEFAULT_PARTNERS)
    parser.add_argument("--days", type=int, default=DEFAULT_DAYS, help="closed days before the run")
    parser.add_argument("--wallets", type=int, default=DEFAULT_WALLETS, help="students who buy")
    parser.add_argument("--output", default="settlement-results.json", help="JSON results file")
    args = parser.parse_args(argv)
    if not (1_000 <= args.transactions <= 20_000_000 and 1 <= args.partners <= 100_000
            and 1 <= args.days <= 60 and 100 <= args.wallets <= 1_000_000):
        parser.error("--transactions from 1000 to 20000000, --partners from 1 to 100000, --days "
                     "from 1 to 60, --wallets from 100 to 1000000")
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
