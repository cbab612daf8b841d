"""Back-office pages on partner shops and their terminals: the list, adding a partner, suspending
and activating it (ledger.partners, the SQL functions the API's /v1/ops/partners calls, audited
there), a shop's page: its terminals with their keys' ids, statuses and counters and the check
value of the terminal's transport key (from the HSM: never key material), one business day's
terminal messages and totals, the settled days. A terminal is activated or suspended through
provisioning.set_terminal_status, as `hdfpay terminals activate|suspend` (audited alike); adding
a terminal shows a transport key once and stays with the CLI.

Who, as in the API: region operators change things, auditors read, a partner account reads its
own shop only (403 for any other); establishment staff have no business here."""

from __future__ import annotations

import datetime as dt
import re

import aiohttp_jinja2
import asyncpg
from aiohttp import web

from backoffice import provisioning
from backoffice.operator_auth import POOL, Operator, Role
from backoffice.page_session import BASE, operator_page
from hsm.interface import Hsm, HsmError
from hsm.key_aliases import kbpk_alias
from ledger import partners, settlement, shop_activity
from ledger.cards import Refused
from ledger.clock import business_today
from terminal_protocol.response_codes import APPROVED_CODES, describe

routes = web.RouteTableDef()
HSM = web.AppKey("bureau_hsm", Hsm)            # None: check values are not shown
PARTNERS_PATH = BASE + "/partenaires"
PARTNER_PATH = PARTNERS_PATH + r"/{partner_id:[0-9]{1,9}}"
TERMINAL_STATUS_PATH = BASE + r"/terminaux/{terminal_id:[A-Z0-9-]{4,32}}/statut"
REGION, AUDITOR, PARTNER = Role.REGION_OPERATOR, Role.AUDITOR, Role.PARTNER
SETTLED_DAYS_SHOWN = 31
FIELD_MAX_CHARS = 300
MAX_PARTNER_ID = 2**31 - 1
CATEGORIES_FR = {"BOOKSHOP": "librairie", "EQUIPMENT": "équipement professionnel"}
STATUSES_FR = {"ACTIVE": "actif", "SUSPENDED": "suspendu", "CLOSED": "fermé",
               "PENDING": "en attente", "REVOKED": "révoqué"}      # partners' and terminals'

PARTNER_MOVES = {"ACTIVE": "activer", "SUSPENDED": "suspendre"}     # CLOSED, final: the API/CLI
TERMINAL_MOVES = {"ACTIVE": "activer", "SUSPENDED": "suspendre"}    # REVOKED, final: the CLI
_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def _form_text(form, name: str) -> str:
    value = form.get(name)
    return value.strip()[:FIELD_MAX_CHARS] if isinstance(value, str) else ""


def _partner_id(request: web.Request) -> int:
    value = int(request.match_info["partner_id"])
    if not 0 < value <= MAX_PARTNER_ID:
        raise web.HTTPNotFound(text="Partenaire introuvable")
    return value


@routes.get(PARTNERS_PATH)
@operator_page(REGION, AUDITOR)
async def partners_page(request: web.Request, operator: Operator):
    status = request.query.get("statut", "")
    status = status if status in partners.STATUSES else None
    async with request.app[POOL].acquire() as conn:
        found = await partners.list_partners(conn, status=status)
    return aiohttp_jinja2.render_template("bo_partners.html", request, {
        "operator": operator, "partners": found, "status": status, "categories": CATEGORIES_FR,
        "statuses": STATUSES_FR,
        "can_act": operator.role is REGION, "notice": request.query.get("fait"),
        "error": request.query.get("refus"), "limit_rows": partners.LIST_LIMIT_ROWS})


@routes.post(PARTNERS_PATH)
@operator_page(REGION)
async def add_partner(request: web.Request, operator: Operator):
    form = await request.post()
    try:
        latitude = float(_form_text(form, "latitude").replace(",", "."))
        longitude = float(_form_text(form, "longitude").replace(",", "."))
    except ValueError:
        raise web.HTTPSeeOther(f"{PARTNERS_PATH}?refus=coordonnees") from None
    async with request.app[POOL].acquire() as conn:
        try:
            async with conn.transaction():
                added = await partners.add_partner(
                    conn, name=_form_text(form, "nom"), category=_form_text(form, "categorie"),
                    address=_form_text(form, "adresse"), latitude=latitude, longitude=longitude,
                    actor=operator.actor)
        except Refused:
            raise web.HTTPSeeOther(f"{PARTNERS_PATH}?refus=partenaire") from None
    raise web.HTTPSeeOther(f"{PARTNERS_PATH}/{added.id}?fait=ajout")


def _check_values(hsm: Hsm | None, terminals) -> dict[str, str]:
    """Each terminal's transport key check value (6 hex digits) where the HSM holds the key."""
    values = {}
    for terminal in terminals if hsm is not None else ():
        try:
            values[terminal.terminal_id] = hsm.key_info(kbpk_alias(terminal.terminal_id)).kcv
        except HsmError:
            pass
    return values


def _day(text: str) -> dt.date | None:
    try:
        return dt.date.fromisoformat(text) if _DAY.fullmatch(text) else None
    except ValueError:
        return None


@routes.get(PARTNER_PATH)
@operator_page(REGION, AUDITOR, PARTNER)
async def partner_page(request: web.Request, operator: Operator):
    partner_id = _partner_id(request)
    if operator.role is PARTNER and operator.partner_id != partner_id:
        response = aiohttp_jinja2.render_template("forbidden.html", request, {
            "operator": operator, "why": "Un compte partenaire ne voit que sa propre boutique."})
        response.set_status(403)
        return response
    before = request.query.get("avant", "")
    before_id = int(before) if re.fullmatch(r"[0-9]{1,18}", before) else None
    async with request.app[POOL].acquire() as conn:
        try:
            partner = await partners.get_partner(conn, partner_id)
        except Refused:
            raise web.HTTPNotFound(text="Partenaire introuvable") from None
        today = await business_today(conn)
        day = _day(request.query.get("jour", "")) or today
        terminals = await shop_activity.terminals_of(conn, partner_id)
        messages, older = await shop_activity.day_messages(conn, partner_id, day,
                                                           before_id=before_id)
        totals = await shop_activity.day_totals(conn, partner_id, day, APPROVED_CODES)
        settled = await settlement.partner_lines(
            conn, partner_id, today - dt.timedelta(days=SETTLED_DAYS_SHOWN - 1), today)
    return aiohttp_jinja2.render_template("bo_partner.html", request, {
        "operator": operator, "p": partner, "terminals": terminals, "categories": CATEGORIES_FR,
        "statuses": STATUSES_FR,
        "kcv": _check_values(request.app[HSM], terminals), "day": day, "today": today,
        "previous_day": day - dt.timedelta(days=1), "next_day": day + dt.timedelta(days=1),
        "messages": messages, "totals": totals, "settled": settled[::-1],
        "settled_days": SETTLED_DAYS_SHOWN, "describe": describe, "approved": APPROVED_CODES,
        "next_url": None if older is None else f"?jour={day.isoformat()}&avant={older}",
        "can_act": operator.role is REGION, "partner_moves": PARTNER_MOVES,
        "terminal_moves": TERMINAL_MOVES,
        "notice": request.query.get("fait"), "error": request.query.get("refus")})


@routes.post(PARTNER_PATH + "/statut")
@operator_page(REGION)
async def partner_status(request: web.Request, operator: Operator):
    partner_id = _partner_id(request)
    status = _form_text(await request.post(), "statut")
    page = f"{PARTNERS_PATH}/{partner_id}"
    if status not in PARTNER_MOVES:
        raise web.HTTPSeeOther(f"{page}?refus=statut")
    async with request.app[POOL].acquire() as conn:
        try:
            async with conn.transaction():
                await partners.set_partner_status(conn, partner_id, status, actor=operator.actor)
        except partners.NotFound:
            raise web.HTTPNotFound(text="Partenaire introuvable") from None
        except Refused:
            raise web.HTTPSeeOther(f"{page}?refus=statut") from None
    raise web.HTTPSeeOther(f"{page}?fait={status}")


@routes.post(TERMINAL_STATUS_PATH)
@operator_page(REGION)
async def terminal_status(request: web.Request, operator: Operator):
    terminal_id = request.match_info["terminal_id"]
    status = _form_text(await request.post(), "statut")
    async with request.app[POOL].acquire() as conn:
        partner_id = await shop_activity.terminal_partner(conn, terminal_id)
        if partner_id is None:
            raise web.HTTPNotFound(text="Terminal introuvable")
        page = f"{PARTNERS_PATH}/{partner_id}"
        terminal = next(t for t in await shop_activity.terminals_of(conn, partner_id)
                        if t.terminal_id == terminal_id)
        if status not in TERMINAL_MOVES or terminal.status == "REVOKED":
            raise web.HTTPSeeOther(f"{page}?refus=terminal")
        try:
            await provisioning.set_terminal_status(conn, terminal_id, status, actor=operator.actor)
        except asyncpg.IntegrityConstraintViolationError:      # revoked meanwhile: final
            raise web.HTTPSeeOther(f"{page}?refus=terminal") from None
    raise web.HTTPSeeOther(f"{page}?fait=terminal-{status}")
