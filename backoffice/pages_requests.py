"""Back-office pages on first-card requests: the queue by state, a request's page (the student,
the history, the photo to check) and its moves, through ledger.card_requests.advance (the SQL
advance_card_request: the legal moves, the reason of a rejection, the printed card, the history
and the audit row), exactly as the API's POST /v1/ops/card-requests/{id}/transitions.

Who, as in the API: region operators move any request; an establishment's staff see their own
students' requests and only pre-validate or reject a submitted one (the ledger refuses the rest,
HD403); auditors read. The photo is personal data: served to region operators only, who check it,
read from the photo folder by the name the ledger holds, never cached."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import aiohttp_jinja2
from aiohttp import web

from backoffice.operator_auth import POOL, Operator, Role
from backoffice.page_session import BASE, operator_page, scope
from ledger import beneficiaries, card_applications, card_requests, cards
from ledger.cards import Conflict, Invalid, NotFound, OutOfScope
from ledger.school_calendar import business_time_zone

routes = web.RouteTableDef()
PHOTO_DIR = web.AppKey("bureau_photo_dir", Path)        # None: this listener has no photos
REQUESTS_PATH = BASE + "/demandes"
REQUEST_PATH = REQUESTS_PATH + r"/{request_id:[0-9]{1,19}}"
READERS = (Role.REGION_OPERATOR, Role.ESTABLISHMENT_STAFF, Role.AUDITOR)
MOVERS = (Role.REGION_OPERATOR, Role.ESTABLISHMENT_STAFF)
PHOTO_VIEWERS = (Role.REGION_OPERATOR,)
STAFF_MOVES = ("PREVALIDATED", "REJECTED")          # what advance_card_request lets staff do
MAX_ID = 2**63 - 1
REASON_MAX_CHARS = 500                              # card_requests.rejection_reason's bound
FIELD_MAX_CHARS = 40
PHOTO_TYPES = {"jpg": "image/jpeg", "png": "image/png"}
_PHOTO_NAME = re.compile(r"[0-9a-f]{32}\.(jpg|png)")


def _id(text: str) -> int:
    value = int(text)
    if not 0 < value <= MAX_ID:
        raise web.HTTPNotFound(text="Demande introuvable")
    return value


def _forbidden(request: web.Request, operator: Operator, why: str | None = None):
    response = aiohttp_jinja2.render_template("forbidden.html", request,
                                              {"operator": operator, "why": why})
    response.set_status(403)
    return response


@routes.get(REQUESTS_PATH)
@operator_page(*READERS)
async def queue_page(request: web.Request, operator: Operator):
    state = card_requests.parse_state(request.query.get("etat", "SUBMITTED")[:FIELD_MAX_CHARS])
    before = request.query.get("avant", "")
    before_id = _id(before) if re.fullmatch(r"[0-9]{1,19}", before) else None
    async with request.app[POOL].acquire() as conn:
        counts = await card_requests.state_counts(conn, establishment_id=scope(operator))
        if state not in {c.state for c in counts}:
            raise web.HTTPNotFound(text="État inconnu")
        entries, older = await card_requests.queue(
            conn, state=state, establishment_id=scope(operator), before_id=before_id)
    return aiohttp_jinja2.render_template("bo_requests.html", request, {
        "operator": operator, "counts": counts, "state": state, "entries": entries,
        "next_url": None if older is None else f"{REQUESTS_PATH}?etat={state}&avant={older}",
        "page_rows": card_requests.REQUEST_PAGE_ROWS})


async def _visible(request: web.Request, operator: Operator, conn):
    """The request if this operator may read it: (request, None), or (None, a 403 page)."""
    try:
        found = await card_requests.get(conn, _id(request.match_info["request_id"]))
    except NotFound:
        raise web.HTTPNotFound(text="Demande introuvable") from None
    if operator.role is Role.ESTABLISHMENT_STAFF and found.establishment_id != operator.establishment_id:
        return None, _forbidden(request, operator, "Cette demande n'est pas celle d'un élève de "
                                                   "votre établissement.")
    return found, None


@routes.get(REQUEST_PATH)
@operator_page(*READERS)
async def request_page(request: web.Request, operator: Operator):
    async with request.app[POOL].acquire() as conn:
        found, refusal = await _visible(request, operator, conn)
        if refusal is not None:
            return refusal
        student = await beneficiaries.get(conn, found.beneficiary_id)
        moves = await card_requests.moves_from(conn, found.state)
        photo = await card_applications.photo_for_request(conn, found.id)
        zone = await business_time_zone(conn)
    if operator.role is Role.ESTABLISHMENT_STAFF:
        moves = [m for m in moves if found.state == "SUBMITTED" and m in STAFF_MOVES]
    elif operator.role is not Role.REGION_OPERATOR:
        moves = []
    return aiohttp_jinja2.render_template("bo_request.html", request, {
        "operator": operator, "r": found, "student": student, "moves": moves, "zone": zone,
        "photo": photo if operator.role in PHOTO_VIEWERS else None, "has_photo": photo is not None,
        "notice": request.query.get("fait"), "error": request.query.get("refus")})


def _refusal_code(refused: Exception) -> str:
    text = str(refused)
    if isinstance(refused, Invalid):
        return ("motif" if "reason" in text else "numero" if "card number" in text else "uid")
    if isinstance(refused, Conflict) and ("already" in text):
        return "doublon"
    return "etat"


@routes.post(REQUEST_PATH + "/etat")
@operator_page(*MOVERS)
async def move(request: web.Request, operator: Operator):
    form = await request.post()
    request_id = _id(request.match_info["request_id"])
    field = {name: (form.get(name) if isinstance(form.get(name), str) else "")
             for name in ("etat", "motif", "uid", "numero")}
    to_state = field["etat"][:FIELD_MAX_CHARS]
    page = f"{REQUESTS_PATH}/{request_id}"
    async with request.app[POOL].acquire() as conn:
        try:
            uid = cards.parse_uid(field["uid"][:FIELD_MAX_CHARS]) if to_state == "PRINTED" else None
            async with conn.transaction():
                await card_requests.advance(
                    conn, request_id, to_state, actor=operator.actor,
                    reason=field["motif"][:REASON_MAX_CHARS].strip() or None, card_uid=uid,
                    card_number=field["numero"].strip()[:FIELD_MAX_CHARS] or None,
                    establishment_id=scope(operator))
        except NotFound:
            raise web.HTTPNotFound(text="Demande introuvable") from None
        except OutOfScope as refused:
            return _forbidden(request, operator, "Cette demande n'est pas celle d'un élève de "
                              "votre établissement." if "not for a student" in str(refused) else
                              "Un établissement pré-valide ou refuse une demande reçue, rien "
                              "d'autre.")
        except (Invalid, Conflict) as refused:
            raise web.HTTPSeeOther(f"{page}?refus={_refusal_code(refused)}") from None
    raise web.HTTPSeeOther(f"{page}?fait={to_state}")


@routes.get(REQUEST_PATH + "/photo")
@operator_page(*PHOTO_VIEWERS)
async def photo(request: web.Request, operator: Operator):
    folder = request.app[PHOTO_DIR]
    async with request.app[POOL].acquire() as conn:
        found = await card_applications.photo_for_request(conn, _id(request.match_info["request_id"]))
    if folder is None or found is None or not _PHOTO_NAME.fullmatch(found.file_name):
        raise web.HTTPNotFound(text="Pas de photo pour cette demande")
    try:
        body = await asyncio.to_thread((folder / found.file_name).read_bytes)
    except FileNotFoundError:
        raise web.HTTPNotFound(text="Photo supprimée") from None
    return web.Response(body=body, content_type=PHOTO_TYPES[found.file_name.rsplit(".", 1)[1]],
                        headers={"Cache-Control": "no-store, private",
                                 "Content-Disposition": "inline"})
