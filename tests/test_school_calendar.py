"""The school-year calendar is written once, in SQL (ledger/sql/functions), and read through
ledger/school_calendar.py: 1 July, 1 May, 20 June and the business time zone each in one place."""

from __future__ import annotations

import configparser
import json
import re
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from conftest import SCHOOL_DAY, TEST_SCHOOL_YEAR, paris
from ledger import school_calendar
from ledger.clock import pin_clock
from ledger.expiry import expire_school_year, last_closed_school_year
from ledger.migrate import MIGRATIONS_DIR, SQL_DIR

ROOT = Path(__file__).resolve().parent.parent
YEAR = TEST_SCHOOL_YEAR


async def test_the_calendar_of_a_school_year(conn):
    calendar = await school_calendar.calendar(conn, YEAR)
    assert (calendar.starts_at, calendar.wallet_opens_at, calendar.wallet_closes_at,
            calendar.rights_renewal_opens_at, calendar.ends_at) == (
        paris(YEAR, 7, 1), paris(YEAR, 7, 1), paris(YEAR + 1, 5, 1), paris(YEAR, 6, 20),
        paris(YEAR + 1, 7, 1))
    assert await school_calendar.business_time_zone(conn) == ZoneInfo("Europe/Paris")


@pytest.mark.parametrize("at, year, in_window", [
    (paris(YEAR, 6, 30, 23, 59, 59), YEAR - 1, False),
    (paris(YEAR, 7, 1), YEAR, True),
    (paris(YEAR + 1, 4, 30, 23, 59, 59), YEAR, True),
    (paris(YEAR + 1, 5, 1), YEAR, False),              # 22:00 UTC the day before (CEST)
    (paris(YEAR, 12, 31, 23, 30), YEAR, True),
    (paris(YEAR + 1, 1, 1, 0, 30), YEAR, True),        # still 2026 in UTC
])
async def test_school_year_and_wallet_window_of_an_instant(conn, at, year, in_window):
    assert await school_calendar.school_year_of(conn, at) == year
    assert await school_calendar.in_wallet_window(conn, at) is in_window


async def test_the_school_year_of_a_reload(conn):
    await pin_clock(conn, paris(YEAR + 1, 4, 30, 23, 59))
    assert await school_calendar.reload_school_year(conn) == YEAR
    await pin_clock(conn, paris(YEAR + 1, 5, 1))
    assert (await school_calendar.reload_school_year(conn),
            await school_calendar.current_school_year(conn)) == (YEAR + 1, YEAR)


def _sql_texts() -> dict[str, str]:
    files = list((SQL_DIR / "functions").glob("*.sql")) + list(MIGRATIONS_DIR.glob("*.sql"))
    return {f"{p.parent.name}/{p.name}": p.read_text() for p in files}


def test_the_time_zone_and_the_dates_are_written_once():
    def code(text: str) -> str:
        return "\n".join(line.split("--")[0] for line in text.splitlines())
    zone = sorted(name for name, text in _sql_texts().items() if "Europe/Paris" in code(text))
    # The statistics repeat business_day_of()'s inlined expression (checked below).
    assert zone == ["functions/business_time_zone.sql", "migrations/0001_schema.sql"]
    dates = sorted(name for name, text in _sql_texts().items()
                   if re.search(r"make_timestamp(tz)?\s*\(", code(text)))
    assert dates == ["functions/first_card_requests_open_at.sql",
                     "functions/rights_renewal_opens_at.sql", "functions/school_year_starts_at.sql",
                     "functions/wallet_closes_at.sql"]


async def test_the_business_day_statistics_match_business_day_of(conn):
    """One day in the seeded journal: with the extended statistics the planner expects one
    group, without them it would guess hundreds."""
    await conn.execute("ANALYZE transfers")
    plan = json.loads(await conn.fetchval(
        "EXPLAIN (FORMAT JSON) SELECT business_day_of(created_at), count(*) FROM transfers GROUP BY 1"))
    assert plan[0]["Plan"]["Plan Rows"] == 1


def test_the_expiry_timer_runs_every_day():
    timer = configparser.ConfigParser(interpolation=None, strict=False)
    timer.read(ROOT / "deploy" / "systemd" / "hdfpay-expiry.timer")
    assert timer["Timer"]["OnCalendar"] == "*-*-* 00:05:00 Europe/Paris"


async def test_a_daily_expiry_before_the_close_moves_nothing(conn):
    """What `hdfpay expire` does on an ordinary day: the last closed school year, already empty."""
    await pin_clock(conn, SCHOOL_DAY)
    open_balances = await conn.fetchval("SELECT sum(credits_posted - debits_posted) FROM accounts"
                                        " WHERE kind = 'WALLET'")
    year = await last_closed_school_year(conn)
    assert year == YEAR - 1
    result = await expire_school_year(conn, year, actor="timer")
    assert (result.wallets_expired, result.expired_cents) == (0, 0)
    assert await conn.fetchval("SELECT sum(credits_posted - debits_posted) FROM accounts"
                               " WHERE kind = 'WALLET'") == open_balances


@pytest.mark.parametrize("call", ["school_year_of(now())", "in_wallet_window(now())",
                                  "wallet_closes_at(school_year_of(now()))"])
async def test_the_calendar_of_the_hot_path_is_inlined(conn, call):
    """authorize_purchase() asks the calendar on every message: each function must stay one
    expression that PostgreSQL inlines. Written with a FROM subquery, school_year_of() ran as a
    SQL function on every call (0.13 ms per authorization, twice through in_wallet_window)."""
    # now(), not a constant: an immutable call on constants would be folded, inlined or not.
    plan = "\n".join(r[0] for r in await conn.fetch(f"EXPLAIN (VERBOSE, COSTS OFF) SELECT {call}"))
    assert "make_timestamp" in plan
    assert not any(name + "(" in plan for name in ("school_year_of", "in_wallet_window",
                                                   "wallet_closes_at", "school_year_starts_at"))
