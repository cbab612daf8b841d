"""The operators' dashboard in Chromium: today's messages, the approval rate, declines by reason,
volumes by partner category, the last days and the bulk reload, the same numbers as the API's
reports (ledger.reports); charts are SVG drawn on the server, under the strict CSP (no inline
style or script). Every role and anonymously."""

from __future__ import annotations

from playwright.async_api import expect

from backoffice.operator_auth import Role
from backoffice.pages_dashboard import approval_permille
from ledger import reports
from ledger.bulk_reload import run_bulk_reload
from ledger.clock import pin_clock
from ledger.demo_region import card_uid
from ledger.programmes import set_amount
from terminal_protocol.response_codes import APPROVED_CODES

from browser_fixtures import PHONE, screenshot
from bureau_pages import assert_roles_refused_pages, log_in, role_tokens, visit
from conftest import TEST_SCHOOL_YEAR, paris
from operator_fixtures import add_test_operator
from test_portal import _no_accessibility_violations

PASSWORD = "un mot de passe du bureau"
CARD, OTHER_CARD = card_uid(11), card_uid(12)
TOO_MUCH_CENTS = 9_999_99


async def _equipment_terminal(conn) -> str:
    return await conn.fetchval(
        "SELECT t.id FROM terminals t JOIN partners p ON p.id = t.partner_id"
        " WHERE p.category = 'EQUIPMENT' AND p.status = 'ACTIVE' AND t.status = 'ACTIVE'"
        " ORDER BY t.id LIMIT 1")


async def test_the_dashboard_shows_the_reports_numbers_as_server_drawn_charts(
        server, dsn, conn, client, terminal, browser_page):
    await pin_clock(conn, paris(2026, 11, 24, 15, 0))
    assert (await client.purchase(CARD, 8_00)).rc == "00"
    await pin_clock(conn, paris(2026, 11, 26, 9, 0))
    assert (await client.purchase(CARD, 12_50)).rc == "00"
    assert (await client.purchase(CARD, TOO_MUCH_CENTS)).rc not in APPROVED_CODES
    async with terminal(await _equipment_terminal(conn)) as shop:
        assert (await shop.purchase(OTHER_CARD, 30_00)).rc == "00"
    for programme in ("BOOKS", "EQUIPMENT"):
        await set_amount(conn, school_year=TEST_SCHOOL_YEAR, programme=programme,
                         amount_cents=100_00, actor="test:reload")
    await run_bulk_reload(conn, TEST_SCHOOL_YEAR, actor="test:reload", chunk_rows=100,
                          max_chunks=1)                         # stopped after one chunk
    region, token, _ = await add_test_operator(dsn, Role.REGION_OPERATOR, password=PASSWORD)
    bureau = server.ops_url + "/bureau"

    today = reports.Period(*(2 * [paris(2026, 11, 26, 0, 0).date()]))
    messages, decline_rows = await reports.declines(conn, today, APPROVED_CODES)
    declined = sum(row["count"] for row in decline_rows)
    assert (messages, declined) == (3, 1)
    permille = approval_permille(messages, declined)

    page = await browser_page()
    await log_in(page, bureau, region.login, PASSWORD)
    await page.get_by_role("link", name="Tableau de bord").click()
    await expect(page.get_by_role("heading", name="Tableau de bord du 26/11/2026")).to_be_visible()
    await expect(page.get_by_test_id("messages")).to_have_text("3")
    await expect(page.get_by_test_id("rate")).to_have_text(f"{permille // 10},{permille % 10} %")
    await expect(page.get_by_test_id("net")).to_have_text("42,50\u00a0€")
    await expect(page.get_by_role("img", name="Refus du jour par motif, 1 en tout")).to_be_visible()
    categories = page.get_by_role("img", name="Montant net du jour par catégorie")
    await expect(categories).to_contain_text("Librairies")
    await expect(categories).to_contain_text("12,50\u00a0€")
    await expect(categories).to_contain_text("30,00\u00a0€")
    days = page.get_by_role("img", name="Montant net des 7 derniers jours")
    await expect(days).to_contain_text("mar. 24/11")
    await expect(days).to_contain_text("8,00\u00a0€")
    await expect(page.get_by_test_id("reload")).to_contain_text("Interrompu")
    await expect(page.get_by_test_id("reload")).to_contain_text("100 élève(s) sur")
    await screenshot(page, "backoffice-dashboard-desktop")
    await _no_accessibility_violations(page)

    phone = await browser_page(PHONE)
    await log_in(phone, bureau, region.login, PASSWORD)
    await phone.goto(bureau + "/tableau-de-bord")
    await expect(phone.get_by_test_id("messages")).to_have_text("3")
    await screenshot(phone, "backoffice-dashboard-phone")
    await _no_accessibility_violations(phone)
    assert await phone.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]

    status, _, html, headers = await visit(server, token, "GET", bureau + "/tableau-de-bord")
    assert status == 200 and html.count("<svg") == 3
    assert "style=" not in html and "<script" not in html and "http" not in html.split("<main>")[1]
    assert "style-src 'self'" in headers["Content-Security-Policy"]


async def test_the_dashboard_as_every_role_and_anonymously(server, dsn):
    tokens = await role_tokens(dsn)
    await assert_roles_refused_pages(server, tokens, [
        ("GET", server.ops_url + "/bureau/tableau-de-bord", None,
         {Role.REGION_OPERATOR, Role.AUDITOR})])
