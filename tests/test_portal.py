"""The students' web space in Debian's Chromium against the real server and PostgreSQL: log in
with a dossier number then a card number, change the provisional password, read the balance
change after a purchase at a terminal, declare the card lost and see a terminal decline it. Every
main page also at a phone's size, screenshots kept, no axe-core WCAG 2.1 A/AA violation."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import subprocess
import sys

import aiohttp
import pytest
from axe_playwright_python.async_playwright import Axe
from playwright.async_api import expect
from yarl import URL

from hdfpay.server import running_server
from ledger import cards, students
from ledger.rights_renewal import renew_one
from ledger.clock import pin_clock
from ledger.demo_region import card_uid

from browser_fixtures import DESKTOP, PHONE, screenshot
from conftest import TEST_SCHOOL_YEAR, balance_of

CARD = card_uid(5)
OTHER_STUDENTS_CARD = card_uid(6)
NEW_PASSWORD = "une phrase de passe assez longue"
WCAG_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]
CLI_TIMEOUT_S = 60


async def _student(conn, uid: bytes) -> tuple[str, str, int]:
    row = await conn.fetchrow("SELECT b.dossier_number, c.card_number, c.id FROM cards c"
                              " JOIN beneficiaries b ON b.id = c.beneficiary_id WHERE c.uid = $1", uid)
    return row["dossier_number"], row["card_number"], row["id"]


async def _no_accessibility_violations(page) -> None:
    results = await Axe().run(page, options={"runOnly": {"type": "tag", "values": WCAG_TAGS}})
    violations = [(v["id"], v["help"]) for v in results.response["violations"]]
    assert violations == [], violations


async def _log_in(page, portal_url: str, identifier: str, password: str) -> None:
    await page.goto(portal_url + "/")
    await expect(page).to_have_url(portal_url + "/connexion")
    await page.get_by_label("N° de dossier ou n° de carte").fill(identifier)
    await page.get_by_label("Mot de passe").fill(password)
    await page.get_by_role("button", name="Se connecter").click()


async def test_a_student_logs_in_follows_the_balance_and_declares_the_card_lost(
        server, conn, client, browser_page):
    dossier, card_number, _ = await _student(conn, CARD)
    provisional = await students.create_account(conn, dossier)
    portal = server.portal_url
    before = await balance_of(conn, CARD)

    page = await browser_page(PHONE)
    await _log_in(page, portal, dossier.lower(), "pas le bon mot de passe")
    await expect(page.get_by_role("alert")).to_contain_text("Identifiant ou mot de passe incorrect")
    await screenshot(page, "portal-login-phone")
    await _no_accessibility_violations(page)
    await page.get_by_label("Mot de passe").fill(provisional)
    await page.get_by_role("button", name="Se connecter").click()
    await expect(page).to_have_url(portal + "/mot-de-passe")          # provisional: change it
    await page.goto(portal + "/ma-carte")
    await expect(page).to_have_url(portal + "/mot-de-passe")          # and nothing else first
    await page.get_by_label("Mot de passe actuel").fill(provisional)
    await page.get_by_label("Nouveau mot de passe", exact=True).fill(NEW_PASSWORD)
    await page.get_by_label("Nouveau mot de passe, encore").fill(NEW_PASSWORD)
    await screenshot(page, "portal-password-phone")
    await _no_accessibility_violations(page)
    await page.get_by_role("button", name="Enregistrer").click()
    await expect(page.get_by_role("status")).to_have_text("Votre mot de passe est changé.")
    await expect(page.get_by_test_id("balance")).to_have_text(_euros(before))
    await expect(page.locator("body")).to_contain_text("Valable du 01/07/2026 au 30/04/2027")

    sale = await client.purchase(CARD, 12_50)                          # at a bookshop's till
    assert sale.rc == "00"
    await page.reload()
    await expect(page.get_by_test_id("balance")).to_have_text(_euros(before - 12_50))
    first_row = page.locator("tbody tr").first
    await expect(first_row).to_contain_text("Achat · ")
    await expect(first_row).to_contain_text("−12,50")
    await screenshot(page, "portal-card-phone")
    await _no_accessibility_violations(page)

    # Out, then in again with the card's number: the same space.
    await page.get_by_role("button", name="Se déconnecter").click()
    await expect(page).to_have_url(portal + "/connexion")
    desktop = await browser_page()
    await _log_in(desktop, portal, " ".join(card_number[i:i + 4] for i in range(0, 16, 4)),
                  NEW_PASSWORD)
    await expect(desktop).to_have_url(portal + "/ma-carte")
    await screenshot(desktop, "portal-card-desktop")

    await desktop.get_by_role("link", name="Déclarer la perte ou le vol").click()
    await expect(desktop.locator("body")).to_contain_text("ce blocage est définitif")
    await expect(desktop.locator("body")).to_contain_text("Une nouvelle carte coûte 5,00")
    await screenshot(desktop, "portal-loss-desktop")
    await _no_accessibility_violations(desktop)
    await desktop.get_by_label("J'ai perdu ma carte").check()
    await desktop.get_by_label("Je comprends que ma carte sera bloquée définitivement").check()
    await desktop.get_by_role("button", name="Bloquer ma carte").click()
    await expect(desktop.get_by_role("status")).to_contain_text("Votre carte est bloquée")
    await expect(desktop.locator("body")).to_contain_text("déclarée perdue")
    assert (await client.purchase(CARD, 1_00)).rc == "41"             # every terminal declines
    assert await conn.fetchval("SELECT actor FROM audit_log WHERE action = 'card.oppose'"
                               " ORDER BY id DESC LIMIT 1") == await conn.fetchval(
        "SELECT 'student:' || a.id FROM student_accounts a JOIN beneficiaries b"
        " ON b.id = a.beneficiary_id WHERE b.dossier_number = $1", dossier)


async def test_a_student_reaches_no_other_students_card_and_every_form_needs_its_token(
        server, conn):
    dossier, _, own_card = await _student(conn, CARD)
    _, _, other_card = await _student(conn, OTHER_STUDENTS_CARD)
    password = await students.create_account(conn, dossier)
    portal = server.portal_url
    # unsafe: the jar keeps cookies of an IP address (127.0.0.1), as a browser does.
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
        async with browser.get(portal + "/connexion") as page:
            assert page.status == 200
            assert "default-src 'none'" in page.headers["Content-Security-Policy"]
            token = browser.cookie_jar.filter_cookies(URL(portal))["hdf_csrf"].value
        form = {"identifiant": dossier, "mot_de_passe": password}
        async with browser.post(portal + "/connexion", data=form) as refused:
            assert refused.status == 403                                # no CSRF token
        async with browser.post(portal + "/connexion", data={**form, "csrf_token": token},
                                allow_redirects=False) as logged_in:
            assert logged_in.status == 303
            session_cookie = logged_in.cookies["hdf_session"]
            assert session_cookie["httponly"] and session_cookie["samesite"] == "Strict"
        for card_id in (other_card, 999_999_999, own_card):
            async with browser.get(f"{portal}/carte/{card_id}/perte", allow_redirects=False) as page:
                # The provisional password comes first, for any page, one's own card included.
                assert (page.status, page.headers.get("Location")) == (303, "/mot-de-passe")
        async with browser.post(portal + "/mot-de-passe", data={
                "csrf_token": token, "actuel": password, "nouveau": NEW_PASSWORD,
                "confirmation": NEW_PASSWORD}, allow_redirects=False) as changed:
            assert changed.status == 303
        for card_id in (other_card, 999_999_999):
            async with browser.get(f"{portal}/carte/{card_id}/perte") as page:
                assert page.status == 404
            async with browser.post(f"{portal}/carte/{card_id}/perte", data={
                    "csrf_token": token, "motif": "vol", "confirmation": "oui"}) as page:
                assert page.status == 404
        async with browser.get(f"{portal}/carte/{own_card}/perte") as page:
            assert page.status == 200
    statuses = await conn.fetch("SELECT status FROM cards WHERE id = ANY($1::bigint[])",
                                [own_card, other_card])
    assert [r["status"] for r in statuses] == ["ACTIVE", "ACTIVE"]


def _euros(cents: int) -> str:
    return f"{cents // 100:,}".replace(",", "\u202f") + f",{cents % 100:02d}\u00a0€"


async def test_an_account_from_the_command_line_and_the_lock_after_five_wrong_passwords(dsn, conn):
    dossier, card_number, _ = await _student(conn, CARD)
    added = subprocess.run([sys.executable, "-m", "hdfpay.cli", "students", "add-account",
                            dossier.lower()], capture_output=True, text=True, timeout=CLI_TIMEOUT_S,
                           stdin=subprocess.DEVNULL, env={**os.environ, "DATABASE_URL": dsn})
    assert added.returncode == 0, added.stderr
    provisional = added.stdout.split("provisional password")[1].split()[0]
    again = subprocess.run([sys.executable, "-m", "hdfpay.cli", "students", "add-account", dossier],
                           capture_output=True, text=True, timeout=CLI_TIMEOUT_S,
                           stdin=subprocess.DEVNULL, env={**os.environ, "DATABASE_URL": dsn})
    assert again.returncode == 2 and "déjà un compte" in again.stderr
    session = await students.login(conn, card_number, provisional)
    assert session.student.must_change_password and session.student.dossier_number == dossier
    for _ in range(students.LOGIN_FAILURES_BEFORE_LOCK):
        with pytest.raises(students.LoginRefused):
            await students.login(conn, dossier, "mauvais mot de passe")
    with pytest.raises(students.LoginRefused):          # locked: the right one is refused too
        await students.login(conn, dossier, provisional)
    await pin_clock(conn, await conn.fetchval("SELECT business_now()")
                    + dt.timedelta(milliseconds=students.LOGIN_LOCK_MS + 1))
    assert (await students.login(conn, dossier, provisional)).student.dossier_number == dossier


async def test_a_forgotten_password_by_e_mail_end_to_end(settings, dsn, hsm, conn, smtp_settings,
                                                         inbox, browser_page):
    """The page answers the same for an unknown identifier; the e-mail's link opens once, sets
    the new password, and ends the student's sessions; the link never comes from the Host
    header but from the portal's public address."""
    dossier, _, _ = await _student(conn, CARD)
    await students.create_account(conn, dossier)
    public = "https://monespace.hdf.example"
    async with running_server(dataclasses.replace(settings, portal_public_url=public), dsn, hsm,
                              smtp=smtp_settings) as server:
        portal = server.portal_url
        page = await browser_page(PHONE)
        await page.goto(portal + "/connexion")
        await page.get_by_role("link", name="Mot de passe oublié ?").click()
        await page.get_by_label("N° de dossier ou n° de carte").fill("ZZZZZZ99")     # nobody
        await page.get_by_role("button", name="Recevoir le lien").click()
        unknown_answer = await page.get_by_role("status").inner_text()
        await page.goto(portal + "/mot-de-passe-oublie")
        await page.get_by_label("N° de dossier ou n° de carte").fill(dossier)
        await page.get_by_role("button", name="Recevoir le lien").click()
        assert await page.get_by_role("status").inner_text() == unknown_answer
        await screenshot(page, "portal-reset-request-phone")
        await inbox.wait_for(1)
        _, recipients, mail = inbox.arrived[0]
        email_address = await conn.fetchval("SELECT email FROM beneficiaries WHERE dossier_number = $1",
                                            dossier)
        assert recipients == [email_address] and len(inbox.arrived) == 1
        body = mail.get_content()
        link = next(word for word in body.split() if word.startswith(public))
        assert "ne sert qu'une fois" in body and "0 800 026 080" in body
        local_link = portal + link.removeprefix(public)
        await page.goto(local_link)
        await page.get_by_label("Nouveau mot de passe", exact=True).fill(NEW_PASSWORD)
        await page.get_by_label("Nouveau mot de passe, encore").fill(NEW_PASSWORD)
        await _no_accessibility_violations(page)
        await page.get_by_role("button", name="Enregistrer").click()
        await expect(page.get_by_role("status")).to_contain_text("Votre mot de passe est changé")
        await page.get_by_label("N° de dossier ou n° de carte").fill(dossier)
        await page.get_by_label("Mot de passe").fill(NEW_PASSWORD)
        await page.get_by_role("button", name="Se connecter").click()
        await expect(page).to_have_url(portal + "/ma-carte")      # no provisional step left
        again = await page.goto(local_link)
        assert again.status == 410                                  # single use


async def test_a_new_card_is_refused_until_the_rights_are_renewed_then_asked_and_made(
        server, conn, browser_page):
    """After a loss: 'Demander une nouvelle carte' says why it is refused while this school
    year's rights are not renewed; once the establishment renews them the request goes to the
    operators, who replace the card; then the new card's 'Carte défectueuse' gives the address."""
    uid = await conn.fetchval(
        "SELECT c.uid FROM cards c WHERE c.status = 'ACTIVE' AND NOT EXISTS (SELECT 1 FROM rights r"
        " WHERE r.beneficiary_id = c.beneficiary_id AND r.school_year = $1) ORDER BY c.id LIMIT 1",
        TEST_SCHOOL_YEAR)
    dossier, card_number, card_id = await _student(conn, uid)
    password = await students.create_account(conn, dossier)
    await conn.execute("UPDATE student_accounts SET must_change_password = false")
    await cards.oppose_card(conn, card_id, "lost", actor="test")
    page = await browser_page(PHONE)
    portal = server.portal_url
    await _log_in(page, portal, dossier, password)
    await page.get_by_role("link", name="Demander une nouvelle carte").click()
    await expect(page.get_by_role("alert")).to_contain_text("ne sont pas encore actualisés")
    await expect(page.get_by_role("button", name="Demander ma nouvelle carte")).to_have_count(0)
    await screenshot(page, "portal-new-card-refused-phone")
    await _no_accessibility_violations(page)

    await renew_one(conn, dossier, school_year=TEST_SCHOOL_YEAR, actor="test")   # the lycée
    await page.reload()
    await expect(page.locator("main")).to_contain_text("Elle coûte 5,00")
    await page.get_by_role("button", name="Demander ma nouvelle carte").click()
    await expect(page.get_by_role("status")).to_contain_text("demande de nouvelle carte est envoyée")
    await expect(page.locator("main")).to_contain_text("Nouvelle carte demandée le 26/11/2026")
    [open_request] = await cards.open_replacement_requests(conn)
    assert (open_request.card_id, open_request.reason) == (card_id, "LOST")

    done = await cards.replace_card(conn, card_id, bytes.fromhex("04D1E2F3A4B5C6"), actor="operator")
    assert await cards.open_replacement_requests(conn) == []
    await page.reload()
    await page.get_by_role("link", name="Ma carte est défectueuse").click()
    await expect(page.locator("address")).to_contain_text("151 avenue du Président Hoover")
    await _no_accessibility_violations(page)
    await page.get_by_role("button", name="Déclarer ma carte défectueuse").click()
    await expect(page.get_by_role("status")).to_contain_text("demande de nouvelle carte est envoyée")
    [defective] = await cards.open_replacement_requests(conn)
    assert (defective.card_id, defective.reason) == (done.new_card_id, "DEFECTIVE")
    other = await page.request.get(f"{portal}/carte/{(await _student(conn, CARD))[2]}/defectueuse")
    assert other.status == 404                                  # another student's card


MAIN_PAGES = ("/connexion", "/creer-un-compte", "/ou-utiliser-ma-carte?ville=Arras",
              "/ma-carte", "/carte/{card}/perte", "/carte/{card}/defectueuse")


async def test_every_main_page_on_a_phone_and_a_computer(server, conn, browser_page):
    """Screenshots of each main page at both sizes, for the reviewer; and on a phone no page is
    wider than the screen (nothing to scroll sideways)."""
    dossier, _, card_id = await _student(conn, CARD)
    password = await students.create_account(conn, dossier)
    await conn.execute("UPDATE student_accounts SET must_change_password = false")
    for size_name, viewport in (("phone", PHONE), ("desktop", DESKTOP)):
        page = await browser_page(viewport)
        await _log_in(page, server.portal_url, dossier, password)
        await expect(page).to_have_url(server.portal_url + "/ma-carte")
        for path in MAIN_PAGES:
            answer = await page.goto(server.portal_url + path.format(card=card_id))
            assert answer.status == 200, path
            name = path.strip("/").split("?")[0].replace("/", "-").replace("{card}", "numero")
            await screenshot(page, f"portal-{name}-{size_name}")
            if viewport is PHONE:
                overflow = await page.evaluate(
                    "document.documentElement.scrollWidth - document.documentElement.clientWidth")
                assert overflow <= 0, f"{path} is {overflow} px wider than a phone"
