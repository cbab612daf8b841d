"""The school year's bulk reload in the back office, in Chromium: on 25 June a region operator sets
the programmes' amounts, finds a run interrupted after two chunks, resumes it and watches it go to
the end (static/bulk_reload.js asking the page's JSON; chunks of CHUNK_ROWS over a few thousand
beneficiaries); every beneficiary credited once, each step audited as the API's. An auditor
reads on a phone. Every page as every role and anonymously."""

from __future__ import annotations

import collections
import dataclasses

import asyncpg
import pytest
from playwright.async_api import expect

from backoffice.api_school_year import BULK_RELOAD_PROGRESS, bulk_reload_rate
from backoffice.operator_auth import Role
from backoffice.pages_bulk_reload import BULK_RELOAD_REFRESH_S, _duration_fr
from ledger.bulk_reload import run_bulk_reload
from ledger.clock import pin_clock
from ledger.programmes import set_amount

from browser_fixtures import PHONE, screenshot
from bureau_pages import assert_roles_refused_pages, log_in, role_tokens, visit
from conftest import TEST_SCHOOL_YEAR, paris
from operator_fixtures import add_test_operator
from test_portal import _no_accessibility_violations

PASSWORD = "un mot de passe du bureau"
NEXT = TEST_SCHOOL_YEAR + 1
EXTRA_BENEFICIARIES = 4_000
CHUNK_ROWS = 200


@pytest.fixture
def settings(settings):
    """The listener's bulk reloads in small chunks, so that a few thousand make many."""
    return dataclasses.replace(settings, bulk_reload_chunk_rows=CHUNK_ROWS)


async def _next_year_renewed(conn) -> int:
    """25 June of the next year: the seed's students and EXTRA_BENEFICIARIES more renewed."""
    await conn.execute(
        "INSERT INTO beneficiaries (dossier_number, last_name, first_name, birth_date, email,"
        " establishment_id) SELECT 'HDF' || lpad((1000000 + i)::text, 7, '0'), 'Élève', 'Test',"
        " date '2009-01-01', 'charge' || i || '@exemple.fr', 1 + i % 2"
        " FROM generate_series(1, $1::integer) AS i", EXTRA_BENEFICIARIES)
    renewed = int((await conn.execute(
        "INSERT INTO rights (beneficiary_id, school_year, renewed_by) SELECT id, $1, 'test'"
        " FROM beneficiaries", NEXT)).split()[-1])
    await pin_clock(conn, paris(NEXT, 6, 25, 10, 0, 0))
    return renewed


async def test_an_operator_sets_the_amounts_resumes_the_reload_and_watches_it_end(
        server, dsn, conn, browser_page):
    renewed = await _next_year_renewed(conn)
    missing = [r["programme"] for r in await conn.fetch(
        "SELECT DISTINCT programme FROM rights WHERE school_year = $1 ORDER BY 1", NEXT)]
    region, _, _ = await add_test_operator(dsn, Role.REGION_OPERATOR, password=PASSWORD)
    page = await browser_page()
    await log_in(page, server.ops_url + "/bureau", region.login, PASSWORD)
    await page.get_by_role("link", name="Rechargement").click()
    await expect(page.get_by_role("heading", level=1)).to_have_text(
        f"Rechargement annuel {NEXT}-{NEXT + 1}")
    await expect(page.get_by_test_id("reload-state")).to_have_text("Pas encore lancé.")
    await page.get_by_role("button", name=f"Lancer le rechargement {NEXT}-{NEXT + 1}").click()
    await expect(page.get_by_role("alert")).to_contain_text("n'a pas de montant")
    for programme, euros in zip(missing, ("120,00", "180,5")):
        await page.get_by_label("Programme", exact=True).fill(programme)
        await page.get_by_label("Montant en euros").fill(euros)
        await page.get_by_role("button", name="Enregistrer").click()
        await expect(page.get_by_role("status")).to_have_text("Montant enregistré.")
    await expect(page.locator("main table").first).to_contain_text("180,50")
    await _no_accessibility_violations(page)

    # A run stopped after two chunks (a crash, a restart): the page offers to resume it.
    await run_bulk_reload(conn, NEXT, actor="test:interrupted", chunk_rows=CHUNK_ROWS, max_chunks=2)
    await page.reload()
    await expect(page.get_by_test_id("reload-state")).to_have_text(
        "Interrompu : il reprend là où il s'est arrêté.")
    await expect(page.get_by_test_id("reload-done")).to_have_text(f"{2 * CHUNK_ROWS} sur {renewed}")
    await screenshot(page, "backoffice-bulk-reload-interrupted-desktop")
    polls = []
    page.on("request", lambda request: polls.append(request.url)
            if request.url.endswith("/bureau/rechargement/etat") else None)
    await page.get_by_role("button", name="Reprendre le rechargement").click()
    await expect(page.get_by_test_id("reload-state")).to_have_text("Terminé.", timeout=60_000)
    await expect(page.get_by_test_id("reload-done")).to_have_text(f"{renewed} sur {renewed}")
    await screenshot(page, "backoffice-bulk-reload-finished-desktop")
    await _no_accessibility_violations(page)
    assert polls, "the page's script never asked for the progress"

    credited = await conn.fetchval("SELECT count(*) FROM transfers WHERE code = 'RELOAD'"
                                   " AND reference LIKE $1", f"bulk:{NEXT}:%")
    assert credited == renewed
    actions = [r["action"] for r in await conn.fetch(
        "SELECT action FROM audit_log WHERE actor = $1 AND action NOT LIKE 'operator.%'"
        " ORDER BY id", f"region_operator:{region.login}")]
    assert actions == ["reload_programme.set", "reload_programme.set", "reload.bulk_resume",
                       "reload.bulk_finish"]


async def test_without_javascript_the_page_refreshes_itself_until_the_end(
        server, dsn, conn, browser_page):
    """A run held up (its row locked by another session) is 'En cours…'; a browser without
    JavaScript gets the <noscript> refresh and sees the end once the run goes on."""
    renewed = await _next_year_renewed(conn)
    for programme in ("BOOKS", "EQUIPMENT"):
        await set_amount(conn, school_year=NEXT, programme=programme, amount_cents=100_00,
                         actor="test:amounts")
    await run_bulk_reload(conn, NEXT, actor="test:interrupted", chunk_rows=CHUNK_ROWS, max_chunks=1)
    region, token, _ = await add_test_operator(dsn, Role.REGION_OPERATOR, password=PASSWORD)
    bureau = server.ops_url + "/bureau"
    holder = await asyncpg.connect(dsn)
    try:
        hold = holder.transaction()
        await hold.start()
        await holder.execute("SELECT 1 FROM bulk_reload_runs WHERE school_year = $1 FOR UPDATE", NEXT)
        status, location, _, _ = await visit(server, token, "POST", f"{bureau}/rechargement/lancer")
        assert (status, location) == (303, "/bureau/rechargement?fait=lancement")
        page = await browser_page(java_script_enabled=False)
        await log_in(page, bureau, region.login, PASSWORD)
        await page.goto(f"{bureau}/rechargement")
        await expect(page.get_by_test_id("reload-state")).to_have_text("En cours…")
        await expect(page.get_by_test_id("reload-done")).to_have_text(f"{CHUNK_ROWS} sur {renewed}")
        assert f'http-equiv="refresh" content="{BULK_RELOAD_REFRESH_S}"' in await page.content()
        await expect(page.get_by_role("button", name="Reprendre le rechargement")).to_have_count(0)
        await screenshot(page, "backoffice-bulk-reload-running-no-js-desktop")
    finally:
        await hold.rollback()
        await holder.close()
    await expect(page.get_by_test_id("reload-state")).to_have_text(
        "Terminé.", timeout=(4 * BULK_RELOAD_REFRESH_S + 30) * 1000)
    await expect(page.get_by_test_id("reload-done")).to_have_text(f"{renewed} sur {renewed}")


async def test_the_state_is_json_and_an_auditor_reads_on_a_phone(server, dsn, conn, browser_page):
    await _next_year_renewed(conn)
    auditor, _, _ = await add_test_operator(dsn, Role.AUDITOR, password=PASSWORD)
    phone = await browser_page(PHONE)
    await log_in(phone, server.ops_url + "/bureau", auditor.login, PASSWORD)
    await phone.goto(server.ops_url + "/bureau/rechargement")
    await expect(phone.locator("main").get_by_role("button")).to_have_count(0)   # reads only
    await screenshot(phone, "backoffice-bulk-reload-auditor-phone")
    await _no_accessibility_violations(phone)
    assert await phone.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    reply = await phone.goto(server.ops_url + "/bureau/rechargement/etat")
    state = await reply.json()
    assert (state["school_year"], state["state"], state["running"]) == (NEXT, "none", False)
    assert "no-store" in reply.headers["cache-control"]


async def test_the_reload_pages_as_every_role_and_anonymously(server, dsn, conn):
    tokens = await role_tokens(dsn)
    bureau = server.ops_url + "/bureau"
    read = {Role.REGION_OPERATOR, Role.AUDITOR}
    await assert_roles_refused_pages(server, tokens, [
        ("GET", f"{bureau}/rechargement", None, read),
        ("GET", f"{bureau}/rechargement/etat", None, read),
        ("POST", f"{bureau}/rechargement/montants", {"programme": "BOOKS", "montant": "-1"},
         {Role.REGION_OPERATOR}),                                                 # refused
    ])
    for role in (None, Role.ESTABLISHMENT_STAFF, Role.PARTNER, Role.AUDITOR):   # region: above
        status, location, _, _ = await visit(server, tokens[role], "POST", f"{bureau}/rechargement/lancer")
        assert (status, location) in ((303, "/bureau/connexion"), (403, "")), role
    assert await conn.fetchval("SELECT count(*) FROM audit_log WHERE actor <> 'test:ops_client'") == 0
    assert await conn.fetchval("SELECT count(*) FROM bulk_reload_runs WHERE started_by LIKE '%test-%'") == 0


def test_the_rate_and_the_time_left_are_measured_on_the_wall_clock():
    app = {BULK_RELOAD_PROGRESS: {NEXT: collections.deque([(100.0, 0), (101.0, 400), (102.0, 1000)])}}
    assert bulk_reload_rate(app, NEXT) == 500.0
    app[BULK_RELOAD_PROGRESS][NEXT] = collections.deque([(100.0, 0)])
    assert bulk_reload_rate(app, NEXT) is None                  # one chunk: no rate yet
    assert [_duration_fr(s) for s in (None, 0.4, 59, 61, 3_725)] == [
        "—", "0 s", "59 s", "1 min 01 s", "1 h 02 min"]
