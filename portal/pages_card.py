""""Ma carte" (balance, validity, rights, cards, history) and the declaration of a lost or stolen
card: irreversible, said plainly, confirmed; after it every terminal declines the card."""

from __future__ import annotations

import aiohttp_jinja2
from aiohttp import web

from ledger.cards import oppose_card
from ledger.rules import current_rules
from ledger.student_card import card_page, own_card_status
from ledger.students import StudentSession
from portal.student_session import POOL, current, students_only

routes = web.RouteTableDef()
LOSS_REASONS = {"perte": "LOST", "vol": "STOLEN"}
MAX_CARD_ID = 2**63 - 1


@routes.get("/")
async def home(request: web.Request):
    raise web.HTTPSeeOther("/ma-carte" if current(request) else "/connexion")


@routes.get("/ma-carte")
@students_only
async def my_card(request: web.Request, session: StudentSession):
    if session.student.beneficiary_id is None:       # an applicant: no card yet
        raise web.HTTPSeeOther("/ma-demande")
    async with request.app[POOL].acquire() as conn:
        page = await card_page(conn, session.student.beneficiary_id)
    return aiohttp_jinja2.render_template("card.html", request, {
        "session": session, "page": page,
        "notice": {"change": "Votre mot de passe est changé.",
                   "opposee": "Votre carte est bloquée : elle est refusée partout.",
                   "demandee": "Votre demande de nouvelle carte est envoyée à la Région."}.get(
            request.query.get("mot-de-passe") or request.query.get("carte"))})


async def own_card(request: web.Request, session: StudentSession, conn, *,
                   active: bool) -> int:
    """The card of the URL, if it is this student's and active (or opposed, `active` False):
    else 404, the same answer for another student's card as for none (a student learns nothing
    of others' ids)."""
    try:
        card_id = int(request.match_info["card_id"])
    except ValueError:
        raise web.HTTPNotFound() from None
    status = (await own_card_status(conn, session.student.beneficiary_id, card_id)
              if 0 < card_id <= MAX_CARD_ID else None)
    if status is None or (status == "ACTIVE") != active:
        raise web.HTTPNotFound()
    return card_id


@routes.get(r"/carte/{card_id:\d{1,19}}/perte")
@students_only
async def loss_page(request: web.Request, session: StudentSession):
    async with request.app[POOL].acquire() as conn:
        card_id = await own_card(request, session, conn, active=True)
        page = await card_page(conn, session.student.beneficiary_id)
        fee = (await current_rules(conn)).replacement_fee_cents
    card = next(c for c in page.cards if c.card_id == card_id)
    return aiohttp_jinja2.render_template("loss.html", request, {
        "session": session, "card": card, "fee_cents": fee, "error": None})


@routes.post(r"/carte/{card_id:\d{1,19}}/perte")
@students_only
async def declare_loss(request: web.Request, session: StudentSession):
    form = await request.post()
    reason = LOSS_REASONS.get(form.get("motif") if isinstance(form.get("motif"), str) else "")
    async with request.app[POOL].acquire() as conn:
        card_id = await own_card(request, session, conn, active=True)
        if reason is None or form.get("confirmation") != "oui":
            page = await card_page(conn, session.student.beneficiary_id)
            fee = (await current_rules(conn)).replacement_fee_cents
            response = aiohttp_jinja2.render_template("loss.html", request, {
                "session": session, "card": next(c for c in page.cards if c.card_id == card_id),
                "fee_cents": fee,
                "error": "Choisissez perte ou vol, et cochez la case de confirmation."})
            response.set_status(400)
            return response
        async with conn.transaction():
            await oppose_card(conn, card_id, reason,
                              actor=f"student:{session.student.account_id}")
    raise web.HTTPSeeOther("/ma-carte?carte=opposee")
