"""The rights renewal in the back office, in Chromium: an establishment's staff renew one of their
students and cannot renew another establishment's; a CSV file with a bad line is shown in a dry
run (each line OK or its error in French, no "Appliquer", nothing applied), then a clean one is
applied; each change audited as the API's. A region operator's page on a phone. Every page as
every role and anonymously; a multipart form with a forged CSRF field changes nothing."""

from __future__ import annotations

import re

import aiohttp
from playwright.async_api import expect
from yarl import URL

from backoffice.operator_auth import Role
from hdfpay.server import running_server

from browser_fixtures import PHONE, screenshot
from bureau_pages import CSRF, assert_roles_refused_pages, log_in, role_tokens, visit
from conftest import TEST_SCHOOL_YEAR
from operator_fixtures import add_test_operator
from test_portal import _no_accessibility_violations

PASSWORD = "un mot de passe du bureau"
YEAR = TEST_SCHOOL_YEAR
# Establishment 1's students are 10, 20, 30…; 50, 100, 150… have no rights for YEAR; 11 is
# another establishment's, renewed by the seed (tests/test_api_school_year.py).
OWN_UNRENEWED = ["HDF0000050", "HDF0000100", "HDF0000150"]
OWN_RENEWED = "HDF0000010"
OTHER_SCHOOL = "HDF0000011"


async def _renewed(conn, dossier: str) -> bool:
    return await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM rights r JOIN beneficiaries b ON b.id = r.beneficiary_id"
        " WHERE b.dossier_number = $1 AND r.school_year = $2)", dossier, YEAR)


async def _upload(page, tmp_path, name: str, text: str) -> None:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    await page.get_by_label("Fichier CSV").set_input_files(str(path))
    await page.get_by_role("button", name="Vérifier le fichier").click()


async def test_staff_renew_their_students_by_hand_and_by_file_after_a_dry_run(
        server, dsn, conn, browser_page, tmp_path):
    staff, staff_token, _ = await add_test_operator(dsn, Role.ESTABLISHMENT_STAFF,
                                                    establishment_id=1, password=PASSWORD)
    page = await browser_page()
    await log_in(page, server.ops_url + "/bureau", staff.login, PASSWORD)
    await page.get_by_role("link", name="Droits").click()
    await expect(page.get_by_role("heading", level=1)).to_have_text(
        f"Renouvellement des droits {YEAR}-{YEAR + 1}")
    await _no_accessibility_violations(page)

    await page.get_by_label("N° de dossier").fill(OWN_UNRENEWED[0].lower())
    await page.get_by_role("button", name="Renouveler", exact=True).click()
    await expect(page.get_by_role("status")).to_have_text(
        f"Droits {YEAR}-{YEAR + 1} renouvelés pour le dossier {OWN_UNRENEWED[0]}.")
    await page.get_by_label("N° de dossier").fill(OTHER_SCHOOL)
    await page.get_by_role("button", name="Renouveler", exact=True).click()
    await expect(page.get_by_role("alert")).to_have_text(
        f"Refusé : aucun élève avec le dossier {OTHER_SCHOOL} dans votre établissement.")
    assert await conn.fetchval("SELECT renewed_by FROM rights r JOIN beneficiaries b"
                               " ON b.id = r.beneficiary_id WHERE b.dossier_number = $1"
                               " AND r.school_year = $2", OTHER_SCHOOL, YEAR) != staff.login

    audit_rows = await conn.fetchval("SELECT count(*) FROM audit_log")
    await _upload(page, tmp_path, "droits-faux.csv",
                  f"dossier;annee;programme\n{OWN_UNRENEWED[1]};{YEAR}-{YEAR + 1}\n"
                  f"{OTHER_SCHOOL}\nABC\n{OWN_UNRENEWED[2]};{YEAR + 1}\n")
    table = page.get_by_test_id("dry-run")
    await expect(page.get_by_test_id("dry-run-summary")).to_contain_text("4 ligne(s) lue(s) · 3 erreur(s)")
    rows = table.locator("tbody tr")
    await expect(rows).to_have_count(4)
    await expect(rows.nth(0)).to_contain_text("OK")
    await expect(rows.nth(1)).to_contain_text("Erreur : aucun élève avec ce numéro de dossier")
    await expect(rows.nth(2)).to_contain_text("Erreur : ce n'est pas un numéro de dossier")
    await expect(rows.nth(3)).to_contain_text("Erreur : l'année scolaire de la ligne n'est pas celle renouvelée")
    await expect(page.get_by_role("button", name="Appliquer")).to_have_count(0)
    await screenshot(page, "backoffice-renewal-dry-run-errors-desktop")
    await _no_accessibility_violations(page)
    assert not await _renewed(conn, OWN_UNRENEWED[1])              # the dry run applied nothing
    assert await conn.fetchval("SELECT count(*) FROM audit_log") == audit_rows

    await _upload(page, tmp_path, "droits.csv",
                  f"{OWN_UNRENEWED[1]};{YEAR}-{YEAR + 1}\n{OWN_UNRENEWED[2]};;EQUIPMENT\n{OWN_RENEWED}\n")
    await expect(page.get_by_test_id("dry-run-summary")).to_have_text(
        "3 ligne(s) lue(s) · 0 erreur(s) · 2 élève(s) à renouveler · 1 déjà renouvelé(s)")
    await expect(rows.filter(has_text="OK")).to_have_count(3)
    await screenshot(page, "backoffice-renewal-dry-run-clean-desktop")
    assert not await _renewed(conn, OWN_UNRENEWED[1])
    used = await page.locator("input[name=fichier][type=hidden]").get_attribute("value")
    await page.get_by_role("button", name="Appliquer").click()
    await expect(page.get_by_role("status")).to_have_text(
        "Fichier appliqué : 2 élève(s) renouvelé(s), 1 déjà renouvelé(s).")
    assert await _renewed(conn, OWN_UNRENEWED[1]) and await _renewed(conn, OWN_UNRENEWED[2])
    assert await conn.fetchval(
        "SELECT r.programme FROM rights r JOIN beneficiaries b ON b.id = r.beneficiary_id"
        " WHERE b.dossier_number = $1 AND r.school_year = $2", OWN_UNRENEWED[2], YEAR) == "EQUIPMENT"

    audited = await conn.fetch("SELECT action, subject, after FROM audit_log WHERE actor = $1"
                               " AND action LIKE 'rights.%' ORDER BY id",
                               f"establishment_staff:{staff.login}")
    assert [(r["action"], r["subject"]) for r in audited] == [
        ("rights.renew", f"beneficiary:{OWN_UNRENEWED[0]}"),
        ("rights.renew_file", f"rights:{YEAR}:0590117G")]
    assert '"renewed": 2' in audited[1]["after"]
    # The same file applied again (a second click, a replayed form): it is gone, nothing moves.
    status, location, _, _ = await visit(server, staff_token, "POST",
                                         server.ops_url + "/bureau/droits/fichier/appliquer",
                                         {"fichier": used})
    assert (status, location) == (303, "/bureau/droits?refus=expire")
    assert await conn.fetchval("SELECT count(*) FROM audit_log WHERE action = 'rights.renew_file'") == 1


async def test_a_region_operator_reads_the_renewal_page_on_a_phone(server, dsn, browser_page):
    region, _, _ = await add_test_operator(dsn, Role.REGION_OPERATOR, password=PASSWORD)
    phone = await browser_page(PHONE)
    await log_in(phone, server.ops_url + "/bureau", region.login, PASSWORD)
    await phone.goto(server.ops_url + "/bureau/droits")
    # The window's title is the page's name, not its table (a block once swallowed it).
    await expect(phone).to_have_title("Renouvellement des droits · Génération #HDF, back office")
    await expect(phone.get_by_role("button", name="Vérifier le fichier")).to_be_visible()
    await screenshot(phone, "backoffice-renewal-phone")
    await _no_accessibility_violations(phone)
    assert await phone.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]


async def _multipart(server, token: str, csrf_field: str, text: str) -> tuple[int, str]:
    jar = aiohttp.CookieJar(unsafe=True)
    jar.update_cookies({"hdf_csrf": CSRF, "hdf_ops_session": token}, URL(server.ops_url))
    form = aiohttp.FormData()
    form.add_field("csrf_token", csrf_field)
    form.add_field("fichier", text.encode(), filename="droits.csv", content_type="text/csv")
    async with aiohttp.ClientSession(cookie_jar=jar) as browser:
        async with browser.post(server.ops_url + "/bureau/droits/fichier", data=form,
                                allow_redirects=False) as reply:
            return reply.status, reply.headers.get("Location", "") + await reply.text()


async def test_the_renewal_pages_as_every_role_and_anonymously(server, dsn, conn):
    tokens = await role_tokens(dsn)
    bureau = server.ops_url + "/bureau"
    act = {Role.REGION_OPERATOR, Role.ESTABLISHMENT_STAFF}
    await assert_roles_refused_pages(server, tokens, [
        ("GET", f"{bureau}/droits", None, act | {Role.AUDITOR}),
        ("POST", f"{bureau}/droits/eleve", {"dossier": "x"}, act),                 # refused
        ("POST", f"{bureau}/droits/fichier", {"fichier": "not a file"}, act),      # refused
        ("POST", f"{bureau}/droits/fichier/appliquer", {"fichier": "unknown"}, act),
    ])
    rights = await conn.fetchval("SELECT count(*) FROM rights")
    status, text = await _multipart(server, tokens[Role.ESTABLISHMENT_STAFF], "not-the-cookie",
                                    OWN_UNRENEWED[0] + "\n")
    assert status == 403 and "Formulaire expiré" in text          # CSRF checked in multipart
    status, text = await _multipart(server, tokens[Role.ESTABLISHMENT_STAFF], CSRF,
                                    OWN_UNRENEWED[0] + "\n")
    assert status == 200 and "Appliquer" in text                  # the same, honest: a dry run
    status, text = await _multipart(server, tokens[Role.ESTABLISHMENT_STAFF], CSRF,
                                    "x" * (4_000_001))
    assert status == 303 and text.startswith("/bureau/droits?refus=taille")   # over the limit
    assert await conn.fetchval("SELECT count(*) FROM rights") == rights
    assert await conn.fetchval("SELECT count(*) FROM audit_log WHERE actor <> 'test:ops_client'") == 0


async def test_a_file_checked_by_one_server_process_is_applied_by_another(
        server, settings, dsn, hsm, conn):
    """With `serve --workers N` the dry run and "Appliquer" may reach two processes: the file
    waits in the database (ledger/renewal_drafts.py), not in one process's memory. It is applied
    once, by its own operator only, and nothing of it is left afterwards."""
    tokens = await role_tokens(dsn)
    staff = tokens[Role.ESTABLISHMENT_STAFF]
    apply_path = "/bureau/droits/fichier/appliquer"
    async with running_server(settings, dsn, hsm) as other_process:
        status, text = await _multipart(server, staff, CSRF, OWN_UNRENEWED[1] + "\n")
        assert status == 200
        draft = re.search(r'name="fichier" value="([^"]+)"', text).group(1)
        assert await conn.fetchval("SELECT count(*) FROM renewal_drafts") == 1

        other_staff = (await role_tokens(dsn))[Role.ESTABLISHMENT_STAFF]   # same school
        _, location, _, _ = await visit(other_process, other_staff, "POST",
                                        other_process.ops_url + apply_path, {"fichier": draft})
        assert location == "/bureau/droits?refus=expire"      # not theirs: as if unknown
        assert not await _renewed(conn, OWN_UNRENEWED[1])

        status, location, _, _ = await visit(other_process, staff, "POST",
                                             other_process.ops_url + apply_path,
                                             {"fichier": draft})
        assert (status, location) == (303, "/bureau/droits?fait=fichier&renouveles=1&deja=0")
        assert await _renewed(conn, OWN_UNRENEWED[1])
        _, location, _, _ = await visit(server, staff, "POST", server.ops_url + apply_path,
                                        {"fichier": draft})
        assert location == "/bureau/droits?refus=expire"      # applied once
    assert await conn.fetchval("SELECT count(*) FROM renewal_drafts") == 0
    assert await conn.fetchval("SELECT count(*) FROM audit_log WHERE action = 'rights.renew_file'"
                               ) == 1
