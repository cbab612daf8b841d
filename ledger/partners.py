"""Partner shops: add, update, suspend (sql/functions/add_partner.sql and its neighbours, audited), and the search by
geolocation.

The embedded PostgreSQL has neither PostGIS nor earthdistance, so the search is a bounding box on
the B-tree partners_geo (category, latitude, longitude), then the exact haversine distance in SQL
on the few rows inside the box. The box is the smallest latitude/longitude rectangle holding the
whole circle (J. P. Matuschek, "Finding Points Within a Distance of a Latitude/Longitude Using
Bounding Coordinates"), widened by a hair so that rounding can never drop a partner at the edge.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import asyncpg

from ledger.cards import Invalid, NotFound, refusals

CATEGORIES = ("BOOKSHOP", "EQUIPMENT")
STATUSES = ("ACTIVE", "SUSPENDED", "CLOSED")
EARTH_MEAN_RADIUS_M = 6_371_008.8
MAX_SEARCH_RADIUS_M = 100_000
DEFAULT_SEARCH_RESULTS_ROWS = 20
MAX_SEARCH_RESULTS_ROWS = 100
LIST_LIMIT_ROWS = 1_000
BOX_MARGIN_DEG = 1e-9        # about 0.1 mm: only guards the box against floating-point rounding


@dataclass(frozen=True)
class Partner:
    id: int
    name: str
    category: str
    address: str
    latitude: float
    longitude: float
    status: str
    terminals: tuple[tuple[str, str], ...] = ()   # (terminal id, status)


@dataclass(frozen=True)
class NearbyPartner:
    id: int
    name: str
    category: str
    address: str
    latitude: float
    longitude: float
    status: str
    distance_m: float


@dataclass(frozen=True)
class Box:
    lat_min: float
    lat_max: float
    lon_min: float
    lon_max: float


def bounding_box(latitude: float, longitude: float, radius_m: float) -> Box:
    """Every point within radius_m of (latitude, longitude) lies in this box. Near a pole or
    across the antimeridian the box takes every longitude (correct, merely wider)."""
    delta = radius_m / EARTH_MEAN_RADIUS_M
    lat = math.radians(latitude)
    lat_min, lat_max = lat - delta, lat + delta
    if lat_min > -math.pi / 2 and lat_max < math.pi / 2:
        delta_lon = math.asin(min(1.0, math.sin(delta) / math.cos(lat)))
        lon_min, lon_max = math.radians(longitude) - delta_lon, math.radians(longitude) + delta_lon
        if lon_min < -math.pi or lon_max > math.pi:
            lon_min, lon_max = -math.pi, math.pi
    else:
        lat_min, lat_max = max(lat_min, -math.pi / 2), min(lat_max, math.pi / 2)
        lon_min, lon_max = -math.pi, math.pi
    return Box(math.degrees(lat_min) - BOX_MARGIN_DEG, math.degrees(lat_max) + BOX_MARGIN_DEG,
               math.degrees(lon_min) - BOX_MARGIN_DEG, math.degrees(lon_max) + BOX_MARGIN_DEG)


def haversine_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance on the mean Earth sphere; the same formula as NEARBY_SQL."""
    a = (math.sin(math.radians(lat2 - lat1) / 2) ** 2
         + math.cos(math.radians(lat1)) * math.cos(math.radians(lat2))
         * math.sin(math.radians(lon2 - lon1) / 2) ** 2)
    return 2 * EARTH_MEAN_RADIUS_M * math.asin(min(1.0, math.sqrt(a)))


# $1 lat, $2 lon, $3 categories, $4..$7 the box, $8 radius in metres, $9 statuses, $10 limit.
NEARBY_SQL = f"""
SELECT id, name, category, address, latitude, longitude, status, distance_m
  FROM (SELECT p.id, p.name, p.category, p.address, p.latitude, p.longitude, p.status,
               2 * {EARTH_MEAN_RADIUS_M} * asin(least(1, sqrt(
                   sin(radians(p.latitude - $1::float8) / 2) ^ 2
                   + cos(radians($1::float8)) * cos(radians(p.latitude))
                     * sin(radians(p.longitude - $2::float8) / 2) ^ 2))) AS distance_m
          FROM partners p
         WHERE p.category = ANY($3::text[])
           AND p.latitude BETWEEN $4::float8 AND $5::float8
           AND p.longitude BETWEEN $6::float8 AND $7::float8
           AND p.status = ANY($9::text[])) inside_box
 WHERE distance_m <= $8::float8
 ORDER BY distance_m, id
 LIMIT $10
"""


def search_arguments(latitude: float, longitude: float, radius_m: float,
                     category: str | None = None, *, include_inactive: bool = False,
                     limit_rows: int = DEFAULT_SEARCH_RESULTS_ROWS) -> tuple:
    """NEARBY_SQL's arguments, checked (also used to EXPLAIN the query in tests and the bench)."""
    if not (-90 <= latitude <= 90 and -180 <= longitude <= 180):
        raise Invalid("a point is a latitude in [-90, 90] and a longitude in [-180, 180]")
    if not 0 < radius_m <= MAX_SEARCH_RADIUS_M:
        raise Invalid(f"a search radius is more than 0 and at most {MAX_SEARCH_RADIUS_M} m")
    if not 1 <= limit_rows <= MAX_SEARCH_RESULTS_ROWS:
        raise Invalid(f"a search returns 1 to {MAX_SEARCH_RESULTS_ROWS} partners")
    categories = list(CATEGORIES) if category is None else [_category(category)]
    statuses = list(STATUSES) if include_inactive else ["ACTIVE"]
    box = bounding_box(latitude, longitude, radius_m)
    return (latitude, longitude, categories, box.lat_min, box.lat_max, box.lon_min, box.lon_max,
            float(radius_m), statuses, limit_rows)


async def partners_near(conn: asyncpg.Connection, latitude: float, longitude: float,
                        radius_m: float, category: str | None = None, *,
                        include_inactive: bool = False,
                        limit_rows: int = DEFAULT_SEARCH_RESULTS_ROWS) -> list[NearbyPartner]:
    """Active partners within radius_m of the point, nearest first (then by id)."""
    rows = await conn.fetch(NEARBY_SQL, *search_arguments(
        latitude, longitude, radius_m, category, include_inactive=include_inactive,
        limit_rows=limit_rows))
    return [NearbyPartner(**dict(r)) for r in rows]


def _category(text: str) -> str:
    category = text.strip().upper()
    if category not in CATEGORIES:
        raise Invalid(f"a partner category is one of {', '.join(CATEGORIES)} (got {text!r})")
    return category


async def add_partner(conn: asyncpg.Connection, *, name: str, category: str, address: str,
                      latitude: float, longitude: float, actor: str) -> Partner:
    """An ACTIVE partner with its own merchant payable account; its terminals are added with
    `hdfpay terminals add`."""
    with refusals():
        partner_id = await conn.fetchval("SELECT (add_partner($1, $2, $3, $4, $5, $6)).id", name,
                                         _category(category), address, latitude, longitude, actor)
    return await get_partner(conn, partner_id)


async def update_partner(conn: asyncpg.Connection, partner_id: int, *, actor: str,
                         name: str | None = None, category: str | None = None,
                         address: str | None = None, latitude: float | None = None,
                         longitude: float | None = None) -> Partner:
    """Fields left None keep their value; a change is audited with before and after."""
    with refusals():
        await conn.execute("SELECT update_partner($1, $2, $3, $4, $5, $6, $7)", partner_id, name,
                           None if category is None else _category(category), address, latitude,
                           longitude, actor)
    return await get_partner(conn, partner_id)


async def set_partner_status(conn: asyncpg.Connection, partner_id: int, status: str, *,
                             actor: str) -> Partner:
    """SUSPENDED: its terminals answer 58 until ACTIVE again. CLOSED is final."""
    with refusals():
        await conn.execute("SELECT set_partner_status($1, $2, $3)", partner_id,
                           status.strip().upper(), actor)
    return await get_partner(conn, partner_id)


_PARTNER_SQL = """
    SELECT p.id, p.name, p.category, p.address, p.latitude, p.longitude, p.status,
           coalesce(array_agg(t.id || ' ' || t.status ORDER BY t.id) FILTER (WHERE t.id IS NOT NULL),
                    '{}') AS terminals
      FROM partners p LEFT JOIN terminals t ON t.partner_id = p.id
"""


def _partner(row: asyncpg.Record) -> Partner:
    values = dict(row)
    values["terminals"] = tuple(tuple(t.split(" ", 1)) for t in values["terminals"])
    return Partner(**values)


async def get_partner(conn: asyncpg.Connection, partner_id: int) -> Partner:
    row = await conn.fetchrow(_PARTNER_SQL + " WHERE p.id = $1 GROUP BY p.id", partner_id)
    if row is None:
        raise NotFound(f"no partner {partner_id}")
    return _partner(row)


async def list_partners(conn: asyncpg.Connection, *, category: str | None = None,
                        status: str | None = None, limit_rows: int = LIST_LIMIT_ROWS) -> list[Partner]:
    rows = await conn.fetch(
        _PARTNER_SQL + " WHERE ($1::text IS NULL OR p.category = $1)"
        " AND ($2::text IS NULL OR p.status = $2) GROUP BY p.id ORDER BY p.id LIMIT $3",
        None if category is None else _category(category),
        None if status is None else status.strip().upper(), min(limit_rows, LIST_LIMIT_ROWS))
    return [_partner(r) for r in rows]
