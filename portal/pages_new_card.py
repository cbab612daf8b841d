""""Demander une nouvelle carte" (after a loss, a theft or damage) and "Carte défectueuse" (posted
to the region, replaced free once confirmed): both refused, with the reason the region's
documents give, while the establishment has not renewed this school year's rights."""

from __future__ import annotations

import aiohttp_jinja2
from aiohttp import web

from ledger.cards import Refused, request_replacement
from ledger.rules import current_rules
from ledger.student_card import card_page, own_card_status
from ledger.students import StudentSession
from portal.pages_card import own_card
from portal.student_session import POOL, students_only

routes = web.RouteTableDef()
# Where a defective card is posted (the region's documents).
DEFECTIVE_CARD_ADDRESS = ("Conseil régional Hauts-de-France", "Carte GENERATION #HDF",
                          "151 avenue du Président Hoover", "59555 LILLE CEDEX")
ALREADY_ASKED = "Une nouvelle carte est déjà demandée, ou la carte est déjà remplacée."


async def _page(request: web.Request, session: StudentSession, *, active: bool,
                error: str | None = None, status: int = 200):
    async with request.app[POOL].acquire() as conn:
        card_id = await own_card(request, session, conn, active=active)
        page = await card_page(conn, session.student.beneficiary_id)
        fee = (await current_rules(conn)).replacement_fee_cents
    card = next(c for c in page.cards if c.card_id == card_id)
    response = aiohttp_jinja2.render_template(
        "defective.html" if active else "new_card.html", request, {
            "session": session, "card": card, "page": page, "fee_cents": fee, "error": error,
            "address": DEFECTIVE_CARD_ADDRESS})
    response.set_status(status)
    return response


async def _request(request: web.Request, session: StudentSession, *, active: bool):
    async with request.app[POOL].acquire() as conn:
        card_id = await own_card(request, session, conn, active=active)
        if not (await card_page(conn, session.student.beneficiary_id)).rights_this_year:
            return await _page(request, session, active=active, status=409)  # it says why
        status = "DEFECTIVE" if active else None
        try:
            async with conn.transaction():
                if status is None:
                    status = await own_card_status(conn, session.student.beneficiary_id, card_id)
                await request_replacement(conn, card_id, status,
                                          actor=f"student:{session.student.account_id}")
        except Refused:
            # The page said why before the form (rights); what is left is a request already made.
            return await _page(request, session, active=active, error=ALREADY_ASKED, status=409)
    raise web.HTTPSeeOther("/ma-carte?carte=demandee")


@routes.get(r"/carte/{card_id:\d{1,19}}/nouvelle-carte")
@students_only
async def new_card_page(request: web.Request, session: StudentSession):
    return await _page(request, session, active=False)


@routes.post(r"/carte/{card_id:\d{1,19}}/nouvelle-carte")
@students_only
async def ask_new_card(request: web.Request, session: StudentSession):
    return await _request(request, session, active=False)


@routes.get(r"/carte/{card_id:\d{1,19}}/defectueuse")
@students_only
async def defective_page(request: web.Request, session: StudentSession):
    return await _page(request, session, active=True)


@routes.post(r"/carte/{card_id:\d{1,19}}/defectueuse")
@students_only
async def declare_defective(request: web.Request, session: StudentSession):
    return await _request(request, session, active=True)
