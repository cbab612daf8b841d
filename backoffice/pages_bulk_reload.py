"""Back-office page for the school year's bulk reload: the programmes' amounts (set through
ledger.programmes.set_amount, audited as PUT /v1/ops/school-years/{year}/programmes/{p}), the
launch or the resumption of the year's run (backoffice.api_school_year.launch_bulk_reload, the
API's own: one run of a year per listener, in committed chunks, audited by the ledger), and its
progress: rows done, the rate and the time left.

Live without an inline script: the page is whole without JavaScript (the numbers as they are
when it is drawn, and a <noscript> refresh every BULK_RELOAD_REFRESH_S while the run goes on);
with it, static/bulk_reload.js (from 'self', as the CSP allows) asks the JSON at .../etat every
BULK_RELOAD_POLL_MS and rewrites the figures in place, in an aria-live region, without reloading
the whole page or its forms. Why not only the refresh: a full page every few seconds reloads the
forms under the operator's fingers and makes a screen reader start again at the top.

Who, as in the API: region operators set amounts and launch; auditors read."""

from __future__ import annotations

import aiohttp_jinja2
from aiohttp import web

from backoffice.api_school_year import (BULK_RELOAD_ERRORS, BULK_RELOADS, bulk_reload_rate,
                                        launch_bulk_reload)
from backoffice.operator_auth import POOL, Operator, Role
from backoffice.page_session import BASE, operator_page
from ledger import bulk_reload, programmes, school_calendar
from terminal_protocol.amounts import AmountError, format_euros, parse_euros

routes = web.RouteTableDef()
RELOAD_PATH = BASE + "/rechargement"
REGION, AUDITOR = Role.REGION_OPERATOR, Role.AUDITOR
BULK_RELOAD_POLL_MS = 1000            # the script's polling interval
BULK_RELOAD_REFRESH_S = 5             # without a script: the page's own refresh while it runs
FIELD_MAX_CHARS = 40


def _running(request: web.Request, year: int) -> bool:
    task = request.config_dict[BULK_RELOADS].get(year)
    return task is not None and not task.done()


def _duration_fr(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    seconds = max(0, round(seconds))
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {seconds:02d} s" if minutes else f"{seconds} s"


def progress(request: web.Request, year: int, run: bulk_reload.BulkReloadRun | None) -> dict:
    """What the page and its JSON show of the year's run."""
    running = _running(request, year)
    error = request.config_dict[BULK_RELOAD_ERRORS].get(year)
    if run is None:
        return {"state": "none", "label": "Pas encore lancé.", "running": running,
                "done": 0, "total": 0, "rate": "—", "left": "—", "credited": format_euros(0),
                "wallets": 0, "error": error}
    rate = bulk_reload_rate(request.config_dict, year) if running else None
    left = None if not rate else (run.beneficiaries_total - run.beneficiaries_seen) / rate
    state = ("finished" if run.finished else "running" if running else "stopped")
    label = {"finished": "Terminé.", "running": "En cours…",
             "stopped": "Interrompu : il reprend là où il s'est arrêté."}[state]
    return {"state": state, "label": label, "running": running,
            "done": run.beneficiaries_seen, "total": run.beneficiaries_total,
            "rate": "—" if rate is None else f"{round(rate)} élèves/s",
            "left": "0 s" if run.finished else _duration_fr(left),
            "credited": format_euros(run.credited_cents), "wallets": run.wallets_credited,
            "error": error}


@routes.get(RELOAD_PATH)
@operator_page(REGION, AUDITOR)
async def reload_page(request: web.Request, operator: Operator):
    async with request.app[POOL].acquire() as conn:
        year = await school_calendar.reload_school_year(conn)
        amounts = await programmes.list_amounts(conn, year)
        missing = await programmes.missing_amounts(conn, year)
        run = await bulk_reload.latest_run(conn, year)
        zone = await school_calendar.business_time_zone(conn)
    shown = progress(request, year, run)
    return aiohttp_jinja2.render_template("bo_bulk_reload.html", request, {
        "operator": operator, "year": year, "amounts": amounts, "missing": missing, "run": run,
        "zone": zone, "p": shown, "can_act": operator.role is REGION,
        "poll_ms": BULK_RELOAD_POLL_MS, "refresh_s": BULK_RELOAD_REFRESH_S,
        "max_euros": programmes.MAX_PROGRAMME_AMOUNT_CENTS // 100,
        "notice": request.query.get("fait"), "error": request.query.get("refus")})


@routes.get(RELOAD_PATH + "/etat")
@operator_page(REGION, AUDITOR)
async def reload_state(request: web.Request, operator: Operator):
    async with request.app[POOL].acquire() as conn:
        year = await school_calendar.reload_school_year(conn)
        run = await bulk_reload.latest_run(conn, year)
    return web.json_response({"school_year": year, **progress(request, year, run)})


@routes.post(RELOAD_PATH + "/montants")
@operator_page(REGION)
async def set_amount(request: web.Request, operator: Operator):
    form = await request.post()
    programme = form.get("programme")
    amount = form.get("montant")
    if not isinstance(programme, str) or not isinstance(amount, str):
        raise web.HTTPSeeOther(f"{RELOAD_PATH}?refus=montant")
    try:
        cents = parse_euros(amount.strip()[:FIELD_MAX_CHARS])
    except AmountError:
        raise web.HTTPSeeOther(f"{RELOAD_PATH}?refus=montant") from None
    async with request.app[POOL].acquire() as conn:
        year = await school_calendar.reload_school_year(conn)
        try:
            await programmes.set_amount(conn, school_year=year, actor=operator.actor,
                                        programme=programme.strip().upper()[:FIELD_MAX_CHARS],
                                        amount_cents=cents)
        except programmes.ProgrammeError:
            raise web.HTTPSeeOther(f"{RELOAD_PATH}?refus=montant") from None
    raise web.HTTPSeeOther(f"{RELOAD_PATH}?fait=montant")


@routes.post(RELOAD_PATH + "/lancer")
@operator_page(REGION)
async def launch(request: web.Request, operator: Operator):
    async with request.app[POOL].acquire() as conn:
        year = await school_calendar.reload_school_year(conn)
        try:
            await launch_bulk_reload(request.config_dict, conn, year, operator.actor)
        except bulk_reload.BulkReloadRefused:
            raise web.HTTPSeeOther(f"{RELOAD_PATH}?refus=lancement") from None
    raise web.HTTPSeeOther(f"{RELOAD_PATH}?fait=lancement")
