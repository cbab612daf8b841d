"""Back-office pages on students' cards: log in, find a beneficiary, read their page (cards,
wallet, rights, history), oppose a card (irreversible: said, confirmed) and replace it (the fee
shown, refused before the rights are renewed). Every action goes through the same ledger
functions as the API and the CLI, audited under the operator's name."""

from __future__ import annotations

import aiohttp_jinja2
from aiohttp import web

from backoffice.operator_auth import POOL, Operator, Role
from backoffice.page_session import (BASE, COOKIE, LOGIN_PATH, PASSWORD_PATH, SEARCHERS,
                                     operator_page, page_session, scope)
from ledger import beneficiaries, cards, operators
from ledger.cards import Refused
from ledger.rules import current_rules
from ledger.student_card import card_page
from web.security import set_cookie

routes = web.RouteTableDef()
FIELD_MAX_CHARS = 200
REASONS = {"perte": "LOST", "vol": "STOLEN", "deterioration": "DAMAGED",
           "defectueuse": "DEFECTIVE"}
MAX_ID = 2**63 - 1


def _field(form, name: str) -> str:
    value = form.get(name)
    return value[:FIELD_MAX_CHARS] if isinstance(value, str) else ""


def _id(request: web.Request, name: str) -> int:
    try:
        value = int(request.match_info[name])
    except ValueError:
        raise web.HTTPNotFound() from None
    if not 0 < value <= MAX_ID:
        raise web.HTTPNotFound()
    return value


@routes.get(LOGIN_PATH)
async def login_page(request: web.Request):
    return aiohttp_jinja2.render_template("bo_login.html", request, {"error": None, "login": ""})


@routes.post(LOGIN_PATH)
async def login(request: web.Request):
    form = await request.post()
    name = _field(form, "identifiant")
    async with request.app[POOL].acquire() as conn:
        try:
            session = await operators.login(conn, name, _field(form, "mot_de_passe"), via="bureau")
        except operators.OperatorError:
            response = aiohttp_jinja2.render_template("bo_login.html", request, {
                "error": "Identifiant ou mot de passe incorrect, ou compte bloqué", "login": name})
            response.set_status(401)
            return response
    response = web.HTTPSeeOther(PASSWORD_PATH if session.account.must_change_password
                                else BASE + "/")
    set_cookie(request, response, COOKIE, session.token)
    raise response


@routes.post(BASE + "/deconnexion")
async def logout(request: web.Request):
    session = page_session(request)
    if session is not None:
        await operators.logout(request.app[POOL], session, via="bureau")
    response = web.HTTPSeeOther(LOGIN_PATH)
    response.del_cookie(COOKIE, path="/")
    raise response


@routes.get(PASSWORD_PATH)
@operator_page(*Role)
async def password_page(request: web.Request, operator: Operator):
    return aiohttp_jinja2.render_template("bo_password.html", request,
                                          {"operator": operator, "error": None})


@routes.post(PASSWORD_PATH)
@operator_page(*Role)
async def change_password(request: web.Request, operator: Operator):
    form = await request.post()
    error = None
    if _field(form, "nouveau") != _field(form, "confirmation"):
        error = "Les deux saisies du nouveau mot de passe diffèrent"
    else:
        async with request.app[POOL].acquire() as conn:
            try:
                await operators.change_password(conn, page_session(request),
                                                _field(form, "actuel"), _field(form, "nouveau"))
            except operators.OperatorError as exc:
                error = f"Refusé : {exc}"
    if error is None:
        raise web.HTTPSeeOther(BASE + "/")
    response = aiohttp_jinja2.render_template("bo_password.html", request,
                                              {"operator": operator, "error": error})
    response.set_status(400)
    return response


@routes.get(BASE + "/")
@operator_page(*SEARCHERS)
async def search_page(request: web.Request, operator: Operator):
    text = request.query.get("q", "")[:FIELD_MAX_CHARS]
    async with request.app[POOL].acquire() as conn:
        found = await beneficiaries.search(conn, text, establishment_id=scope(operator))
    return aiohttp_jinja2.render_template("bo_search.html", request, {
        "operator": operator, "q": text, "found": found})


async def _beneficiary(request, operator, conn, beneficiary_id: int):
    found = await beneficiaries.get(conn, beneficiary_id, establishment_id=scope(operator))
    if found is None:              # none, or another establishment's: the same answer
        raise web.HTTPNotFound(text="Bénéficiaire introuvable")
    return found


@routes.get(BASE + r"/beneficiaires/{beneficiary_id:\d{1,19}}")
@operator_page(*SEARCHERS)
async def beneficiary_page(request: web.Request, operator: Operator):
    async with request.app[POOL].acquire() as conn:
        found = await _beneficiary(request, operator, conn, _id(request, "beneficiary_id"))
        page = await card_page(conn, found.id)
        fee = (await current_rules(conn)).replacement_fee_cents
    return aiohttp_jinja2.render_template("bo_beneficiary.html", request, {
        "operator": operator, "b": found, "page": page, "fee_cents": fee,
        "can_act": operator.role is Role.REGION_OPERATOR,
        "notice": request.query.get("fait"), "error": request.query.get("refus")})


async def _owner(conn, card_id: int) -> int:
    """The beneficiary whose page an action on this card returns to; 404 for no such card."""
    owner = await beneficiaries.beneficiary_of_card(conn, card_id)
    if owner is None:
        raise web.HTTPNotFound(text="Carte introuvable")
    return owner


@routes.post(BASE + r"/cartes/{card_id:\d{1,19}}/opposition")
@operator_page(Role.REGION_OPERATOR)
async def oppose(request: web.Request, operator: Operator):
    form = await request.post()
    card_id = _id(request, "card_id")
    async with request.app[POOL].acquire() as conn:
        owner = await _owner(conn, card_id)
        reason = REASONS.get(_field(form, "motif"))
        if reason is None or reason == "DEFECTIVE" or form.get("confirmation") != "oui":
            raise web.HTTPSeeOther(f"{BASE}/beneficiaires/{owner}?refus=confirmation")
        try:
            async with conn.transaction():
                await cards.oppose_card(conn, card_id, reason, actor=operator.actor)
        except Refused:
            raise web.HTTPSeeOther(f"{BASE}/beneficiaires/{owner}?refus=opposition") from None
    raise web.HTTPSeeOther(f"{BASE}/beneficiaires/{owner}?fait=opposition")


@routes.post(BASE + r"/cartes/{card_id:\d{1,19}}/remplacement")
@operator_page(Role.REGION_OPERATOR)
async def replace(request: web.Request, operator: Operator):
    form = await request.post()
    card_id = _id(request, "card_id")
    async with request.app[POOL].acquire() as conn:
        owner = await _owner(conn, card_id)
        try:
            uid = cards.parse_uid(_field(form, "uid"))
            reason = REASONS.get(_field(form, "motif")) if _field(form, "motif") else None
            async with conn.transaction():
                await cards.replace_card(conn, card_id, uid, actor=operator.actor, reason=reason)
        except Refused as exc:
            code = ("droits" if "not renewed" in str(exc) else
                    "uid" if isinstance(exc, cards.Invalid) else "remplacement")
            raise web.HTTPSeeOther(f"{BASE}/beneficiaires/{owner}?refus={code}") from None
    raise web.HTTPSeeOther(f"{BASE}/beneficiaires/{owner}?fait=remplacement")
