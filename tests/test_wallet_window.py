"""The wallet window [1 July 00:00, 1 May 00:00) and the school year, in Europe/Paris time,
whatever the UTC offset (CET in winter, CEST in summer) and on DST-change nights."""

from __future__ import annotations

import datetime as dt

import pytest

from ledger.clock import pin_clock
from ledger.demo_region import card_uid

from conftest import TEST_SCHOOL_YEAR, paris

ORDINARY = card_uid(5)
UTC = dt.timezone.utc


async def _purchase_at(client, conn, when: dt.datetime) -> str:
    await pin_clock(conn, when)
    return (await client.purchase(ORDINARY, 1_00)).rc


async def _renew_for_next_year(conn) -> None:
    beneficiary = await conn.fetchval("SELECT beneficiary_id FROM cards WHERE uid = $1", ORDINARY)
    await conn.execute("INSERT INTO rights (beneficiary_id, school_year, renewed_by) VALUES ($1, $2, 'test')",
                       beneficiary, TEST_SCHOOL_YEAR + 1)
    await conn.execute("SELECT reload_wallet($1, $2, 5000, 'test-next-year')",
                       beneficiary, TEST_SCHOOL_YEAR + 1)


@pytest.mark.parametrize("when, rc", [
    (paris(2027, 4, 30, 23, 59, 59), "00"),
    (paris(2027, 5, 1, 0, 0, 0), "54"),
    # 22:30 UTC on 30 April is already 1 May 00:30 in Paris (CEST, UTC+2).
    (dt.datetime(2027, 4, 30, 22, 30, tzinfo=UTC), "54"),
    (dt.datetime(2027, 4, 30, 21, 59, 59, tzinfo=UTC), "00"),
    (paris(2027, 6, 30, 23, 59, 59), "54"),
    (paris(2026, 7, 1, 0, 0, 0), "00"),
    (paris(2026, 6, 30, 23, 59, 59), "54"),
])
async def test_window_edges(client, conn, when, rc):
    assert await _purchase_at(client, conn, when) == rc


async def test_first_of_july_opens_the_next_school_year(client, conn):
    # On 1 July 2027 00:00 Paris the school year is 2027: last year's rights no longer count.
    assert await _purchase_at(client, conn, paris(2027, 7, 1, 0, 0, 0)) == "57"
    await _renew_for_next_year(conn)
    response = await client.purchase(ORDINARY, 1_00)
    assert (response.rc, response.balance_cents) == ("00", 49_00)
    year = await conn.fetchval("SELECT school_year FROM authorizations WHERE request_id = $1",
                               response.request_id)
    assert year == TEST_SCHOOL_YEAR + 1


@pytest.mark.parametrize("when", [
    # Spring forward, 28 March 2027: 02:00 CET jumps to 03:00 CEST.
    dt.datetime(2027, 3, 28, 0, 59, 59, tzinfo=UTC),
    dt.datetime(2027, 3, 28, 1, 0, 0, tzinfo=UTC),
    # Fall back, 25 October 2026: 03:00 CEST goes back to 02:00 CET; 02:30 happens twice.
    dt.datetime(2026, 10, 25, 0, 30, tzinfo=UTC),
    dt.datetime(2026, 10, 25, 1, 30, tzinfo=UTC),
])
async def test_purchases_on_dst_change_nights(client, conn, when):
    await pin_clock(conn, when)
    response = await client.purchase(ORDINARY, 1_00)
    assert response.rc == "00"
    row = await conn.fetchrow("SELECT created_at, school_year FROM authorizations WHERE request_id = $1",
                              response.request_id)
    assert row["created_at"] == when and row["school_year"] == TEST_SCHOOL_YEAR
