""""Où utiliser ma carte ?" in Debian's Chromium against the real server and the seeded region:
by postcode, by town name, by category, from the browser's position ("Me localiser"), a bad
postcode and an unknown town answered in French; the strict CSP kept (no inline script or
style); no axe-core WCAG 2.1 A/AA violation; screenshots at a phone's and a computer's size.
Pure tests of the projection and of the town lookup beside them."""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser

import aiohttp
from axe_playwright_python.async_playwright import Axe
from playwright.async_api import expect
from yarl import URL

from ledger.demo_region import PARTNERS
from ledger.partners import haversine_m
from portal.pages_partners import DEFAULT_RADIUS_KM, criteria, km_fr
from portal.region_map import MAP_WIDTH_PX, region_map
from portal.towns import NotFound, Place, communes, find_place, normalise

from browser_fixtures import DESKTOP, PHONE, screenshot

PAGE = "/ou-utiliser-ma-carte"
WCAG_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]
ACTIVE_PARTNERS = [p for p in PARTNERS if "Suspendue" not in p[0]]
NEAR_ARRAS = {"latitude": 50.2905, "longitude": 2.7752}     # a street of Arras
DISTANCE_FR = re.compile(r"à (\d+,\d|moins de 0,1) km")


def nearest(place: Place, category: str | None = None) -> str:
    """The name of the seeded active partner nearest the place, as the page must list first."""
    return min((p for p in ACTIVE_PARTNERS if category in (None, p[1])),
               key=lambda p: haversine_m(place.latitude, place.longitude, p[3], p[4]))[0]


async def _no_accessibility_violations(page) -> None:
    results = await Axe().run(page, options={"runOnly": {"type": "tag", "values": WCAG_TAGS}})
    violations = [(v["id"], v["help"]) for v in results.response["violations"]]
    assert violations == [], violations


def _results(page):
    return page.get_by_test_id("partenaires").locator("li")


async def test_partners_by_postcode_town_and_category_on_a_phone_and_a_computer(
        server, browser_page):
    portal = server.portal_url
    page = await browser_page(PHONE)
    await page.goto(portal + "/connexion")                       # no login needed: a link for all
    await page.get_by_role("link", name="Où utiliser ma carte ?").click()
    await expect(page).to_have_url(portal + PAGE)
    await expect(page.get_by_role("heading", level=1)).to_have_text("Où utiliser ma carte ?")

    await page.get_by_label("Ville ou code postal").fill("59000")
    await page.get_by_role("button", name="Rechercher").click()
    lille = find_place("59000")
    await expect(_results(page).first).to_contain_text(nearest(lille))
    assert nearest(lille) == "Librairie Meura"
    await expect(_results(page).first).to_contain_text("Librairie")
    await expect(_results(page).first).to_contain_text("25 rue de Valmy, 59000 Lille")
    assert DISTANCE_FR.search(await _results(page).first.inner_text())
    # Lille's and Roubaix's partners, every one within the default radius, nearest first.
    assert await _results(page).count() == sum(
        haversine_m(lille.latitude, lille.longitude, p[3], p[4]) <= DEFAULT_RADIUS_KM * 1000
        for p in ACTIVE_PARTNERS) == 4
    await expect(page.locator("svg .marker")).to_have_count(4)
    await expect(page.locator("svg path.searched")).to_have_count(1)
    await expect(page.locator("svg title").first).to_have_text("Carte des Hauts-de-France")
    await screenshot(page, "portal-partners-phone")
    await _no_accessibility_violations(page)

    desktop = await browser_page(DESKTOP)
    await desktop.goto(portal + PAGE)
    await desktop.get_by_label("Ville ou code postal").fill("amiens")         # any case
    await desktop.get_by_label("Catégorie").select_option(label="Équipement professionnel")
    await desktop.get_by_role("button", name="Rechercher").click()
    amiens = find_place("Amiens")
    await expect(desktop.get_by_role("heading", level=2, name=re.compile("Amiens"))).to_be_visible()
    await expect(_results(desktop).first).to_contain_text(nearest(amiens, "EQUIPMENT"))
    assert nearest(amiens, "EQUIPMENT") == "Équipement Hôtellerie Picardie"
    await expect(_results(desktop)).to_have_count(1)                       # the bookshop is not
    await expect(desktop.get_by_label("Catégorie")).to_have_value("equipement")   # kept
    await screenshot(desktop, "portal-partners-desktop")
    await _no_accessibility_violations(desktop)

    await desktop.get_by_label("Catégorie").select_option(label="Livres (librairies)")
    await desktop.get_by_label("Distance maximale").select_option(label="100 km")
    await desktop.get_by_role("button", name="Rechercher").click()
    await expect(_results(desktop).first).to_contain_text("Librairie du Labyrinthe")
    for text in await _results(desktop).all_inner_texts():
        assert "Librairie" in text and "Équipement" not in text


async def test_me_localiser_lists_the_partners_nearest_the_browsers_position(server, browser_page):
    portal = server.portal_url
    page = await browser_page(PHONE)
    await page.context.grant_permissions(["geolocation"], origin=portal)
    await page.context.set_geolocation(NEAR_ARRAS)
    await page.goto(portal + PAGE)
    await page.get_by_role("button", name="Me localiser").click()
    here = Place("", **NEAR_ARRAS)
    await expect(_results(page).first).to_contain_text(nearest(here))
    assert nearest(here) == "Bâti Outils Artois"
    await expect(page.get_by_role("heading", level=2)
                 .filter(has_text="votre position")).to_be_visible()
    await expect(page).to_have_url(portal + PAGE)                 # the position is not in a URL
    await screenshot(page, "portal-partners-located-phone")
    await _no_accessibility_violations(page)

    await page.get_by_label("Catégorie").select_option(label="Livres (librairies)")
    await page.get_by_role("button", name="Me localiser").click()
    await expect(_results(page).first).to_contain_text(nearest(here, "BOOKSHOP"))
    assert nearest(here, "BOOKSHOP") == "Librairie Au Pied de la Lettre"
    await expect(_results(page)).to_have_count(1)


async def test_a_bad_postcode_and_an_unknown_town_are_answered_in_french(server, browser_page):
    portal = server.portal_url
    page = await browser_page(PHONE)
    await page.goto(portal + PAGE + "?ville=99999")
    await expect(page.get_by_role("alert")).to_have_text(
        "Le code postal 99999 n'est pas dans les Hauts-de-France "
        "(Aisne, Nord, Oise, Pas-de-Calais, Somme).")
    await page.get_by_label("Ville ou code postal").fill("Amien")
    await page.get_by_role("button", name="Rechercher").click()
    await expect(page.get_by_role("alert")).to_contain_text(
        "Nous ne trouvons pas la commune « Amien »")
    await screenshot(page, "portal-partners-unknown-town-phone")
    await _no_accessibility_violations(page)
    await page.get_by_role("link", name="Amiens (80000)").click()       # the suggestion
    await expect(_results(page).first).to_contain_text("Librairie du Labyrinthe")


class _Inline(HTMLParser):
    """What a strict CSP would block: inline scripts, style elements and style attributes."""

    def __init__(self):
        super().__init__()
        self.scripts, self.inline, self.styled, self._in_script = [], [], [], False

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if "style" in attributes or tag == "style":
            self.styled.append(tag)
        if any(name.startswith("on") for name in attributes):
            self.inline.append(f"{tag} handler")
        if tag == "script":
            self.scripts.append(attributes.get("src"))
            self._in_script = True

    def handle_endtag(self, tag):
        self._in_script = self._in_script and tag != "script"

    def handle_data(self, data):
        if self._in_script and data.strip():
            self.inline.append(data.strip()[:40])


async def test_the_page_keeps_the_strict_csp_and_bounds_what_it_is_sent(server):
    portal = server.portal_url
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
        for query in ("", "?ville=Lille", "?ville=Amien", "?ville=Arras&categorie=x&rayon=9999"):
            async with browser.get(portal + PAGE + query) as answer:
                assert answer.status == 200                                   # public
                csp = answer.headers["Content-Security-Policy"]
                assert "default-src 'none'" in csp and "script-src 'self';" in csp
                assert "unsafe-inline" not in csp and "http" not in csp
                found = _Inline()
                found.feed(await answer.text())
                assert (found.scripts, found.inline, found.styled) == (
                    ["/static/geolocate.js"], [], [])
        async with browser.get(portal + "/static/geolocate.js") as script:
            assert script.status == 200 and "navigator.geolocation" in await script.text()
        # A position without the form's token is refused; a position that is no position is
        # answered in French.
        async with browser.post(portal + PAGE, data={"latitude": "50.3",
                                                     "longitude": "2.8"}) as refused:
            assert refused.status == 403
        token = browser.cookie_jar.filter_cookies(URL(portal))["hdf_csrf"].value
        async with browser.post(portal + PAGE, data={"csrf_token": token, "latitude": "nan",
                                                     "longitude": "1e999"}) as answer:
            assert answer.status == 200
            assert "Votre position n'a pas pu être lue" in html.unescape(await answer.text())


# Pure tests: no server, no browser.

def test_the_projection_puts_the_regions_towns_where_they_are():
    region = region_map()
    point = region.projection.point
    lille, amiens, calais = (find_place(name) for name in ("Lille", "Amiens", "Calais"))
    (lx, ly), (ax, ay), (cx, cy) = (point(t.latitude, t.longitude) for t in (lille, amiens, calais))
    assert ly < ay and cx < lx and cy < ly and ax < lx            # north is up, west is left
    # Equirectangular at 50° N: a degree of longitude is cos(50°) ≈ 0.643 of one of latitude.
    x0, y0 = point(50.0, 2.0)
    x1, _ = point(50.0, 3.0)
    _, y1 = point(49.0, 2.0)
    assert abs((x1 - x0) / (y1 - y0) - 0.6428) < 0.001
    assert region.width == MAP_WIDTH_PX
    for town in communes():                                       # every commune on the map
        x, y = point(town.latitude, town.longitude)
        assert 0 <= x <= region.width and 0 <= y <= region.height, town
    assert sorted(d.name for d in region.departements) == [
        "Aisne", "Nord", "Oise", "Pas-de-Calais", "Somme"]


def test_the_map_zooms_on_the_search_and_keeps_every_partner_found_in_view():
    region = region_map()
    lille = find_place("Lille")
    shops = [region.projection.point(p[3], p[4]) for p in ACTIVE_PARTNERS[:2]]
    view = region.around(lille.latitude, lille.longitude, 5, shops)
    assert view.width < region.width / 5                          # a town, not the region
    assert abs(view.width / view.height - region.width / region.height) < 0.01
    for x, y in shops + [region.projection.point(lille.latitude, lille.longitude)]:
        assert view.x <= x <= view.x + view.width and view.y <= y <= view.y + view.height
    assert view.marker_radius < region.whole.marker_radius
    assert region.around(lille.latitude, lille.longitude, 100, shops) == region.whole
    calais = find_place("Calais")                                 # at the edge: stays inside
    edge = region.around(calais.latitude, calais.longitude, 25, [])
    assert edge.x >= 0 and edge.y >= 0


def test_the_town_lookup_forgives_case_accents_and_abbreviations():
    assert normalise("ST-QUENTIN") == normalise("Saint Quentin") == "saint quentin"
    assert find_place("st quentin").label == "Saint-Quentin (02100)"
    assert find_place("VILLENEUVE D'ASCQ").label == "Villeneuve-d'Ascq (59491)"
    assert find_place("Ecourt St Quentin").label == "Écourt-Saint-Quentin (62860)"
    assert find_place("Arras (62000)").label == "Arras (62000)"
    assert find_place("59000").label == "Lille (59000)"
    assert find_place("80080").label == "Amiens (80000)"            # one of Amiens' postcodes
    shared = find_place("02000")                                     # Laon and its neighbours
    assert isinstance(shared, Place) and shared.label == "code postal 02000"
    homonym = find_place("Rouvroy")
    assert isinstance(homonym, NotFound) and {t.label for t in homonym.suggestions} == {
        "Rouvroy (02100)", "Rouvroy (62320)"}
    assert find_place("Rouvroy 62320").label == "Rouvroy (62320)"
    assert len(communes()) > 3_800


def test_the_town_lookup_says_what_is_wrong_in_french():
    assert find_place("75001").message.startswith("Le code postal 75001 n'est pas dans les Hauts")
    assert find_place("59999").message == (
        "Nous ne trouvons pas le code postal 59999 dans les Hauts-de-France.")
    assert find_place("   ").message == "Indiquez une ville ou un code postal."
    assert "au plus" in find_place("x" * 81).message
    assert find_place("Amien").suggestions[0].label == "Amiens (80000)"
    assert find_place("xyzzy").suggestions == ()


def test_the_form_values_are_brought_back_to_the_allowed_ones():
    assert criteria({"ville": " Lille ", "categorie": "livres", "rayon": "10"}) == (
        criteria({"ville": "Lille", "categorie": "livres", "rayon": 10}))
    crafted = criteria({"ville": ["x"], "categorie": "BOOKSHOP", "rayon": "100000"})
    assert (crafted.town, crafted.category, crafted.radius_km) == ("", "", DEFAULT_RADIUS_KM)
    assert km_fr(1234.5) == "1,2 km" and km_fr(40) == "moins de 0,1 km"
