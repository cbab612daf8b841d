""""Où utiliser ma carte ?": the partner shops nearest first, around a town, a postcode or the
browser's position, by category, with their distance and address, on a map of the region.

Public (students look before they have a card). A town or postcode search is a GET, so it can be
bookmarked and its suggestions are plain links; the browser's position comes by POST (with the
form's CSRF token) from static/geolocate.js, rounded to about 100 m, so that it never sits in a
URL, a history or a proxy's log. Nothing of the search is logged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from urllib.parse import urlencode

import aiohttp_jinja2
from aiohttp import web

from ledger.partners import MAX_SEARCH_RADIUS_M, partners_near
from portal.region_map import region_map
from portal.student_session import POOL, current
from portal.towns import MAX_QUERY_CHARS, NotFound, Place, find_place

PATH = "/ou-utiliser-ma-carte"
routes = web.RouteTableDef()

# The form's French values, to the ledger's categories (None: every category).
CATEGORY_CHOICES = {"": None, "livres": "BOOKSHOP", "equipement": "EQUIPMENT"}
CATEGORY_OPTIONS = (("", "Toutes les catégories"), ("livres", "Livres (librairies)"),
                    ("equipement", "Équipement professionnel"))
CATEGORY_LABELS = {"BOOKSHOP": "Librairie", "EQUIPMENT": "Équipement professionnel"}
RADIUS_CHOICES_KM = (5, 10, 25, 50, 100)
DEFAULT_RADIUS_KM = 25
MAX_RESULTS_ROWS = 20                # a list a student reads on a phone, and as many markers
DISTANCE_STEP_M = 100               # distances are shown to 0.1 km
POSITION_DECIMALS = 3                # 0.001° ≈ 100 m: enough to sort shops, no more
assert max(RADIUS_CHOICES_KM) * 1000 <= MAX_SEARCH_RADIUS_M, "the ledger bounds the radius"


@dataclass(frozen=True)
class Criteria:
    town: str
    category: str                    # a key of CATEGORY_CHOICES
    radius_km: int


@dataclass(frozen=True)
class Found:
    number: int
    name: str
    category: str
    css_class: str
    address: str
    distance: str
    x: float
    y: float


def km_fr(distance_m: float) -> str:
    """1234.5 m → '1,2 km' (French decimal comma); a shop next door is not at '0,0 km'."""
    if distance_m < DISTANCE_STEP_M:
        return "moins de 0,1 km"
    return f"{distance_m / 1000:.1f}".replace(".", ",") + " km"


def criteria(values) -> Criteria:
    """The form's fields, each brought back to an allowed value (a select cannot send others
    but a crafted URL can)."""
    town = values.get("ville")
    category = values.get("categorie")
    try:
        radius = int(values.get("rayon", DEFAULT_RADIUS_KM))
    except (TypeError, ValueError):
        radius = DEFAULT_RADIUS_KM
    return Criteria(town.strip()[:MAX_QUERY_CHARS] if isinstance(town, str) else "",
                    category if category in CATEGORY_CHOICES else "",
                    radius if radius in RADIUS_CHOICES_KM else DEFAULT_RADIUS_KM)


def browser_position(values) -> Place | NotFound:
    try:
        latitude, longitude = float(values.get("latitude", "")), float(values.get("longitude", ""))
    except (TypeError, ValueError):
        latitude = longitude = math.nan
    if not (math.isfinite(latitude) and math.isfinite(longitude)
            and -90 <= latitude <= 90 and -180 <= longitude <= 180):
        return NotFound("Votre position n'a pas pu être lue : indiquez votre ville ou votre "
                        "code postal.")
    return Place("votre position", round(latitude, POSITION_DECIMALS),
                 round(longitude, POSITION_DECIMALS))


def search_url(town: str, wanted: Criteria) -> str:
    return PATH + "?" + urlencode({"ville": town, "categorie": wanted.category,
                                   "rayon": wanted.radius_km})


async def _answer(request: web.Request, wanted: Criteria, place: Place | NotFound | None):
    whole = region_map()
    projection, view = whole.projection, whole.whole
    found: list[Found] = []
    if isinstance(place, Place):
        async with request.app[POOL].acquire() as conn:
            nearby = await partners_near(conn, place.latitude, place.longitude,
                                         wanted.radius_km * 1000, CATEGORY_CHOICES[wanted.category],
                                         limit_rows=MAX_RESULTS_ROWS)
        found = [Found(number, p.name, CATEGORY_LABELS.get(p.category, p.category),
                       p.category.lower(), p.address, km_fr(p.distance_m),
                       *projection.point(p.latitude, p.longitude))
                 for number, p in enumerate(nearby, start=1)]
        view = whole.around(place.latitude, place.longitude, wanted.radius_km,
                            [(f.x, f.y) for f in found])
    return aiohttp_jinja2.render_template("partners.html", request, {
        "session": current(request), "wanted": wanted, "place": place, "found": found,
        "searched": projection.point(place.latitude, place.longitude)
        if isinstance(place, Place) else None,
        "not_found": place if isinstance(place, NotFound) else None,
        "suggestion_urls": [(town.label, search_url(town.label, wanted))
                            for town in place.suggestions] if isinstance(place, NotFound) else [],
        "map": whole, "view": view, "path": PATH, "category_options": CATEGORY_OPTIONS,
        "radius_choices_km": RADIUS_CHOICES_KM, "max_query_chars": MAX_QUERY_CHARS})


@routes.get(PATH)
async def partners_page(request: web.Request):
    wanted = criteria(request.query)
    searching = "ville" in request.query
    return await _answer(request, wanted, find_place(wanted.town) if searching else None)


@routes.post(PATH)
async def partners_near_me(request: web.Request):
    """The browser's position, sent by static/geolocate.js."""
    form = await request.post()
    return await _answer(request, criteria(form), browser_position(form))
