"""The back office in Chromium, as region staff work: log in, find a student, oppose the card
(then a terminal declines it, 41), replace it (the new card is approved). Each role's refusals
on the pages: anonymous visitors go to the login page, an establishment's staff see only their
own students and act on none, auditors read and act on nothing, partners see none of it."""

from __future__ import annotations

import aiohttp
from playwright.async_api import expect
from yarl import URL

from backoffice.operator_auth import Role
from ledger.demo_region import card_uid

from browser_fixtures import screenshot
from operator_fixtures import add_test_operator
from test_portal import _no_accessibility_violations, _student

CARD = card_uid(5)
NEW_UID = "04C1C2C3C4C5C6"
OPERATOR_PASSWORD = "un mot de passe du bureau"


async def test_an_operator_opposes_then_replaces_a_students_card(server, dsn, conn, client,
                                                                browser_page):
    account, _, _ = await add_test_operator(dsn, Role.REGION_OPERATOR, password=OPERATOR_PASSWORD)
    dossier, _, _ = await _student(conn, CARD)
    bureau = server.ops_url + "/bureau"
    page = await browser_page()
    await page.goto(bureau + "/")
    await expect(page).to_have_url(bureau + "/connexion")
    await page.get_by_label("Identifiant").fill(account.login)
    await page.get_by_label("Mot de passe").fill(OPERATOR_PASSWORD)
    await _no_accessibility_violations(page)
    await page.get_by_role("button", name="Se connecter").click()
    await page.get_by_label("N° de dossier, n° de carte, nom ou e-mail").fill(dossier)
    await page.get_by_role("button", name="Rechercher").click()
    await expect(page.get_by_role("heading", name="1 résultat(s)")).to_be_visible()
    await _no_accessibility_violations(page)
    await page.get_by_role("link", name=dossier).click()
    await expect(page.get_by_test_id("balance")).to_contain_text("€")
    await screenshot(page, "backoffice-beneficiary-desktop")
    await _no_accessibility_violations(page)

    await page.get_by_label("perte").check()
    await page.get_by_label("Je confirme l'opposition définitive").check()
    await page.get_by_role("button", name="Opposer").click()
    await expect(page.get_by_role("status")).to_contain_text("Carte opposée")
    assert (await client.purchase(CARD, 1_00)).rc == "41"

    await page.get_by_label("UID de la nouvelle carte (hexadécimal)").fill(NEW_UID)
    await page.get_by_role("button", name="Remplacer").click()
    await expect(page.get_by_role("status")).to_contain_text("Nouvelle carte émise")
    assert (await client.purchase(NEW_UID, 1_00)).rc == "00"
    actions = await conn.fetch("SELECT action FROM audit_log WHERE actor = $1 ORDER BY id",
                               f"region_operator:{account.login}")
    assert [r["action"] for r in actions] == ["operator.login", "card.oppose", "card.replace"]


async def test_each_role_is_refused_what_it_may_not_do_on_the_pages(server, dsn, conn):
    bureau = server.ops_url + "/bureau"
    dossier, _, card_id = await _student(conn, CARD)
    student = await conn.fetchrow("SELECT id, establishment_id FROM beneficiaries"
                                  " WHERE dossier_number = $1", dossier)
    other_school = await conn.fetchval("SELECT id FROM establishments WHERE id <> $1 LIMIT 1",
                                       student["establishment_id"])
    own_staff = await add_test_operator(dsn, Role.ESTABLISHMENT_STAFF,
                                        establishment_id=student["establishment_id"])
    other_staff = await add_test_operator(dsn, Role.ESTABLISHMENT_STAFF, establishment_id=other_school)
    auditor = await add_test_operator(dsn, Role.AUDITOR)
    partner = await add_test_operator(dsn, Role.PARTNER)
    beneficiary_page = f"{bureau}/beneficiaires/{student['id']}"
    opposition = f"{bureau}/cartes/{card_id}/opposition"
    form = {"csrf_token": "t", "motif": "vol", "confirmation": "oui"}

    async def visit(token: str | None, method: str, url: str) -> tuple[int, str, str]:
        jar = aiohttp.CookieJar(unsafe=True)
        jar.update_cookies({"hdf_csrf": "t", **({"hdf_ops_session": token} if token else {})},
                           URL(server.ops_url))
        async with aiohttp.ClientSession(cookie_jar=jar) as browser:
            async with browser.request(method, url, data=form if method == "POST" else None,
                                       allow_redirects=False) as reply:
                return reply.status, reply.headers.get("Location", ""), await reply.text()

    assert (await visit(None, "GET", beneficiary_page))[:2] == (303, "/bureau/connexion")
    assert (await visit(None, "POST", opposition))[:2] == (303, "/bureau/connexion")
    status, _, text = await visit(own_staff[1], "GET", beneficiary_page)
    assert status == 200 and dossier in text and "Opposer" not in text
    assert (await visit(other_staff[1], "GET", beneficiary_page))[0] == 404
    status, _, text = await visit(auditor[1], "GET", beneficiary_page)
    assert status == 200 and "Opposer" not in text and "Remplacer" not in text
    for token in (own_staff[1], auditor[1], partner[1]):
        assert (await visit(token, "POST", opposition))[0] == 403
    assert (await visit(partner[1], "GET", f"{bureau}/?q={dossier}"))[0] == 403
    assert await conn.fetchval("SELECT status FROM cards WHERE id = $1", card_id) == "ACTIVE"
