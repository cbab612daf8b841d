"""A first card asked for online, in Chromium against the real server, PostgreSQL and an SMTP
server: create the account (identity, e-mail, consent), read the e-mail, log in with the DEM
identifier, change the provisional password, give the address, the establishment and a photo,
send the request, then follow it while the establishment moves it on; log in with the dossier
number the request gave. Also: the campaign's closed season, and photos refused with a reason."""

from __future__ import annotations

from PIL import Image
from playwright.async_api import expect

from hdfpay.server import running_server
from ledger import card_requests
from ledger.clock import pin_clock

from browser_fixtures import PHONE, screenshot
from conftest import SCHOOL_DAY, paris
from test_portal import NEW_PASSWORD, _no_accessibility_violations

APPLICANT_EMAIL = "lea.martin@eleves.example"


def _photo(path, size=(600, 800), kind="PNG") -> str:
    Image.new("RGB", size, (200, 180, 160)).save(path, format=kind)
    return str(path)


async def test_a_first_card_asked_for_online_then_followed(settings, dsn, hsm, conn, smtp_settings,
                                                          inbox, browser_page, tmp_path):
    await pin_clock(conn, SCHOOL_DAY)
    async with running_server(settings, dsn, hsm, smtp=smtp_settings) as server:
        portal = server.portal_url
        page = await browser_page(PHONE)
        await page.goto(portal + "/connexion")
        await page.get_by_role("link", name="Créer un compte : première demande de carte").click()
        await expect(page.locator("main")).to_contain_text("Pour l'année scolaire 2026-2027")
        await page.get_by_label("Nom", exact=True).fill("Martin")
        await page.get_by_label("Prénom").fill("Léa")
        await page.get_by_label("Date de naissance").fill("2010-03-14")
        await page.get_by_label("Adresse e-mail valide").fill(APPLICANT_EMAIL)
        await screenshot(page, "portal-create-account-phone")
        await _no_accessibility_violations(page)
        await page.get_by_role("button", name="Créer le compte").click()      # no consent yet
        assert "/creer-un-compte" in page.url                               # the browser refuses
        await page.get_by_label("J'ai lu le règlement du dispositif et je l'accepte").check()
        await page.get_by_role("button", name="Créer le compte").click()
        await expect(page.get_by_role("status")).to_contain_text(APPLICANT_EMAIL)

        await inbox.wait_for(1)
        _, recipients, mail = inbox.arrived[0]
        body = mail.get_content()
        assert recipients == [APPLICANT_EMAIL] and "Votre compte Génération #HDF" in mail["Subject"]
        identifier = body.split("identifiant : ")[1].split()[0]
        provisional = body.split("mot de passe provisoire : ")[1].split()[0]
        assert identifier.startswith("DEM")
        assert await conn.fetchval("SELECT rules_version IS NOT NULL AND consented_at IS NOT NULL"
                                   " FROM card_applications WHERE email = $1", APPLICANT_EMAIL)

        await page.goto(portal + "/connexion")
        await page.get_by_label("N° de dossier ou n° de carte").fill(identifier)
        await page.get_by_label("Mot de passe").fill(provisional)
        await page.get_by_role("button", name="Se connecter").click()
        await page.get_by_label("Mot de passe actuel").fill(provisional)
        await page.get_by_label("Nouveau mot de passe", exact=True).fill(NEW_PASSWORD)
        await page.get_by_label("Nouveau mot de passe, encore").fill(NEW_PASSWORD)
        await page.get_by_role("button", name="Enregistrer").click()
        await expect(page).to_have_url(portal + "/ma-demande")               # no card: the request
        await expect(page.get_by_role("button", name="Envoyer ma demande")).to_have_count(0)

        await page.get_by_role("link", name="Renseigner").click()
        await page.get_by_label("N° et rue").fill("12 rue des Lilas")
        await page.get_by_label("Appartement, étage, bâtiment (facultatif)").fill("Bât. B, apt 24")
        await page.get_by_label("Code postal").fill("62000")
        await page.get_by_label("Commune").fill("Arras")
        await page.get_by_label("Mon établissement (lycée ou lycée professionnel)").select_option(
            label="Lycée Robespierre, Arras")
        await _no_accessibility_violations(page)
        await page.get_by_role("button", name="Enregistrer").click()
        await expect(page.get_by_role("status")).to_contain_text("adresse et votre établissement")

        await page.get_by_role("link", name="Envoyer ma photo").click()
        (tmp_path / "notes.txt").write_text("pas une photo")
        await page.get_by_label("Photo").set_input_files(str(tmp_path / "notes.txt"))
        await page.get_by_role("button", name="Envoyer la photo").click()
        await expect(page.get_by_role("alert")).to_contain_text("pas une photo lisible")
        await page.get_by_label("Photo").set_input_files(_photo(tmp_path / "small.png", (200, 200)))
        await page.get_by_role("button", name="Envoyer la photo").click()
        await expect(page.get_by_role("alert")).to_contain_text("Photo trop petite")
        await screenshot(page, "portal-photo-refused-phone")
        await page.get_by_label("Photo").set_input_files(
            _photo(tmp_path / "face.jpg", kind="JPEG"))
        await page.get_by_role("button", name="Envoyer la photo").click()
        await expect(page.get_by_role("status")).to_contain_text("Votre photo est enregistrée")
        await screenshot(page, "portal-application-phone")
        stored = list(settings.photo_dir.iterdir())
        assert len(stored) == 1 and stored[0].stat().st_mode & 0o077 == 0   # the server's only

        await page.get_by_role("button", name="Envoyer ma demande").click()
        await expect(page.get_by_role("status")).to_contain_text("Votre demande est envoyée")
        await expect(page.locator("main")).to_contain_text("Demande reçue")
        dossier = await conn.fetchval("SELECT b.dossier_number FROM card_applications a JOIN"
                                      " beneficiaries b ON b.id = a.beneficiary_id")
        await expect(page.locator("main")).to_contain_text(f"N° de dossier : {dossier}")

        [request] = await card_requests.list_requests(conn, dossier_number=dossier)
        establishment = await conn.fetchval("SELECT establishment_id FROM beneficiaries"
                                            " WHERE dossier_number = $1", dossier)
        await pin_clock(conn, paris(2026, 11, 26, 11, 30))     # within the 2-hour session
        await card_requests.advance(conn, request.id, "prevalidated", actor="lycee",
                                    establishment_id=establishment)
        await page.reload()
        await expect(page.locator(".balance")).to_have_text("Validée par l'établissement")
        await expect(page.locator("ol.timeline")).to_contain_text("26/11/2026 à 11:30")
        await screenshot(page, "portal-follow-request-phone")
        await _no_accessibility_violations(page)

        desktop = await browser_page()
        await desktop.goto(portal + "/connexion")
        await desktop.get_by_label("N° de dossier ou n° de carte").fill(dossier)
        await desktop.get_by_label("Mot de passe").fill(NEW_PASSWORD)
        await desktop.get_by_role("button", name="Se connecter").click()
        await expect(desktop.locator("main")).to_contain_text("Suivre ma demande")


async def test_the_campaign_closes_with_the_wallet_and_opens_on_21_june(server, conn,
                                                                       browser_page):
    page = await browser_page()
    await pin_clock(conn, paris(2027, 5, 15, 12, 0))
    await page.goto(server.portal_url + "/creer-un-compte")
    await expect(page.locator("main")).to_contain_text(
        "Elles ouvriront le 21/06/2027 pour l'année scolaire 2027-2028")
    await expect(page.get_by_role("button", name="Créer le compte")).to_have_count(0)
    await pin_clock(conn, paris(2027, 6, 21, 0, 0))
    await page.reload()
    await expect(page.locator("main")).to_contain_text("Pour l'année scolaire 2027-2028")
