"""Back-office pages for settlement: the runs, settling the closed days (ledger.settlement.settle,
audited there, as POST /v1/ops/settlement/runs), a run's lines, its payout files made once
(backoffice.payout_files.payout_files, audited, as POST .../payout-files) and downloaded as an
attachment, never cached, each download audited (downloaded_payout_file, as the API's GET
.../payout-files/{csv,pain001}).

Who, as in the API: region operators settle and make files; auditors read and download; a partner
account sees only its own settled days (the partner's lines, never a run's other partners, nor
the payout files with their IBANs); establishment staff have no business here."""

from __future__ import annotations

import datetime as dt
import os
import re

import aiohttp_jinja2
from aiohttp import web

from backoffice.operator_auth import POOL, Operator, Role
from backoffice.page_session import BASE, operator_page
from backoffice.payout_files import (DEBTOR_ENV, BankAccount, PayoutError,
                                     downloaded_payout_file, kept_payout_files, payout_files)
from ledger import payouts, settlement
from ledger.clock import business_today
from ledger.school_calendar import business_time_zone

routes = web.RouteTableDef()
SETTLEMENT_PATH = BASE + "/reglements"
RUN_PATH = SETTLEMENT_PATH + r"/{run_id:[0-9]{1,18}}"
REGION, AUDITOR, PARTNER = Role.REGION_OPERATOR, Role.AUDITOR, Role.PARTNER
PARTNER_DAYS_SHOWN = 31                 # a partner's settled days, as the API's default period
RUNS_SHOWN = 50
FIELD_MAX_CHARS = 80
FILE_TYPES = {"csv": "text/csv", "pain001": "application/xml"}
_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def _text(form, name: str) -> str:
    value = form.get(name)
    return value.strip()[:FIELD_MAX_CHARS] if isinstance(value, str) else ""


def _run_id(request: web.Request) -> int:
    value = int(request.match_info["run_id"])
    if not 0 < value < 2**63:
        raise web.HTTPNotFound(text="Règlement introuvable")
    return value


@routes.get(SETTLEMENT_PATH)
@operator_page(REGION, AUDITOR, PARTNER)
async def settlement_page(request: web.Request, operator: Operator):
    async with request.app[POOL].acquire() as conn:
        today = await business_today(conn)
        if operator.role is PARTNER:
            runs = []
            lines = await settlement.partner_lines(
                conn, operator.partner_id, today - dt.timedelta(days=PARTNER_DAYS_SHOWN - 1), today)
            closed = None
        else:
            runs, lines = await settlement.list_runs(conn, RUNS_SHOWN), []
            closed = await settlement.last_closed_day(conn)
    return aiohttp_jinja2.render_template("bo_settlement.html", request, {
        "operator": operator, "runs": runs, "lines": lines[::-1], "closed": closed,
        "partner_days": PARTNER_DAYS_SHOWN, "can_act": operator.role is REGION,
        "notice": request.query.get("fait"), "error": request.query.get("refus")})


@routes.post(SETTLEMENT_PATH)
@operator_page(REGION)
async def settle(request: web.Request, operator: Operator):
    text = _text(await request.post(), "jusqu_au")
    try:
        day = dt.date.fromisoformat(text) if _DAY.fullmatch(text) else None
    except ValueError:
        day = None
    if text and day is None:
        raise web.HTTPSeeOther(f"{SETTLEMENT_PATH}?refus=date")
    async with request.app[POOL].acquire() as conn:
        try:
            outcome = await settlement.settle(conn, actor=operator.actor, through_day=day)
        except settlement.SettlementRefused:
            raise web.HTTPSeeOther(f"{SETTLEMENT_PATH}?refus=ouvert") from None
    done = "regle" if outcome.created else "deja"
    raise web.HTTPSeeOther(f"{SETTLEMENT_PATH}/{outcome.run.run_id}?fait={done}")


async def _run_page(request, operator, run_id: int, *, status: int = 200, problem: str | None = None,
                    debtor: dict | None = None):
    async with request.app[POOL].acquire() as conn:
        try:
            run = await settlement.get_run(conn, run_id)
        except settlement.UnknownRun:
            raise web.HTTPNotFound(text="Règlement introuvable") from None
        lines = await settlement.run_lines(conn, run_id)
        files = await kept_payout_files(conn, run_id)
        zone = await business_time_zone(conn)
    response = aiohttp_jinja2.render_template("bo_settlement_run.html", request, {
        "operator": operator, "run": run, "lines": lines, "files": files,
        "zone": zone, "can_act": operator.role is REGION, "problem": problem,
        "debtor": debtor or {k: os.environ.get(v, "") for k, v in DEBTOR_ENV.items()},
        "notice": request.query.get("fait")})
    response.set_status(status)
    return response


@routes.get(RUN_PATH)
@operator_page(REGION, AUDITOR)
async def run_page(request: web.Request, operator: Operator):
    return await _run_page(request, operator, _run_id(request))


@routes.post(RUN_PATH + "/fichiers")
@operator_page(REGION)
async def make_files(request: web.Request, operator: Operator):
    run_id = _run_id(request)
    form = await request.post()
    given = {k: _text(form, f"debiteur_{k}") for k in DEBTOR_ENV}
    async with request.app[POOL].acquire() as conn:
        try:
            await settlement.get_run(conn, run_id)
            kept = await payouts.files_exist(conn, run_id)       # as the API: kept, no debtor
            debtor = None if kept else BankAccount.debtor_from(os.environ, **given)
            files = await payout_files(conn, run_id, actor=operator.actor, debtor=debtor)
        except settlement.UnknownRun:
            raise web.HTTPNotFound(text="Règlement introuvable") from None
        except PayoutError as error:
            return await _run_page(request, operator, run_id, status=409, problem=str(error),
                                   debtor=given)
    raise web.HTTPSeeOther(f"{SETTLEMENT_PATH}/{run_id}?fait={'fichiers' if files.created else 'fichiers-deja'}")


@routes.get(RUN_PATH + r"/fichiers/{kind:csv|pain001}")
@operator_page(REGION, AUDITOR)
async def download(request: web.Request, operator: Operator):
    run_id, kind = _run_id(request), request.match_info["kind"]
    async with request.app[POOL].acquire() as conn:
        found = await downloaded_payout_file(conn, run_id, kind, actor=operator.actor)
    if found is None:
        raise web.HTTPNotFound(text="Aucun fichier de virement pour ce règlement")
    name, content = found
    return web.Response(body=content, content_type=FILE_TYPES[kind], headers={
        "Content-Disposition": f'attachment; filename="{name}"', "Cache-Control": "no-store"})
