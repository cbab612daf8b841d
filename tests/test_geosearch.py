"""Partners: add, update, suspend, close (audited), and the search by geolocation: the same answer
as a Python haversine over every partner, on the index (EXPLAIN), exact at the radius's edge and
at the bounding box's corners, filtered by category and status. No timing here: the benchmark
(loadtest/bench_geosearch.py) measures; its run is checked at the end."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys

import pytest

from ledger.audit import verify_audit
from ledger.cards import Conflict, Invalid, NotFound
from ledger.demo_region import card_uid
from ledger.partners import (EARTH_MEAN_RADIUS_M, MAX_SEARCH_RADIUS_M, NEARBY_SQL, add_partner,
                             bounding_box, get_partner, haversine_m, list_partners,
                             partners_near, set_partner_status, update_partner)

from conftest import ACTIVE_TERMINAL

ACTOR = "region_operator:alice"
SEARCHES = 150
CENTRE = (50.0, 3.0)            # no demo partner within 20 km


from loadtest import bench_geosearch as bench  # noqa: E402 (a test may import the benchmarks)


async def add(conn, name, lat, lon, category="BOOKSHOP"):
    return await add_partner(conn, name=name, category=category, address="1 rue du Test, 59000 Lille",
                             latitude=lat, longitude=lon, actor=ACTOR)


def north_of(lat, lon, distance_m):
    return lat + math.degrees(distance_m / EARTH_MEAN_RADIUS_M), lon


def east_of(lat, lon, distance_m):
    """Same latitude, the longitude at this great-circle distance."""
    half = math.asin(math.sin(distance_m / (2 * EARTH_MEAN_RADIUS_M)) / math.cos(math.radians(lat)))
    return lat, lon + math.degrees(2 * half)


async def test_search_equals_a_python_haversine_over_every_partner(conn):
    await bench.seed_partners(conn, 10_000)
    everyone = await conn.fetch("SELECT id, category, latitude, longitude, status FROM partners")
    sizes = []
    for arguments in bench.random_searches(SEARCHES, seed=7):
        lat, lon, categories, *_, radius_m, statuses, limit_rows = arguments
        expected = sorted((haversine_m(lat, lon, p["latitude"], p["longitude"]), p["id"])
                          for p in everyone
                          if p["category"] in categories and p["status"] in statuses)
        expected = [(d, i) for d, i in expected if d <= radius_m][:limit_rows]
        rows = await conn.fetch(NEARBY_SQL, *arguments)
        assert [r["id"] for r in rows] == [i for _, i in expected]
        assert all(abs(r["distance_m"] - d) < 1e-6 for r, (d, _) in zip(rows, expected))
        sizes.append(len(rows))
    assert sum(sizes) > 10 * SEARCHES and min(sizes) < max(sizes)    # not a trivial comparison


async def test_explain_shows_the_index_for_custom_and_generic_plans(conn):
    await bench.seed_partners(conn, 10_000)
    for arguments in bench.random_searches(3, seed=9):
        plans = await bench.explain_plans(conn, arguments)
        for kind, plan in plans.items():
            assert bench.uses_index(plan), (kind, plan)
            conditions = " ".join(n.get("Index Cond", "") for n in bench.plan_nodes(plan))
            assert "latitude" in conditions and "longitude" in conditions and "category" in conditions
    for setting in bench.SEQUENTIAL_SETTINGS:
        await conn.execute(setting)
    plan = (await bench.explain_plans(conn, arguments))["custom"]
    assert not bench.uses_index(plan)


async def test_the_radius_edge_is_exact_north_and_east(conn):
    radius = 5_000
    inside_n = await add(conn, "Nord dedans", *north_of(*CENTRE, radius - 1))
    await add(conn, "Nord dehors", *north_of(*CENTRE, radius + 1))
    inside_e = await add(conn, "Est dedans", *east_of(*CENTRE, radius - 1))
    await add(conn, "Est dehors", *east_of(*CENTRE, radius + 1))
    # Inside the bounding box, just within its corner, but farther than the radius.
    box = bounding_box(*CENTRE, radius)
    await add(conn, "Coin de la boîte", box.lat_max - 1e-6, box.lon_max - 1e-6)
    found = await partners_near(conn, *CENTRE, radius)
    assert {p.id for p in found} == {inside_n.id, inside_e.id}
    assert all(radius - 1.001 < p.distance_m < radius - 0.999 for p in found)
    assert len(await partners_near(conn, *CENTRE, radius + 2)) == 4     # the corner still out
    corner_m = haversine_m(*CENTRE, box.lat_max, box.lon_max)
    assert len(await partners_near(conn, *CENTRE, corner_m)) == 5


async def test_nearest_first_category_filter_and_status(conn):
    far = await add(conn, "Librairie loin", *north_of(*CENTRE, 3_000))
    near = await add(conn, "Librairie près", *north_of(*CENTRE, 1_000))
    tools = await add(conn, "Outils", *east_of(*CENTRE, 2_000), category="EQUIPMENT")
    assert [p.id for p in await partners_near(conn, *CENTRE, 10_000)] == [near.id, tools.id, far.id]
    assert [p.id for p in await partners_near(conn, *CENTRE, 10_000, "bookshop")] == [near.id, far.id]
    assert [p.id for p in await partners_near(conn, *CENTRE, 10_000, "EQUIPMENT")] == [tools.id]
    assert [p.id for p in await partners_near(conn, *CENTRE, 10_000, limit_rows=1)] == [near.id]
    await set_partner_status(conn, near.id, "SUSPENDED", actor=ACTOR)
    assert [p.id for p in await partners_near(conn, *CENTRE, 10_000, "BOOKSHOP")] == [far.id]
    everyone = await partners_near(conn, *CENTRE, 10_000, "BOOKSHOP", include_inactive=True)
    assert [(p.id, p.status) for p in everyone] == [(near.id, "SUSPENDED"), (far.id, "ACTIVE")]


@pytest.mark.parametrize("point, radius, category, message", [
    ((50.0, 3.0), 0, None, "radius"), ((50.0, 3.0), MAX_SEARCH_RADIUS_M + 1, None, "radius"),
    ((91.0, 3.0), 1_000, None, "latitude"), ((50.0, 3.0), 1_000, "BAKERY", "category"),
])
async def test_bad_searches_are_refused(conn, point, radius, category, message):
    with pytest.raises(Invalid, match=message):
        await partners_near(conn, *point, radius, category)


def test_the_box_holds_the_circle_everywhere():
    rng = random.Random(3)
    for _ in range(2_000):
        lat, lon = rng.uniform(-89.9, 89.9), rng.uniform(-179.9, 179.9)
        radius = rng.uniform(1, MAX_SEARCH_RADIUS_M)
        box = bounding_box(lat, lon, radius)
        bearing = rng.uniform(0, 2 * math.pi)
        # The point at `radius` along `bearing` (spherical destination formula) is in the box.
        delta, phi = radius / EARTH_MEAN_RADIUS_M, math.radians(lat)
        phi2 = math.asin(math.sin(phi) * math.cos(delta) + math.cos(phi) * math.sin(delta) * math.cos(bearing))
        lam2 = math.radians(lon) + math.atan2(math.sin(bearing) * math.sin(delta) * math.cos(phi),
                                              math.cos(delta) - math.sin(phi) * math.sin(phi2))
        lat2, lon2 = math.degrees(phi2), (math.degrees(lam2) + 540) % 360 - 180
        assert box.lat_min <= lat2 <= box.lat_max
        assert box.lon_min <= lon2 <= box.lon_max or (box.lon_min, box.lon_max) == (-180 - 1e-9, 180 + 1e-9)


async def test_partner_life_cycle_is_audited_and_reaches_the_terminal(client, conn):
    added = await add(conn, " Librairie Nouvelle ", 50.3, 2.8)
    assert (added.name, added.status, added.terminals) == ("Librairie Nouvelle", "ACTIVE", ())
    assert await conn.fetchval("SELECT a.kind FROM partners p JOIN accounts a ON a.id = p.merchant_account_id"
                               " WHERE p.id = $1", added.id) == "MERCHANT_PAYABLE"
    moved = await update_partner(conn, added.id, actor=ACTOR, address="2 place du Théâtre, 62000 Arras",
                                 latitude=50.29)
    assert (moved.address, moved.latitude, moved.longitude, moved.name) == (
        "2 place du Théâtre, 62000 Arras", 50.29, 2.8, "Librairie Nouvelle")
    await update_partner(conn, added.id, actor=ACTOR)          # nothing changes: nothing recorded
    shop = await get_partner(conn, 1)
    assert (ACTIVE_TERMINAL, "ACTIVE") in shop.terminals
    await set_partner_status(conn, 1, "suspended", actor=ACTOR)
    assert (await client.purchase(card_uid(5), 1_00)).rc == "58"
    await set_partner_status(conn, 1, "SUSPENDED", actor=ACTOR)  # already: nothing recorded
    await set_partner_status(conn, 1, "ACTIVE", actor=ACTOR)
    assert (await client.purchase(card_uid(5), 1_00)).rc == "00"
    await set_partner_status(conn, added.id, "CLOSED", actor=ACTOR)
    with pytest.raises(Conflict, match="closed partner is not reopened"):
        await set_partner_status(conn, added.id, "ACTIVE", actor=ACTOR)
    actions = [r["action"] for r in await conn.fetch("SELECT action FROM audit_log ORDER BY id")]
    assert actions == ["partner.add", "partner.update", "partner.suspend", "partner.activate", "partner.close"]
    update = await conn.fetchrow("SELECT before, after FROM audit_log WHERE action = 'partner.update'")
    assert (json.loads(update["before"])["latitude"], json.loads(update["after"])["latitude"]) == (50.3, 50.29)
    assert (await verify_audit(conn)).intact
    assert [p.id for p in await list_partners(conn, status="CLOSED")] == [added.id]


@pytest.mark.parametrize("fields, message", [
    ({"category": "BAKERY"}, "category"), ({"latitude": 95.0}, "latitude"),
    ({"name": "  "}, "name"), ({"address": ""}, "address"),
])
async def test_bad_partner_fields_are_refused(conn, fields, message):
    base = {"name": "Librairie", "category": "BOOKSHOP", "address": "1 rue A", "latitude": 50.0,
            "longitude": 3.0}
    with pytest.raises(Invalid, match=message):
        await add_partner(conn, **{**base, **fields}, actor=ACTOR)
    with pytest.raises(Invalid, match=message):
        await update_partner(conn, 1, actor=ACTOR, **fields)
    with pytest.raises(NotFound):
        await update_partner(conn, 10**6, actor=ACTOR, name="x")


def test_the_benchmark_runs_and_checks_itself(pg_cluster, tmp_path):
    output = tmp_path / "geo.json"
    result = subprocess.run(
        [sys.executable, "-m", "loadtest.bench_geosearch", "--partners", "3000",
         "--searches", "100", "--output", str(output)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
        env={**os.environ, "DATABASE_URL": pg_cluster.dsn_for("postgres")})
    assert result.returncode == 0, result.stdout + result.stderr
    figures = json.loads(output.read_text())
    assert figures["index_used"] == {"custom": True, "generic": True}
    assert figures["results_match"] and figures["baseline_is_sequential"]
    assert figures["partners"] == 3000 and figures["searches"] == 100
    assert result.stdout.splitlines()[-1].startswith("geosearch partners=3000")


async def test_the_cli_manages_and_finds_partners(dsn, conn):
    def hdfpay(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "hdfpay.cli", "partners", *args],
                              capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
                              env={**os.environ, "DATABASE_URL": dsn})
    added = hdfpay("add", "--name", "Librairie du Beffroi", "--category", "bookshop", "--address",
                   "3 Grand-Place, 59000 Lille", "--lat", "50.6372", "--lon", "3.0633")
    assert added.returncode == 0, added.stderr
    partner_id = added.stdout.split()[1]
    assert "[BOOKSHOP, ACTIVE]" in added.stdout and "terminals: none" in added.stdout
    near = hdfpay("near", "50.6365", "3.0635", "--radius-km", "0.5", "--category", "bookshop")
    assert near.stdout.splitlines()[0].split()[2] == "1"            # Le Furet du Nord, 0.00 km
    assert f"  {partner_id}  BOOKSHOP" in near.stdout and "2 partner(s) within 0.5 km" in near.stdout
    assert "[BOOKSHOP, SUSPENDED]" in hdfpay("suspend", partner_id).stdout
    assert "1 partner(s)" in hdfpay("near", "50.6365", "3.0635", "--radius-km", "0.5").stdout
    moved = hdfpay("update", partner_id, "--lat", "50.7")
    assert "(50.700000, 3.063300)" in moved.stdout
    bad = hdfpay("update", partner_id, "--lat", "123")
    assert bad.returncode == 2 and "coordinates are a latitude" in bad.stderr
    far = hdfpay("near", "50", "3", "--radius-km", "500")
    assert far.returncode == 2 and "radius" in far.stderr and "Traceback" not in far.stderr
    assert "TERM-0001-1 ACTIVE" in hdfpay("show", "1").stdout
