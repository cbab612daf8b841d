"""Settlement in the back office, in Chromium: a region operator settles the closed days through
24 November, reads the run's lines, makes the payout files and downloads them (an attachment,
never cached, each download audited as the API's); a partner reads on a phone only its own settled
days and is refused the run and its files. Every page as every role and anonymously."""

from __future__ import annotations

from playwright.async_api import expect

from backoffice.operator_auth import Role
from backoffice.payout_files import set_payee

from browser_fixtures import PHONE, screenshot
from bureau_pages import assert_roles_refused_pages, log_in, role_tokens, visit
from operator_fixtures import add_test_operator
from test_payout_files import REGION as REGION_ACCOUNT, french_iban
from test_portal import _no_accessibility_violations
from test_reports import busy_days

PASSWORD = "un mot de passe du bureau"
PAID_PARTNERS = (1, 2, 7)          # busy_days' shops: 37,50 €, 7,00 €, 99,00 € on 24 November


async def _payees(conn) -> None:
    for partner in PAID_PARTNERS:
        await set_payee(conn, partner, name=f"SARL {partner}", iban=french_iban(partner),
                        bic="BNPAFRPP", actor="test:payees")


async def test_an_operator_settles_makes_and_downloads_the_payout_files(
        server, dsn, conn, browser_page):
    await busy_days(conn)
    await _payees(conn)
    region, _, _ = await add_test_operator(dsn, Role.REGION_OPERATOR, password=PASSWORD)
    page = await browser_page()
    await log_in(page, server.ops_url + "/bureau", region.login, PASSWORD)
    await page.get_by_role("link", name="Règlements").click()
    await expect(page.get_by_role("heading", name="0 règlement(s)")).to_be_visible()
    await _no_accessibility_violations(page)
    await page.get_by_label("Jusqu'au (facultatif)").fill("2026-11-24")
    await page.get_by_role("button", name="Régler").click()
    await expect(page.get_by_role("status")).to_have_text("Journées réglées.")
    await expect(page.get_by_test_id("run-paid")).to_have_text("143,50\u00a0€")
    await expect(page.get_by_test_id("run-lines").locator("tbody tr")).to_have_count(3)

    await page.get_by_label("Titulaire du compte de la Région").fill(REGION_ACCOUNT.name)
    await page.get_by_label("IBAN de la Région").fill("FR76 0000")
    await page.get_by_label("BIC de la Région").fill(REGION_ACCOUNT.bic)
    await page.get_by_role("button", name="Établir les fichiers de virement").click()
    await expect(page.get_by_role("alert")).to_contain_text("Fichiers refusés")   # a wrong IBAN
    assert await conn.fetchval("SELECT count(*) FROM payout_files") == 0
    await page.get_by_label("IBAN de la Région").fill(REGION_ACCOUNT.iban)
    await page.get_by_role("button", name="Établir les fichiers de virement").click()
    await expect(page.get_by_role("status")).to_have_text("Fichiers de virement établis.")
    await screenshot(page, "backoffice-settlement-run-desktop")
    await _no_accessibility_violations(page)

    async with page.expect_download() as waiting:
        await page.get_by_role("link", name="Télécharger le CSV").click()
    download = await waiting.value
    assert download.suggested_filename == "hdfpay-payout-run000001.csv"
    csv_text = open(await download.path(), encoding="utf-8", newline="").read()
    assert csv_text.count("\r\n") == 4 and french_iban(7) in csv_text.replace(" ", "")
    audited = await conn.fetch("SELECT action, subject, after FROM audit_log WHERE actor = $1"
                               " AND action LIKE 'settlement.%' ORDER BY id",
                               f"region_operator:{region.login}")
    assert [(r["action"], r["subject"]) for r in audited] == [
        ("settlement.run", "settlement_run:1"), ("settlement.payout_file", "settlement_run:1"),
        ("settlement.payout_file_download", "settlement_run:1")]
    assert '"file": "hdfpay-payout-run000001.csv"' in audited[-1]["after"]


async def test_a_partner_sees_only_its_own_settlement(server, dsn, conn, browser_page):
    await busy_days(conn)
    await _payees(conn)
    region, region_token, _ = await add_test_operator(dsn, Role.REGION_OPERATOR)
    status, location, _, _ = await visit(server, region_token, "POST",
                                         server.ops_url + "/bureau/reglements",
                                         {"jusqu_au": "2026-11-24"})
    assert (status, location) == (303, "/bureau/reglements/1?fait=regle")
    shop, _, _ = await add_test_operator(dsn, Role.PARTNER, partner_id=2, password=PASSWORD)
    phone = await browser_page(PHONE)
    bureau = server.ops_url + "/bureau"
    await log_in(phone, bureau, shop.login, PASSWORD)
    await phone.get_by_role("link", name="Règlements").click()
    lines = phone.get_by_test_id("partner-lines").locator("tbody tr")
    await expect(lines).to_have_count(1)
    await expect(lines.first).to_contain_text("24/11/2026")
    await expect(lines.first).to_contain_text("7,00")
    await expect(phone.locator("main")).not_to_contain_text("37,50")      # partner 1's day
    await expect(phone.locator("main").get_by_role("button")).to_have_count(0)
    await screenshot(phone, "backoffice-settlement-partner-phone")
    await _no_accessibility_violations(phone)
    assert await phone.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    for path in ("/reglements/1", "/reglements/1/fichiers/csv"):
        assert (await phone.goto(bureau + path)).status == 403


async def test_the_settlement_pages_as_every_role_and_anonymously(server, dsn, conn):
    await busy_days(conn)
    await _payees(conn)
    tokens = await role_tokens(dsn, partner_id=2)
    bureau = server.ops_url + "/bureau"
    status, _, _, _ = await visit(server, tokens[Role.REGION_OPERATOR], "POST",
                                  f"{bureau}/reglements", {"jusqu_au": "2026-11-24"})
    assert status == 303
    status, location, _, _ = await visit(server, tokens[Role.REGION_OPERATOR], "POST",
                                         f"{bureau}/reglements/1/fichiers", {
                                             "debiteur_name": REGION_ACCOUNT.name,
                                             "debiteur_iban": REGION_ACCOUNT.iban,
                                             "debiteur_bic": REGION_ACCOUNT.bic})
    assert (status, location) == (303, "/bureau/reglements/1?fait=fichiers")
    before = await conn.fetchval("SELECT count(*) FROM audit_log WHERE action NOT IN"
                                 " ('operator.create', 'settlement.payout_file_download')")
    read = {Role.REGION_OPERATOR, Role.AUDITOR}
    await assert_roles_refused_pages(server, tokens, [
        ("GET", f"{bureau}/reglements", None, read | {Role.PARTNER}),
        ("POST", f"{bureau}/reglements", {"jusqu_au": "demain"}, {Role.REGION_OPERATOR}),
        ("GET", f"{bureau}/reglements/1", None, read),
        ("POST", f"{bureau}/reglements/1/fichiers", {}, {Role.REGION_OPERATOR}),   # kept ones
        ("GET", f"{bureau}/reglements/1/fichiers/csv", None, read),
        ("GET", f"{bureau}/reglements/1/fichiers/pain001", None, read),
    ])
    status, _, body, headers = await visit(server, tokens[Role.AUDITOR], "GET",
                                           f"{bureau}/reglements/1/fichiers/pain001")
    assert status == 200 and headers["Content-Type"].startswith("application/xml")
    assert headers["Content-Disposition"] == 'attachment; filename="hdfpay-payout-run000001.pain001.xml"'
    assert headers["Cache-Control"] == "no-store" and "<CtrlSum>143.50</CtrlSum>" in body
    downloads = [r["actor"].split(":")[0] for r in await conn.fetch(
        "SELECT actor FROM audit_log WHERE action = 'settlement.payout_file_download' ORDER BY id")]
    assert downloads == ["region_operator", "region_operator", "auditor", "auditor", "auditor"]
    assert await conn.fetchval("SELECT count(*) FROM audit_log WHERE action NOT IN"
                               " ('operator.create', 'settlement.payout_file_download')") == before
    assert await conn.fetchval("SELECT count(*) FROM settlement_runs") == 1
