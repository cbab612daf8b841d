"""The expiry in the back office, in Chromium: before 1 May the page says when the wallets close
and offers nothing to run; on 2 May a region operator confirms and the remaining balances go to
expired funds, once (audited as the API's 'expiry.run'); an auditor reads the runs on a phone.
Every page as every role and anonymously."""

from __future__ import annotations

from playwright.async_api import expect

from backoffice.operator_auth import Role
from ledger.clock import pin_clock

from browser_fixtures import PHONE, screenshot
from bureau_pages import assert_roles_refused_pages, log_in, role_tokens, visit
from conftest import TEST_SCHOOL_YEAR, paris
from operator_fixtures import add_test_operator
from test_portal import _no_accessibility_violations

PASSWORD = "un mot de passe du bureau"


async def _balances(conn) -> int:
    return await conn.fetchval(
        "SELECT coalesce(sum(a.credits_posted - a.debits_posted), 0) FROM accounts a"
        " JOIN wallets w ON w.account_id = a.id WHERE w.school_year = $1", TEST_SCHOOL_YEAR)


async def test_an_operator_expires_the_year_once_after_the_close(server, dsn, conn, browser_page):
    region, _, _ = await add_test_operator(dsn, Role.REGION_OPERATOR, password=PASSWORD)
    bureau = server.ops_url + "/bureau"
    page = await browser_page()
    await log_in(page, bureau, region.login, PASSWORD)
    await page.get_by_role("link", name="Expiration").click()
    year = f"{TEST_SCHOOL_YEAR}-{TEST_SCHOOL_YEAR + 1}"
    await expect(page.get_by_test_id("expiry-current")).to_contain_text(
        f"Année {year} : porte-monnaie ouverts jusqu'au 01/05/{TEST_SCHOOL_YEAR + 1}")
    await expect(page.get_by_role("button", name=f"Expirer les soldes {year}")).to_have_count(0)
    remaining = await _balances(conn)
    assert remaining > 0

    await pin_clock(conn, paris(TEST_SCHOOL_YEAR + 1, 5, 2, 9, 0))
    await page.reload()                   # six months later: the session has run out
    await log_in(page, bureau, region.login, PASSWORD)
    await page.goto(bureau + "/expiration")
    await expect(page.get_by_role("heading", name=f"Année {year}, fermée le 01/05/")).to_be_visible()
    await page.get_by_role("button", name=f"Expirer les soldes {year}").click()   # not confirmed
    assert await _balances(conn) == remaining                        # the browser kept it
    await page.get_by_label("Je confirme").check()
    await page.get_by_role("button", name="Expirer").click()
    await expect(page.get_by_role("status")).to_contain_text("Expiration faite")
    assert await _balances(conn) == 0
    await expect(page.locator("tbody tr")).to_have_count(1)
    await screenshot(page, "backoffice-expiry-desktop")
    await _no_accessibility_violations(page)

    await page.get_by_label("Je confirme").check()                   # again: nothing more moves
    await page.get_by_role("button", name="Expirer").click()
    await expect(page.locator("tbody tr")).to_have_count(2)
    runs = await conn.fetch("SELECT actor, after FROM audit_log WHERE action = 'expiry.run'"
                            " ORDER BY id")
    assert [r["actor"] for r in runs] == [f"region_operator:{region.login}"] * 2
    assert '"expired_cents": 0' in runs[1]["after"]


async def test_the_expiry_page_as_every_role_and_anonymously(server, dsn, conn, browser_page):
    await pin_clock(conn, paris(TEST_SCHOOL_YEAR + 1, 5, 2, 9, 0))
    tokens = await role_tokens(dsn)
    bureau = server.ops_url + "/bureau"
    read = {Role.REGION_OPERATOR, Role.AUDITOR}
    await assert_roles_refused_pages(server, tokens, [("GET", f"{bureau}/expiration", None, read)])
    before = await _balances(conn)
    for role in (None, Role.ESTABLISHMENT_STAFF, Role.PARTNER, Role.AUDITOR):
        status, location, _, _ = await visit(server, tokens[role], "POST", f"{bureau}/expiration",
                                             {"confirmer": "oui"})
        assert (status, location) in ((303, "/bureau/connexion"), (403, "")), role
    status, _, _, _ = await visit(server, tokens[Role.REGION_OPERATOR], "POST",
                                  f"{bureau}/expiration", {"confirmer": "oui"}, csrf_field="forged")
    assert status == 403
    assert await _balances(conn) == before > 0

    auditor, _, _ = await add_test_operator(dsn, Role.AUDITOR, password=PASSWORD)
    page = await browser_page(PHONE)
    await log_in(page, bureau, auditor.login, PASSWORD)
    await page.goto(bureau + "/expiration")
    await expect(page.get_by_role("heading", name=f"Année {TEST_SCHOOL_YEAR}-")).to_be_visible()
    await expect(page.get_by_role("button", name="Expirer")).to_have_count(0)
    await screenshot(page, "backoffice-expiry-auditor-phone")
    await _no_accessibility_violations(page)
