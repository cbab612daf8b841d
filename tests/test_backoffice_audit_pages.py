"""The audit trail's pages in Chromium: an auditor filters the trail (actor, action, business
days), pages through it a bounded page at a time, verifies the chain, and after a row is tampered
with in the database (as the cluster's superuser, its trigger disabled) the page says where the
chain breaks. Every page as every role and anonymously."""

from __future__ import annotations

from playwright.async_api import expect

from backoffice.operator_auth import Role
from ledger.audit import AUDIT_PAGE_ROWS, append_audit
from ledger.clock import pin_clock

from browser_fixtures import PHONE, screenshot
from bureau_pages import assert_roles_refused_pages, log_in, role_tokens
from conftest import paris
from operator_fixtures import add_test_operator
from test_portal import _no_accessibility_violations

PASSWORD = "un mot de passe d'auditeur"
EXTRA_ROWS = AUDIT_PAGE_ROWS + 5           # more than one page of one actor's rows


async def _trail(conn) -> None:
    """Two days of actions: 24 November one opposition by alice, 25 November a page and more of
    bob's rights renewals."""
    await pin_clock(conn, paris(2026, 11, 24, 23, 30))      # late in the evening, Paris time
    await append_audit(conn, actor="region_operator:alice", action="card.oppose",
                       subject="card:7", before={"status": "ACTIVE"}, after={"status": "LOST"})
    await pin_clock(conn, paris(2026, 11, 25, 9, 0))
    async with conn.transaction():
        for n in range(EXTRA_ROWS):
            await append_audit(conn, actor="establishment_staff:bob", action="rights.renew",
                               subject=f"beneficiary:{n + 1}", after={"school_year": 2027})
    await pin_clock(conn, paris(2026, 11, 26, 10, 0))


async def test_an_auditor_filters_pages_and_verifies_the_trail_then_finds_a_tampered_row(
        server, dsn, conn, browser_page):
    account, _, _ = await add_test_operator(dsn, Role.AUDITOR, password=PASSWORD)
    await _trail(conn)
    bureau = server.ops_url + "/bureau"
    page = await browser_page()
    await log_in(page, bureau, account.login, PASSWORD)
    await page.get_by_role("link", name="Journal d'audit").click()
    await expect(page.get_by_role("heading", name=f"{AUDIT_PAGE_ROWS} ligne(s)")).to_be_visible()
    # Newest first: the auditor's own login, then bob's renewals.
    await expect(page.locator("tbody tr").first).to_contain_text("operator.login")
    await expect(page.locator("tbody tr").nth(1)).to_contain_text("rights.renew")

    await page.get_by_label("Acteur (exact)").fill("region_operator:alice")
    await page.get_by_role("button", name="Filtrer").click()
    await expect(page.get_by_role("heading", name="1 ligne(s)")).to_be_visible()
    row = page.locator("tbody tr").first
    await expect(row).to_contain_text("24/11/2026 à 23:30")       # Paris time, not UTC
    await expect(row).to_contain_text('{"status": "LOST"}')

    await page.goto(bureau + "/audit?action=rights.&du=2026-11-25&au=2026-11-25")
    await expect(page.get_by_role("heading", name=f"{AUDIT_PAGE_ROWS} ligne(s)")).to_be_visible()
    await screenshot(page, "backoffice-audit-desktop")
    await _no_accessibility_violations(page)
    await page.get_by_role("link", name="Lignes plus anciennes").click()
    await expect(page.get_by_role("heading", name="5 ligne(s), suite")).to_be_visible()
    await expect(page.get_by_label("Action (exacte, ou préfixe finissant par « . »)")
                 ).to_have_value("rights.")                    # the filters kept on the next page
    await page.goto(bureau + "/audit?du=2026-11-24&au=2026-11-24")
    await expect(page.get_by_role("heading", name="1 ligne(s)")).to_be_visible()
    await page.goto(bureau + "/audit?du=2026-11-26&au=2026-11-25")
    await expect(page.get_by_role("alert")).to_contain_text("La date de début suit la date de fin")

    await page.get_by_role("link", name="Vérifier l'intégrité du journal").click()
    await page.get_by_role("button", name="Vérifier la chaîne").click()
    rows = await conn.fetchval("SELECT count(*) FROM audit_log")
    await expect(page.get_by_test_id("verdict")).to_have_text(
        f"Chaîne intacte : {rows} ligne(s) vérifiée(s).")
    head = await conn.fetchval("SELECT encode(last_hash, 'hex') FROM audit_head")
    await expect(page.get_by_test_id("head-hash")).to_have_text(head)
    await screenshot(page, "backoffice-audit-verify-intact-desktop")
    await _no_accessibility_violations(page)

    tampered = await conn.fetchval("SELECT id FROM audit_log WHERE actor = 'region_operator:alice'")
    await conn.execute("ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only")
    await conn.execute("UPDATE audit_log SET after = '{\"status\": \"ACTIVE\"}' WHERE id = $1",
                       tampered)
    await conn.execute("ALTER TABLE audit_log ENABLE TRIGGER audit_log_append_only")
    phone = await browser_page(PHONE)
    await log_in(phone, bureau, account.login, PASSWORD)
    await phone.goto(f"{bureau}/audit/verification?verifier=1&empreinte={head}")
    await expect(phone.get_by_test_id("verdict")).to_contain_text(
        f"La chaîne se rompt à la ligne {tampered}.")
    await expect(phone.get_by_test_id("findings")).to_contain_text(
        f"ligne {tampered} : contenu modifié (son empreinte ne correspond plus)")
    await screenshot(phone, "backoffice-audit-verify-broken-phone")
    await _no_accessibility_violations(phone)
    assert await phone.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    await phone.goto(bureau + "/audit")
    await screenshot(phone, "backoffice-audit-phone")
    assert await phone.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]


async def test_the_audit_pages_as_every_role_and_anonymously(server, dsn, conn):
    bureau = server.ops_url + "/bureau"
    tokens = await role_tokens(dsn)
    readers = {Role.REGION_OPERATOR, Role.AUDITOR}
    await assert_roles_refused_pages(server, tokens, [
        ("GET", bureau + "/audit", None, readers),
        ("GET", bureau + "/audit?acteur=x&action=card.&du=2026-11-01&au=2026-11-30&avant=9", None,
         readers),
        ("GET", bureau + "/audit/verification", None, readers),
        ("GET", bureau + "/audit/verification?verifier=1", None, readers),
    ])
    before = await conn.fetchval("SELECT count(*) FROM audit_log")
    assert before == len(Role)            # the accounts made above, and nothing from reading
