"""First-card requests in the back office, in Chromium: the establishment's staff pre-validate
their own student's request, a region operator checks the photo (served to them only, never
cached), records the printed card, the mailing and activates it (then a terminal approves the
card), another request is rejected with a reason the student reads. Each move is audited as the
API's. Every page as every role and anonymously; staff of another establishment refused (HD403)."""

from __future__ import annotations

import datetime as dt

from PIL import Image
from playwright.async_api import expect

from backoffice.operator_auth import Role
from ledger import card_applications
from ledger.clock import pin_clock
from portal.photos import store_photo

from browser_fixtures import PHONE, screenshot
from bureau_pages import assert_roles_refused_pages, log_in, role_tokens, visit
from conftest import SCHOOL_DAY
from operator_fixtures import CHEAP_HASHER, add_test_operator
from test_portal import _no_accessibility_violations

PASSWORD = "un mot de passe du bureau"
PRINTED_UID = "04A1B2C3D4E5F6"


def _photo_bytes(tmp_path) -> bytes:
    path = tmp_path / "face.png"
    Image.new("RGB", (600, 800), (200, 180, 160)).save(path, format="PNG")
    return path.read_bytes()


async def _application(conn, settings, tmp_path, last_name: str) -> tuple[int, int]:
    """A complete online application, sent: (request id, establishment id)."""
    establishment = await conn.fetchval("SELECT min(id) FROM establishments WHERE kind = 'LYCEE'")
    application = await card_applications.create_application(
        conn, last_name=last_name, first_name="Léa", birth_date=dt.date(2010, 3, 14),
        email=f"{last_name.lower()}@eleves.example", consent=True, portal_url="http://portail",
        hasher=CHEAP_HASHER)
    await card_applications.save_address(
        conn, application, address_line="3 rue des Lilas", address_complement="",
        mailbox_name="", postcode="59000", town="Lille", establishment_id=establishment)
    stored = store_photo(_photo_bytes(tmp_path), settings.photo_dir)
    await card_applications.save_photo(conn, application, photo_file=stored.file_name,
                                       size_bytes=stored.size_bytes, width_px=stored.width_px,
                                       height_px=stored.height_px)
    request_id = await card_applications.submit_application(conn, application,
                                                            actor="student:test")
    return request_id, establishment


async def test_a_first_card_request_from_pre_validation_to_an_active_card(
        server, settings, dsn, conn, client, browser_page, tmp_path):
    await pin_clock(conn, SCHOOL_DAY)
    request_id, establishment = await _application(conn, settings, tmp_path, "Martin")
    rejected_id, _ = await _application(conn, settings, tmp_path, "Durand")
    staff, _, _ = await add_test_operator(dsn, Role.ESTABLISHMENT_STAFF, password=PASSWORD,
                                          establishment_id=establishment)
    region, _, _ = await add_test_operator(dsn, Role.REGION_OPERATOR, password=PASSWORD)
    bureau = server.ops_url + "/bureau"

    phone = await browser_page(PHONE)
    await log_in(phone, bureau, staff.login, PASSWORD)
    await phone.get_by_role("link", name="Demandes de carte").click()
    await expect(phone.get_by_role("heading", name="Demande reçue : 2 demande(s) affichée(s) sur 2")
                 ).to_be_visible()
    await screenshot(phone, "backoffice-requests-queue-phone")
    await _no_accessibility_violations(phone)
    assert await phone.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    await phone.get_by_role("link", name=f"Demande {request_id}").click()
    await expect(phone.locator("main")).to_contain_text("La photo n'est montrée qu'aux opérateurs")
    await expect(phone.get_by_role("button", name="Photo conforme")).to_have_count(0)
    await phone.get_by_role("button", name="Pré-valider (élève de l'établissement)").click()
    await expect(phone.get_by_role("status")).to_have_text("Demande pré-validée.")
    await expect(phone.get_by_test_id("state")).to_have_text("Validée par l'établissement")
    await expect(phone.get_by_role("button")).to_have_text(["Se déconnecter"])  # nothing more

    page = await browser_page()
    await log_in(page, bureau, region.login, PASSWORD)
    await page.goto(f"{bureau}/demandes?etat=PREVALIDATED")
    await page.get_by_role("link", name=f"Demande {request_id}").click()
    photo = page.get_by_role("img", name="Photo d'identité envoyée par Léa Martin")
    await expect(photo).to_be_visible()
    assert await photo.evaluate("img => img.naturalWidth") == 600
    await screenshot(page, "backoffice-request-photo-desktop")
    await _no_accessibility_violations(page)
    await page.get_by_role("button", name="Photo conforme").click()
    await expect(page.get_by_role("status")).to_have_text("Photo vérifiée.")
    await page.get_by_label("UID de la carte imprimée (hexadécimal)").fill("04A1")    # hex, but 2 bytes: the server refuses
    await page.get_by_role("button", name="Carte imprimée").click()
    await expect(page.get_by_role("alert")).to_contain_text("4, 7 ou 10 octets")
    await page.get_by_label("UID de la carte imprimée (hexadécimal)").fill(PRINTED_UID)
    await page.get_by_role("button", name="Carte imprimée").click()
    await expect(page.get_by_role("status")).to_have_text("Carte imprimée enregistrée.")
    await page.get_by_role("button", name="Carte envoyée par courrier").click()
    await page.get_by_role("button", name="Activer la carte").click()
    await expect(page.get_by_test_id("state")).to_have_text("Carte active")
    await screenshot(page, "backoffice-request-active-desktop")
    assert (await client.purchase(bytes.fromhex(PRINTED_UID), 0)).rc != "14"  # the card is known

    await page.goto(f"{bureau}/demandes/{rejected_id}")
    await page.get_by_label("Motif du refus (l'élève le lira)").fill("Photo floue : envoyez-en une autre")
    await page.get_by_role("button", name="Refuser la demande").click()
    await expect(page.get_by_role("status")).to_have_text("Demande refusée.")
    await expect(page.get_by_test_id("state")).to_contain_text("Photo floue")

    moves = await conn.fetch("SELECT actor, after->>'state' AS state FROM audit_log"
                             " WHERE action = 'card_request.advance' ORDER BY id")
    assert [(m["actor"], m["state"]) for m in moves] == [
        (f"establishment_staff:{staff.login}", "PREVALIDATED"),
        *[(f"region_operator:{region.login}", state) for state in
          ("PHOTO_CHECKED", "PRINTED", "MAILED", "ACTIVE", "REJECTED")]]


async def test_the_request_pages_as_every_role_and_anonymously(server, settings, dsn, conn,
                                                               tmp_path):
    await pin_clock(conn, SCHOOL_DAY)
    request_id, establishment = await _application(conn, settings, tmp_path, "Petit")
    other_school = await conn.fetchval("SELECT min(id) FROM establishments WHERE id <> $1",
                                       establishment)
    tokens = await role_tokens(dsn, establishment_id=establishment)
    demandes = f"{server.ops_url}/bureau/demandes"
    readers = {Role.REGION_OPERATOR, Role.ESTABLISHMENT_STAFF, Role.AUDITOR}
    await assert_roles_refused_pages(server, tokens, [
        ("GET", demandes, None, readers),
        ("GET", f"{demandes}?etat=PRINTED&avant=5", None, readers),
        ("GET", f"{demandes}/{request_id}", None, readers),
        ("GET", f"{demandes}/{request_id}/photo", None, {Role.REGION_OPERATOR}),
        ("POST", f"{demandes}/{request_id}/etat", {"etat": "REJECTED"},  # no reason: refused, nothing moves
         {Role.REGION_OPERATOR, Role.ESTABLISHMENT_STAFF}),
    ])
    status, _, body, headers = await visit(server, tokens[Role.REGION_OPERATOR], "GET",
                                           f"{demandes}/{request_id}/photo")
    assert (status, headers["Content-Type"]) == (200, "image/png") and body is not None
    assert headers["Cache-Control"] == "no-store, private"

    _, other_token, _ = await add_test_operator(dsn, Role.ESTABLISHMENT_STAFF,
                                                establishment_id=other_school)
    for method, url, form in (("GET", f"{demandes}/{request_id}", None),
                              ("POST", f"{demandes}/{request_id}/etat", {"etat": "PREVALIDATED"})):
        status, _, text, _ = await visit(server, other_token, method, url, form)
        assert status == 403 and "pas celle d'un élève de votre établissement" in text
    status, _, text, _ = await visit(server, other_token, "GET", demandes)
    assert status == 200 and "Demande reçue : 0 demande(s)" in text
    _, own_token, _ = await add_test_operator(dsn, Role.ESTABLISHMENT_STAFF,
                                              establishment_id=establishment)
    status, _, text, _ = await visit(server, own_token, "POST", f"{demandes}/{request_id}/etat",
                                     {"etat": "PHOTO_CHECKED"})
    assert status == 403 and "pré-valide ou refuse une demande reçue" in text
    assert await conn.fetchval("SELECT state FROM card_requests WHERE id = $1",
                               request_id) == "SUBMITTED"
    assert await conn.fetchval("SELECT count(*) FROM audit_log"
                               " WHERE action = 'card_request.advance'") == 0
