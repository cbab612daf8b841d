"""Partners and their terminals in the back office, in Chromium: a region operator finds a shop,
reads its terminals' key ids and transport key check values (the HSM's, never a key), the day's
and the day before's messages and the settled days; suspends a terminal and the shop (the till
then gets 58) and activates them again; adds a partner. A partner account reads its own shop on a
phone and no other. Every page as every role and anonymously; each change audited as the API's
and the CLI's."""

from __future__ import annotations

from playwright.async_api import expect

from backoffice.operator_auth import Role
from hsm.key_aliases import kbpk_alias
from ledger import settlement
from ledger.clock import pin_clock
from ledger.demo_region import card_uid

from browser_fixtures import PHONE, screenshot
from bureau_pages import assert_roles_refused_pages, log_in, role_tokens, visit
from conftest import ACTIVE_TERMINAL, paris
from operator_fixtures import add_test_operator
from test_portal import _no_accessibility_violations

PASSWORD = "un mot de passe du bureau"
CARD = card_uid(7)
TOO_MUCH_CENTS = 9_999_99


async def _shop(conn) -> tuple[int, str]:
    row = await conn.fetchrow("SELECT p.id, p.name FROM terminals t JOIN partners p"
                              " ON p.id = t.partner_id WHERE t.id = $1", ACTIVE_TERMINAL)
    return row["id"], row["name"]


async def _two_days_of_sales(conn, client) -> None:
    """25 November: a 12,50 € sale and a decline, settled the next morning; 26 November: 5 €."""
    await pin_clock(conn, paris(2026, 11, 25, 16, 0))
    assert (await client.purchase(CARD, 12_50)).rc == "00"
    assert (await client.purchase(CARD, TOO_MUCH_CENTS)).rc not in ("00", "10")
    await pin_clock(conn, paris(2026, 11, 26, 10, 0))
    await settlement.settle(conn, actor="test:settlement")
    assert (await client.purchase(CARD, 5_00)).rc == "00"


async def test_an_operator_reads_a_shop_suspends_and_activates_it_and_adds_a_partner(
        server, dsn, conn, client, hsm, browser_page):
    partner_id, shop_name = await _shop(conn)
    await _two_days_of_sales(conn, client)
    region, _, _ = await add_test_operator(dsn, Role.REGION_OPERATOR, password=PASSWORD)
    bureau = server.ops_url + "/bureau"
    page = await browser_page()
    await log_in(page, bureau, region.login, PASSWORD)
    await page.get_by_role("link", name="Partenaires").click()
    await _no_accessibility_violations(page)
    await page.get_by_role("link", name=shop_name, exact=True).click()
    await expect(page.get_by_test_id(f"kcv-{ACTIVE_TERMINAL}")).to_have_text(
        hsm.key_info(kbpk_alias(ACTIVE_TERMINAL)).kcv)
    totals = page.get_by_test_id("day-totals")
    await expect(totals).to_contain_text("1 · 5,00 €")
    await expect(page.get_by_role("heading", name="Opérations du 26/11/2026 (aujourd'hui)")
                 ).to_be_visible()
    settled = page.get_by_role("region", name="Journées réglées (31 derniers jours)")
    await expect(settled).to_contain_text("25/11/2026")
    await expect(settled).to_contain_text("12,50 €")
    await screenshot(page, "backoffice-partner-desktop")
    await _no_accessibility_violations(page)
    await page.get_by_role("link", name="Jour précédent").click()
    await expect(page.get_by_role("heading", name="Opérations du 25/11/2026")).to_be_visible()
    await expect(totals).to_contain_text("Refus1 sur 2 message(s)")
    await expect(page.locator("main")).to_contain_text("Montant supérieur")   # the decline's text

    await page.get_by_role("button", name=f"Suspendre le terminal {ACTIVE_TERMINAL}").click()
    await expect(page.get_by_role("status")).to_contain_text("Terminal suspendu")
    assert (await client.purchase(CARD, 1_00)).rc == "58"
    await page.get_by_role("button", name=f"Activer le terminal {ACTIVE_TERMINAL}").click()
    await expect(page.get_by_role("status")).to_have_text("Terminal activé.")
    await page.get_by_role("button", name="Suspendre le partenaire").click()
    await expect(page.get_by_test_id("partner-status")).to_have_text("suspendu")
    assert (await client.purchase(CARD, 1_00)).rc == "58"
    await page.get_by_role("button", name="Activer le partenaire").click()
    await expect(page.get_by_test_id("partner-status")).to_have_text("actif")
    assert (await client.purchase(CARD, 1_00)).rc == "00"

    await page.get_by_role("link", name="Tous les partenaires").click()
    await page.get_by_label("Nom de la boutique").fill("Librairie du Beffroi")
    await page.get_by_label("Catégorie").select_option("BOOKSHOP")
    await page.get_by_label("Adresse").fill("12 place du Général-de-Gaulle, 59800 Lille")
    await page.get_by_label("Latitude (degrés)").fill("50,6366")
    await page.get_by_label("Longitude (degrés)").fill("3,0635")
    await page.get_by_role("button", name="Ajouter").click()
    await expect(page.get_by_role("status")).to_have_text("Partenaire ajouté.")
    await expect(page.get_by_role("heading", name="Librairie du Beffroi")).to_be_visible()

    rows = await conn.fetch("SELECT action, subject FROM audit_log WHERE actor = $1"
                            " AND action <> 'operator.login' ORDER BY id",
                            f"region_operator:{region.login}")
    new_id = await conn.fetchval("SELECT id FROM partners WHERE name = 'Librairie du Beffroi'")
    assert [(r["action"], r["subject"]) for r in rows] == [
        ("terminal.status", f"terminal:{ACTIVE_TERMINAL}"),
        ("terminal.status", f"terminal:{ACTIVE_TERMINAL}"),
        ("partner.suspend", f"partner:{partner_id}"), ("partner.activate", f"partner:{partner_id}"),
        ("partner.add", f"partner:{new_id}")]


async def test_a_partner_reads_its_own_shop_on_a_phone_and_no_other(
        server, dsn, conn, client, browser_page):
    partner_id, shop_name = await _shop(conn)
    await _two_days_of_sales(conn, client)
    account, _, _ = await add_test_operator(dsn, Role.PARTNER, partner_id=partner_id,
                                            password=PASSWORD)
    bureau = server.ops_url + "/bureau"
    phone = await browser_page(PHONE)
    await log_in(phone, bureau, account.login, PASSWORD)
    await phone.get_by_role("link", name="Ma boutique").click()
    await expect(phone.get_by_role("heading", name=shop_name)).to_be_visible()
    await expect(phone.get_by_test_id("day-totals")).to_contain_text("1 · 5,00 €")
    await expect(phone.locator("main").get_by_role("button")).to_have_count(0)   # reads only
    await expect(phone.get_by_role("link", name="Tous les partenaires")).to_have_count(0)
    await screenshot(phone, "backoffice-partner-own-shop-phone")
    await _no_accessibility_violations(phone)
    assert await phone.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    other = await conn.fetchval("SELECT min(id) FROM partners WHERE id <> $1", partner_id)
    response = await phone.goto(f"{bureau}/partenaires/{other}")
    assert response.status == 403
    await expect(phone.get_by_role("alert")).to_contain_text("ne donne pas accès")


async def test_the_partner_pages_as_every_role_and_anonymously(server, dsn, conn):
    partner_id, _ = await _shop(conn)
    other = await conn.fetchval("SELECT min(id) FROM partners WHERE id <> $1", partner_id)
    tokens = await role_tokens(dsn, partner_id=partner_id)
    bureau = server.ops_url + "/bureau"
    region_auditor = {Role.REGION_OPERATOR, Role.AUDITOR}
    await assert_roles_refused_pages(server, tokens, [
        ("GET", f"{bureau}/partenaires", None, region_auditor),
        ("GET", f"{bureau}/partenaires?statut=SUSPENDED", None, region_auditor),
        ("POST", f"{bureau}/partenaires", {"nom": "x"}, {Role.REGION_OPERATOR}),   # refused
        ("GET", f"{bureau}/partenaires/{partner_id}", None, region_auditor | {Role.PARTNER}),
        ("GET", f"{bureau}/partenaires/{partner_id}?jour=2026-11-25&avant=99", None,
         region_auditor | {Role.PARTNER}),
        ("POST", f"{bureau}/partenaires/{partner_id}/statut", {"statut": "CLOSED"},
         {Role.REGION_OPERATOR}),                                                 # refused
        ("POST", f"{bureau}/terminaux/{ACTIVE_TERMINAL}/statut", {"statut": "REVOKED"},
         {Role.REGION_OPERATOR}),                                                 # refused
    ])
    status, _, text, _ = await visit(server, tokens[Role.PARTNER], "GET",
                                     f"{bureau}/partenaires/{other}")
    assert status == 403 and "ne voit que sa propre boutique" in text
    status, _, text, _ = await visit(server, tokens[Role.REGION_OPERATOR], "POST",
                                     f"{bureau}/terminaux/{ACTIVE_TERMINAL}/statut",
                                     {"statut": "SUSPENDED"}, csrf_field="not-the-cookie")
    assert status == 403 and "Formulaire expiré" in text          # a forged form changes nothing
    assert await conn.fetchval("SELECT count(*) FROM audit_log WHERE actor <> 'test:ops_client'") == 0
    assert await conn.fetchval("SELECT status FROM terminals WHERE id = $1",
                               ACTIVE_TERMINAL) == "ACTIVE"
