""""Créer un compte → première demande de carte", "Poursuivre ma demande" (address,
establishment, photo) and "Suivre ma demande" (the states the establishment and the region move
the request through, with their dates)."""

from __future__ import annotations

import datetime as dt

import aiohttp_jinja2
from aiohttp import web

from ledger import card_applications as applications
from ledger import card_requests
from ledger.card_applications import RULES_VERSION
from ledger.school_calendar import business_time_zone
from ledger.students import StudentAccountError, StudentSession
from portal.photos import PhotoRefused, remove_photo, store_photo
from portal.portal_links import LINKS
from portal.student_session import PHOTO_DIR, POOL, current, students_only

routes = web.RouteTableDef()
FIELD_MAX_CHARS = 300
APPLICATION_PATH = "/ma-demande"


def _field(form, name: str) -> str:
    value = form.get(name)
    return value[:FIELD_MAX_CHARS] if isinstance(value, str) else ""


def _applicant(session: StudentSession) -> int:
    if session.student.application_id is None:
        raise web.HTTPSeeOther("/ma-carte")        # a beneficiary from before online requests
    return session.student.application_id


@routes.get("/creer-un-compte")
async def create_page(request: web.Request):
    if current(request) is not None:
        raise web.HTTPSeeOther(APPLICATION_PATH)
    async with request.app[POOL].acquire() as conn:
        year, opens = await applications.campaign(conn)
    return aiohttp_jinja2.render_template("account_create.html", request, {
        "year": year, "opens": opens, "rules_version": RULES_VERSION, "error": None, "form": {}})


@routes.post("/creer-un-compte")
async def create_account(request: web.Request):
    form = await request.post()
    values = {name: _field(form, name) for name in ("nom", "prenom", "naissance", "email")}
    async with request.app[POOL].acquire() as conn:
        year, opens = await applications.campaign(conn)
        try:
            try:
                birth_date = dt.date.fromisoformat(values["naissance"])
            except ValueError:
                raise StudentAccountError("Date de naissance invalide") from None
            await applications.create_application(
                conn, last_name=values["nom"], first_name=values["prenom"], birth_date=birth_date,
                email=values["email"], consent=form.get("consentement") == "oui",
                portal_url=request.app[LINKS].public_url)
        except StudentAccountError as exc:
            response = aiohttp_jinja2.render_template("account_create.html", request, {
                "year": year, "opens": opens, "rules_version": RULES_VERSION,
                "error": str(exc), "form": values})
            response.set_status(400)
            return response
    request.app[LINKS].mail_queued()
    return aiohttp_jinja2.render_template("account_created.html", request,
                                          {"email": values["email"]})


@routes.get(APPLICATION_PATH)
@students_only
async def application_page(request: web.Request, session: StudentSession):
    async with request.app[POOL].acquire() as conn:
        application = await applications.get_application(conn, _applicant(session))
        followed, zone = None, await business_time_zone(conn)
        if application.beneficiary_id is not None:
            found = await card_requests.list_requests(
                conn, dossier_number=application.dossier_number, limit_rows=1)
            followed = await card_requests.get(conn, found[0].id) if found else None
    return aiohttp_jinja2.render_template("application.html", request, {
        "session": session, "application": application, "request_followed": followed, "zone": zone,
        "notice": request.query.get("etape")})


@routes.get(APPLICATION_PATH + "/coordonnees")
@students_only
async def address_page(request: web.Request, session: StudentSession):
    return await _address_form(request, session)


async def _address_form(request, session, *, error: str | None = None, status: int = 200,
                        values: dict | None = None):
    async with request.app[POOL].acquire() as conn:
        application = await applications.get_application(conn, _applicant(session))
        schools = await applications.establishments_for_applicants(conn)
    response = aiohttp_jinja2.render_template("application_address.html", request, {
        "session": session, "application": application, "schools": schools, "error": error,
        "values": values})
    response.set_status(status)
    return response


@routes.post(APPLICATION_PATH + "/coordonnees")
@students_only
async def save_address(request: web.Request, session: StudentSession):
    form = await request.post()
    names = ("adresse", "complement", "boite", "code_postal", "commune", "etablissement")
    values = {name: _field(form, name) for name in names}
    try:
        school = int(values["etablissement"])
    except ValueError:
        school = 0
    async with request.app[POOL].acquire() as conn:
        try:
            await applications.save_address(
                conn, _applicant(session), address_line=values["adresse"],
                address_complement=values["complement"], mailbox_name=values["boite"],
                postcode=values["code_postal"], town=values["commune"], establishment_id=school)
        except StudentAccountError as exc:
            return await _address_form(request, session, error=str(exc), status=400,
                                       values=values)
    raise web.HTTPSeeOther(APPLICATION_PATH + "?etape=coordonnees")


@routes.get(APPLICATION_PATH + "/photo")
@students_only
async def photo_page(request: web.Request, session: StudentSession):
    return await _photo_form(request, session)


async def _photo_form(request, session, *, error: str | None = None, status: int = 200):
    async with request.app[POOL].acquire() as conn:
        application = await applications.get_application(conn, _applicant(session))
    response = aiohttp_jinja2.render_template("application_photo.html", request, {
        "session": session, "application": application, "error": error})
    response.set_status(status)
    return response


@routes.post(APPLICATION_PATH + "/photo")
@students_only
async def save_photo(request: web.Request, session: StudentSession):
    form = await request.post()
    upload = form.get("photo")
    data = upload.file.read() if isinstance(upload, web.FileField) else b""
    photo_dir = request.app[PHOTO_DIR]
    try:
        stored = store_photo(data, photo_dir)
    except PhotoRefused as exc:
        return await _photo_form(request, session, error=str(exc), status=400)
    async with request.app[POOL].acquire() as conn:
        try:
            replaced = await applications.save_photo(
                conn, _applicant(session), photo_file=stored.file_name,
                size_bytes=stored.size_bytes, width_px=stored.width_px, height_px=stored.height_px)
        except StudentAccountError as exc:
            remove_photo(photo_dir, stored.file_name)
            return await _photo_form(request, session, error=str(exc), status=409)
    remove_photo(photo_dir, replaced)
    raise web.HTTPSeeOther(APPLICATION_PATH + "?etape=photo")


@routes.post(APPLICATION_PATH + "/envoyer")
@students_only
async def send_application(request: web.Request, session: StudentSession):
    async with request.app[POOL].acquire() as conn:
        try:
            await applications.submit_application(
                conn, _applicant(session), actor=f"student:{session.student.account_id}")
        except StudentAccountError:
            raise web.HTTPSeeOther(APPLICATION_PATH + "?etape=incomplete") from None
    raise web.HTTPSeeOther(APPLICATION_PATH + "?etape=envoyee")
