"""Back-office page for the expiry (1 May): when the year's wallets close, the runs so far (from
the audit trail, as GET /v1/ops/school-years/{year}/expiry) and, for region operators, the run
itself (ledger.expiry.expire_school_year, the API's own: refused before the close, idempotent
after, audited). It also runs daily from deploy/systemd/hdfpay-expiry.timer; the page is for an
operator who wants to see it done, or do it at once.

Two years on the page: the current one, open until its close, and the last one whose wallets have
closed, with its runs and (region operators) the button: on 2 May that is the year just closed."""

from __future__ import annotations

import aiohttp_jinja2
from aiohttp import web

from backoffice.operator_auth import POOL, Operator, Role
from backoffice.page_session import BASE, operator_page
from ledger import expiry, school_calendar

routes = web.RouteTableDef()
EXPIRY_PATH = BASE + "/expiration"
REGION, AUDITOR = Role.REGION_OPERATOR, Role.AUDITOR


@routes.get(EXPIRY_PATH)
@operator_page(REGION, AUDITOR)
async def expiry_page(request: web.Request, operator: Operator):
    async with request.app[POOL].acquire() as conn:
        year = await expiry.last_closed_school_year(conn)
        closed_at, _ = await expiry.wallet_close(conn, year)
        current_closes_at, _ = await expiry.wallet_close(conn, year + 1)
        runs = await expiry.expiry_runs(conn, year)
        zone = await school_calendar.business_time_zone(conn)
    return aiohttp_jinja2.render_template("bo_expiry.html", request, {
        "operator": operator, "year": year, "closed_at": closed_at,
        "current_closes_at": current_closes_at, "runs": runs, "zone": zone,
        "can_act": operator.role is REGION,
        "notice": request.query.get("fait"), "error": request.query.get("refus")})


@routes.post(EXPIRY_PATH)
@operator_page(REGION)
async def run_expiry(request: web.Request, operator: Operator):
    form = await request.post()
    if form.get("confirmer") != "oui":
        raise web.HTTPSeeOther(f"{EXPIRY_PATH}?refus=confirmation")
    async with request.app[POOL].acquire() as conn:
        year = await expiry.last_closed_school_year(conn)
        try:
            await expiry.expire_school_year(conn, year, actor=operator.actor)
        except expiry.ExpiryRefused:
            raise web.HTTPSeeOther(f"{EXPIRY_PATH}?refus=ouvert") from None
    raise web.HTTPSeeOther(f"{EXPIRY_PATH}?fait=expiration")
