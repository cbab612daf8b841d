"""Every business timestamp comes from the business clock (business_now()), never from the
machine's: with the clock pinned far from today, reloads, recovered fees, renewals and seeded
cards are stamped with the pinned time, and the funds report finds them on that day."""

from __future__ import annotations

import re

from conftest import TEST_SCHOOL_YEAR, paris
from ledger import reports
from ledger.clock import pin_clock
from ledger.demo_region import card_uid
from ledger.migrate import SQL_DIR

# Timestamps that record when something happened to the software, not to the region's money:
# they keep the wall clock.
TECHNICAL_TIMESTAMPS = {("schema_migrations", "applied_at"), ("schema_repeatables", "applied_at"),
                        ("terminal_keys", "created_at"), ("clock_override", "pinned_at")}
WALL_CLOCK = re.compile(r"\b(now|clock_timestamp|statement_timestamp|transaction_timestamp)\s*\(\)"
                        r"|\b(current_timestamp|localtimestamp|current_date|localtime)\b", re.IGNORECASE)


async def test_business_timestamps_default_to_the_business_clock(conn):
    rows = await conn.fetch("""
        SELECT table_name, column_name, column_default FROM information_schema.columns
         WHERE table_schema = 'public' AND data_type = 'timestamp with time zone'""")
    wrong = [(r["table_name"], r["column_name"], r["column_default"]) for r in rows
             if (r["table_name"], r["column_name"]) not in TECHNICAL_TIMESTAMPS
             and r["column_default"] not in (None, "business_now()")]
    assert wrong == []


# Elapsed time, not business time: a batch's messages measure their time budgets (deadlines of
# requests in flight, in milliseconds) on the wall clock, which a pinned business clock would stop.
TECHNICAL_CLOCK_READERS = ["authorize_batch.sql"]


def test_no_sql_function_reads_the_wall_clock_but_business_now():
    readers = sorted(p.name for p in (SQL_DIR / "functions").glob("*.sql")
                     if WALL_CLOCK.search(p.read_text()))
    assert readers == sorted(["business_now.sql", *TECHNICAL_CLOCK_READERS])


async def test_a_reload_and_the_fee_it_recovers_are_stamped_with_business_time(conn):
    pinned = paris(2026, 10, 1, 9, 30)
    await pin_clock(conn, pinned)
    beneficiary = await conn.fetchval("SELECT beneficiary_id FROM cards WHERE uid = $1", card_uid(21))
    await conn.execute("INSERT INTO pending_fees (beneficiary_id, amount_cents, reason)"
                       " VALUES ($1, 300, 'test')", beneficiary)
    await conn.execute("SELECT reload_wallet($1, $2, 1000, 'clock-test')", beneficiary, TEST_SCHOOL_YEAR)
    stamps = await conn.fetch("SELECT code, created_at FROM transfers WHERE reference IN"
                              " ('clock-test', 'pending-fee:' || (SELECT max(id) FROM pending_fees))")
    assert sorted((r["code"], r["created_at"]) for r in stamps) == [
        ("RELOAD", pinned), ("REPLACEMENT_FEE", pinned)]
    assert await conn.fetchval("SELECT created_at FROM pending_fees WHERE beneficiary_id = $1",
                               beneficiary) == pinned
    day = reports.Period(pinned.date(), pinned.date())
    flows = (await reports.funds(conn, day)).flows
    assert (flows["funded_cents"], flows["fees_cents"]) == (10_00, 3_00)


async def test_the_seeded_region_is_stamped_with_the_clock_it_was_seeded_under(conn):
    """The template was seeded with the clock pinned at SCHOOL_DAY (conftest)."""
    from conftest import SCHOOL_DAY
    assert await conn.fetchval("SELECT array_agg(DISTINCT renewed_at) FROM rights") == [SCHOOL_DAY]
    assert await conn.fetchval("SELECT array_agg(DISTINCT issued_at) FROM cards") == [SCHOOL_DAY]
    assert await conn.fetchval("SELECT array_agg(DISTINCT opposed_at) FROM cards"
                               " WHERE opposed_at IS NOT NULL") == [SCHOOL_DAY]
    assert await conn.fetchval("SELECT array_agg(DISTINCT created_at) FROM transfers") == [SCHOOL_DAY]
