"""Operators' accounts in the back office, in Chromium: a region operator creates an account (its
provisional password shown once), gives another a new provisional password, is refused disabling
the only other region operator until a third exists, and is refused their own account (disable,
reset) even by a forged form; each change audited as the API's. An auditor reads the list on a
phone. Every page as every role and anonymously."""

from __future__ import annotations

from playwright.async_api import expect

from backoffice.operator_auth import Role

from browser_fixtures import PHONE, screenshot
from bureau_pages import assert_roles_refused_pages, log_in, role_tokens, visit
from operator_fixtures import add_test_operator
from test_portal import _no_accessibility_violations

PASSWORD = "un mot de passe du bureau"


async def _create(page, login: str, role: str, uai: str = "") -> None:
    await page.get_by_label("Identifiant", exact=True).fill(login)
    await page.get_by_label("Rôle").select_option(role)
    await page.get_by_label("UAI de l'établissement").fill(uai)
    await page.get_by_role("button", name="Créer le compte").click()


async def test_an_operator_creates_resets_and_disables_accounts_within_the_rules(
        server, dsn, conn, browser_page):
    region, region_token, _ = await add_test_operator(dsn, Role.REGION_OPERATOR, password=PASSWORD)
    other, _, _ = await add_test_operator(dsn, Role.REGION_OPERATOR)
    page = await browser_page()
    await log_in(page, server.ops_url + "/bureau", region.login, PASSWORD)
    await page.get_by_role("link", name="Comptes").click()
    await expect(page.get_by_test_id(f"account-{region.login}")).to_contain_text("Changer mon mot de passe")
    await _no_accessibility_violations(page)

    await _create(page, "personnel.faidherbe", "establishment_staff")
    await expect(page.get_by_role("alert")).to_contain_text("l'UAI d'un établissement existant")
    await _create(page, "personnel.faidherbe", "establishment_staff", "0590117G")
    shown = page.get_by_test_id("provisional-password")
    await expect(shown).to_be_visible()
    provisional = await shown.text_content()
    assert len(provisional) >= 12
    await expect(page.get_by_test_id("account-personnel.faidherbe")).to_contain_text("mot de passe provisoire")
    await screenshot(page, "backoffice-accounts-created-desktop")
    await _no_accessibility_violations(page)
    await page.get_by_role("link", name="Comptes").click()
    await expect(page.get_by_test_id("provisional-password")).to_have_count(0)      # once only
    await _create(page, "personnel.faidherbe", "auditor")
    await expect(page.get_by_role("alert")).to_have_text("Refusé : cet identifiant est déjà pris.")

    await page.get_by_role("button", name=f"Nouveau mot de passe provisoire pour {other.login}").click()
    await expect(page.get_by_role("heading", name=f"Mot de passe provisoire de {other.login}")).to_be_visible()
    assert await conn.fetchval("SELECT must_change_password FROM operators WHERE login = $1", other.login)

    row = page.get_by_test_id(f"account-{other.login}")
    await row.get_by_label("définitif").check()
    await row.get_by_role("button", name=f"Désactiver {other.login}").click()
    await expect(page.get_by_role("alert")).to_contain_text(
        f"Refusé : {other.login} est opérateur de la Région, et il ne resterait pas au moins 1 autre")
    await _create(page, "operatrice.region", "region_operator")
    await expect(page.get_by_test_id("provisional-password")).to_be_visible()
    row = page.get_by_test_id(f"account-{other.login}")
    await row.get_by_label("définitif").check()
    await row.get_by_role("button", name=f"Désactiver {other.login}").click()
    await expect(page.get_by_role("status")).to_have_text(
        f"Compte {other.login} désactivé : ses sessions sont closes.")
    await expect(page.get_by_test_id(f"account-{other.login}")).to_contain_text("désactivé")

    # One's own account: no button; a forged form is refused all the same.
    bureau = server.ops_url + "/bureau"
    for action, why in (("desactivation", "soi-meme"), ("mot-de-passe", "propre-mot-de-passe")):
        status, location, _, _ = await visit(server, region_token, "POST",
                                             f"{bureau}/comptes/{region.login}/{action}",
                                             {"confirmation": "oui"})
        assert (status, location) == (303, f"/bureau/comptes?refus={why}&compte={region.login}")
    assert not await conn.fetchval("SELECT disabled FROM operators WHERE login = $1", region.login)
    audited = await conn.fetch("SELECT action, subject FROM audit_log WHERE actor = $1"
                               " AND action NOT IN ('operator.login', 'operator.logout') ORDER BY id",
                               f"region_operator:{region.login}")
    assert [(r["action"], r["subject"]) for r in audited] == [
        ("operator.create", "operator:personnel.faidherbe"),
        ("operator.password_reset", f"operator:{other.login}"),
        ("operator.create", "operator:operatrice.region"),
        ("operator.disable", f"operator:{other.login}")]


async def test_an_auditor_reads_the_accounts_on_a_phone(server, dsn, browser_page):
    auditor, _, _ = await add_test_operator(dsn, Role.AUDITOR, password=PASSWORD)
    phone = await browser_page(PHONE)
    await log_in(phone, server.ops_url + "/bureau", auditor.login, PASSWORD)
    await phone.get_by_role("link", name="Comptes").click()
    await expect(phone.get_by_test_id(f"account-{auditor.login}")).to_contain_text("auditeur")
    await expect(phone.locator("main").get_by_role("button")).to_have_count(0)   # reads only
    await screenshot(phone, "backoffice-accounts-auditor-phone")
    await _no_accessibility_violations(phone)
    assert await phone.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]


async def test_the_account_pages_as_every_role_and_anonymously(server, dsn, conn):
    tokens = await role_tokens(dsn)
    target, _, _ = await add_test_operator(dsn, Role.AUDITOR)
    bureau = server.ops_url + "/bureau"
    region = {Role.REGION_OPERATOR}
    await assert_roles_refused_pages(server, tokens, [
        ("GET", f"{bureau}/comptes", None, region | {Role.AUDITOR}),
        ("POST", f"{bureau}/comptes/{target.login}/desactivation", {}, region),      # unconfirmed
    ])
    for role in (None, Role.ESTABLISHMENT_STAFF, Role.PARTNER, Role.AUDITOR):   # region: below
        for path, form in ((f"comptes/{target.login}/mot-de-passe", None),
                           ("comptes", {"identifiant": "intrus", "role": "region_operator"})):
            status, location, _, _ = await visit(server, tokens[role], "POST", f"{bureau}/{path}", form)
            assert (status, location) in ((303, "/bureau/connexion"), (403, "")), (role, path)
    status, _, text, _ = await visit(server, tokens[Role.REGION_OPERATOR], "POST",
                                     f"{bureau}/comptes", {"identifiant": "X!", "role": "auditor"})
    assert status == 400 and "Refusé : un identifiant de 3 à 64 caractères" in text
    assert await conn.fetchval("SELECT count(*) FROM audit_log WHERE actor <> 'test:ops_client'") == 0
    status, _, text, _ = await visit(server, tokens[Role.REGION_OPERATOR], "POST",
                                     f"{bureau}/comptes/{target.login}/mot-de-passe")
    assert status == 200 and f"Mot de passe provisoire de {target.login}" in text
    assert (await visit(server, tokens[Role.REGION_OPERATOR], "POST",
                        f"{bureau}/comptes/personne/mot-de-passe"))[0] == 404
