"""Operator API routes for settlement: runs, their payout files, partners' bank details, a
partner's own settled days, and the reports. Region operators settle and make files, auditors
read everything, a partner reads only its own shops' settled days; establishment staff have no
business here."""

from __future__ import annotations

import datetime as dt
import os

from aiohttp import web

from backoffice.openapi import integer_path_parameter, operation, schema_ref
from backoffice.operator_auth import Role, json_error, require
from backoffice.ops_requests import MAX_ID, acquire, path_id, read_json_object
from backoffice.payout_files import (BankAccount, PayoutError, downloaded_payout_file,
                                     payout_files, set_payee)
from ledger import payouts
from ledger.clock import business_today
from ledger import reports, settlement
from terminal_protocol.response_codes import APPROVED_CODES, describe

REGION, AUDITOR, PARTNER = Role.REGION_OPERATOR, Role.AUDITOR, Role.PARTNER
RUNS_PATH = "/v1/ops/settlement/runs"
RUN_PATH = RUNS_PATH + "/{run_id}"
PARTNER_PATH = "/v1/ops/partners/{partner_id}"
REPORTS_PATH = "/v1/ops/reports"
DEFAULT_PARTNER_DAYS = 31
FILE_TYPES = {"csv": "text/csv", "pain001": "application/xml"}
REPORT_KINDS = ("volumes", "declines", "funds")
# Dates the API takes (query or body): a sane range, far from date.min/max (date arithmetic
# near them overflows) and from PostgreSQL's infinities.
MIN_DAY, MAX_DAY = dt.date(2000, 1, 1), dt.date(2199, 12, 31)
__all__ = ["OPENAPI_PATHS", "OPENAPI_SCHEMAS", "add_routes"]


def _day(value: str | None, name: str) -> dt.date | None:
    if value is None:
        return None
    try:
        day = dt.date.fromisoformat(value)
    except (TypeError, ValueError):
        raise json_error(web.HTTPBadRequest, f"{name} must be a date, YYYY-MM-DD") from None
    if not MIN_DAY <= day <= MAX_DAY:
        raise json_error(web.HTTPBadRequest, f"{name} must be a date from {MIN_DAY} to {MAX_DAY}")
    return day


async def _period(request: web.Request, conn, default_days: int | None) -> reports.Period:
    """?from=&to= in Paris business days; `to` defaults to today, `from` to default_days back."""
    last = _day(request.query.get("to"), "to") or await business_today(conn)
    first = _day(request.query.get("from"), "from")
    try:
        if first is None and default_days is not None:
            first = last - dt.timedelta(days=default_days - 1)
        return reports.Period(first, last).check()
    except reports.ReportRefused as exc:
        raise json_error(web.HTTPBadRequest, str(exc)) from None
    except OverflowError:
        raise json_error(web.HTTPBadRequest, "the period is out of range") from None


async def list_runs(request: web.Request) -> web.Response:
    require(request, REGION, AUDITOR)
    async with acquire(request) as conn:
        runs = await settlement.list_runs(conn)
    return web.json_response({"runs": [r.as_json() for r in runs]})


async def create_run(request: web.Request) -> web.Response:
    operator = require(request, REGION)
    body = await read_json_object(request) if request.body_exists else {}
    if "through_day" in body and body["through_day"] is None:    # the schema says: a date
        raise json_error(web.HTTPBadRequest, "through_day must be a date, YYYY-MM-DD (or absent)")
    through_day = _day(body.get("through_day"), "through_day")
    async with acquire(request) as conn:
        try:
            outcome = await settlement.settle(conn, actor=operator.actor, through_day=through_day)
        except settlement.SettlementRefused as exc:
            raise json_error(web.HTTPBadRequest, str(exc)) from None
    return web.json_response({"run": outcome.run.as_json(), "created": outcome.created},
                             status=201 if outcome.created else 200)


async def get_run(request: web.Request) -> web.Response:
    require(request, REGION, AUDITOR)
    async with acquire(request) as conn:
        try:
            run = await settlement.get_run(conn, path_id(request, "run_id"))
        except settlement.UnknownRun as exc:
            raise json_error(web.HTTPNotFound, str(exc)) from None
        lines = await settlement.run_lines(conn, run.run_id)
    return web.json_response({"run": run.as_json(), "lines": [l.as_json() for l in lines]})


async def make_payout_files(request: web.Request) -> web.Response:
    operator = require(request, REGION)
    body = await read_json_object(request) if request.body_exists else {}
    run_id = path_id(request, "run_id")
    async with acquire(request) as conn:
        try:
            kept = await payouts.files_exist(conn, run_id)
            debtor = None if kept else BankAccount.debtor_from(
                os.environ, name=body.get("debtor_name"), iban=body.get("debtor_iban"),
                bic=body.get("debtor_bic"))
            files = await payout_files(conn, run_id, actor=operator.actor, debtor=debtor,
                                       execution_date=_day(body.get("execution_date"), "execution_date"))
        except settlement.UnknownRun as exc:
            raise json_error(web.HTTPNotFound, str(exc)) from None
        except PayoutError as exc:
            raise json_error(web.HTTPConflict, str(exc)) from None
    names = files.names()
    return web.json_response({
        "run_id": run_id, "message_id": files.message_id, "payments": files.payments,
        "ctrl_sum_cents": files.ctrl_sum_cents, "created": files.created,
        "files": {kind: f"{RUNS_PATH}/{run_id}/payout-files/{kind}" for kind in names
                  if kind == "csv" or files.pain001 is not None}}, status=201 if files.created else 200)


def download_payout_file(kind: str):
    async def handler(request: web.Request) -> web.Response:
        operator = require(request, REGION, AUDITOR)
        return await _download(request, path_id(request, "run_id"), kind, operator.actor)
    return handler


async def _download(request: web.Request, run_id: int, kind: str, actor: str) -> web.Response:
    """The kept file, its download audited (downloaded_payout_file: the back office's too)."""
    async with acquire(request) as conn:
        if not await payouts.files_exist(conn, run_id):
            raise json_error(web.HTTPNotFound, f"no payout files were made for run {run_id}")
        found = await downloaded_payout_file(conn, run_id, kind, actor=actor)
    if found is None:
        raise json_error(web.HTTPNotFound, f"run {run_id} pays nobody: it has no pain.001")
    name, content = found
    return web.Response(body=content, content_type=FILE_TYPES[kind], headers={
        "Content-Disposition": f'attachment; filename="{name}"', "Cache-Control": "no-store"})


async def partner_settlement(request: web.Request) -> web.Response:
    operator = require(request, REGION, AUDITOR, PARTNER)
    partner_id = path_id(request, "partner_id")
    if operator.role is PARTNER and operator.partner_id != partner_id:
        raise json_error(web.HTTPForbidden, "forbidden: a partner sees only its own settlement")
    async with acquire(request) as conn:
        period = await _period(request, conn, DEFAULT_PARTNER_DAYS)
        lines = await settlement.partner_lines(conn, partner_id, period.first_day, period.last_day)
    return web.json_response({"partner_id": partner_id, "lines": [l.as_json() for l in lines]})


async def put_payee(request: web.Request) -> web.Response:
    operator = require(request, REGION)
    body = await read_json_object(request)
    async with acquire(request) as conn:
        try:
            account = await set_payee(conn, path_id(request, "partner_id"), name=body.get("name"),
                                      iban=body.get("iban"), bic=body.get("bic"), actor=operator.actor)
        except PayoutError as exc:
            status = web.HTTPNotFound if str(exc).startswith("no partner") else web.HTTPBadRequest
            raise json_error(status, str(exc)) from None
    return web.json_response({"payee": {"name": account.name, "iban": account.iban, "bic": account.bic}})


def _plain(row: dict) -> dict:
    return {k: (v.isoformat() if isinstance(v, dt.date) else v) for k, v in row.items()}


def report(kind: str):
    async def handler(request: web.Request) -> web.Response:
        require(request, REGION, AUDITOR)
        return await _report(request, kind)
    return handler


async def _report(request: web.Request, kind: str) -> web.Response:
    async with acquire(request) as conn:
        period = await _period(request, conn, None if kind == "funds" else 7)
        answer: dict = {"from": period.first_day and period.first_day.isoformat(),
                        "to": period.last_day.isoformat()}
        if kind == "volumes":
            answer["rows"] = [_plain(r) for r in await reports.volumes(conn, period)]
        elif kind == "declines":
            total, rows = await reports.declines(conn, period, APPROVED_CODES)
            answer.update(messages=total, rows=[{**r, "reason": describe(r["response_code"]).meaning}
                                                for r in rows])
        else:
            funds = await reports.funds(conn, period)
            answer.update(flows=funds.flows, position=funds.position, reconciled=funds.reconciled,
                          checks=[{"rule": c.rule, "left_cents": c.left, "right_cents": c.right,
                                   "ok": c.ok} for c in funds.checks],
                          violations=[{"rule": r, "detail": d} for r, d in funds.violations])
    return web.json_response(answer)


def add_routes(app: web.Application) -> None:
    """Register this area's routes on the operator application."""
    run = RUNS_PATH + "/{run_id:[0-9]+}"            # ASCII digits; path_id() bounds them
    app.router.add_get(RUNS_PATH, list_runs)
    app.router.add_post(RUNS_PATH, create_run)
    app.router.add_get(run, get_run)
    app.router.add_post(run + "/payout-files", make_payout_files)
    for kind in FILE_TYPES:
        app.router.add_get(f"{run}/payout-files/{kind}", download_payout_file(kind))
    partner = "/v1/ops/partners/{partner_id:[0-9]+}"
    app.router.add_get(partner + "/settlement", partner_settlement)
    app.router.add_put(partner + "/payee", put_payee)
    for kind in REPORT_KINDS:
        app.router.add_get(f"{REPORTS_PATH}/{kind}", report(kind))


_INT, _STR, _BOOL = {"type": "integer"}, {"type": "string"}, {"type": "boolean"}
_DATE, _NULL_DATE = {"type": "string", "format": "date"}, {"type": ["string", "null"], "format": "date"}
_DAY_IN = {**_DATE, "description": f"{MIN_DAY} to {MAX_DAY}"}   # a date the API takes
_RUN_ID = integer_path_parameter("run_id", "settlement run id", 1, MAX_ID)
_PARTNER_ID = integer_path_parameter("partner_id", "the partner's id", 1, MAX_ID)
_PERIOD = [{"name": n, "in": "query", "required": False, "schema": _DAY_IN, "description": d}
           for n, d in (("from", "first Paris business day (default: a week before `to`; funds: "
                                 "the beginning)"), ("to", "last day (default: today)"))]
_R, _A, _P = REGION.value, AUDITOR.value, PARTNER.value


def _object(**properties) -> dict:
    return {"type": "object", "properties": properties}


OPENAPI_SCHEMAS = {
    "SettlementRun": _object(run_id=_INT, first_day=_NULL_DATE, through_day=_DATE, settled_by=_STR,
                             settled_at={"type": "string", "format": "date-time"}, lines=_INT,
                             payments=_INT, transactions=_INT, net_cents=_INT, paid_cents=_INT,
                             debt_carried_cents=_INT),
    "SettlementLine": _object(
        partner_id=_INT, partner_name=_STR, category=_STR, business_day=_DATE, run_id=_INT,
        purchases_count=_INT, purchases_cents=_INT, reversals_count=_INT, reversals_cents=_INT,
        refunds_count=_INT, refunds_cents=_INT, net_cents=_INT, debt_before_cents=_INT,
        paid_cents=_INT, debt_after_cents=_INT, transfer_id={"type": ["integer", "null"]}),
}
_LINES = {"type": "array", "items": schema_ref("SettlementLine")}
_REPORT = {"type": "object", "description": "volumes: rows; declines: messages, rows; funds: "
                                            "flows, position, checks, reconciled."}

OPENAPI_PATHS = {
    RUNS_PATH: {
        "get": operation("listSettlementRuns", "The latest settlement runs with their totals.",
                         roles=(_R, _A), ok_schema=_object(runs={"type": "array", "items": schema_ref("SettlementRun")})),
        "post": operation(
            "settle", "Settle every closed day not yet settled, through `through_day` (default "
            "yesterday, Paris). 201: a new run; 200: already settled, nothing moved.",
            roles=(_R,), ok_status="201", errors=("BadRequest",),
            body=_object(through_day=_DAY_IN), ok_schema=_object(run=schema_ref("SettlementRun"), created=_BOOL))},
    RUN_PATH: {"get": operation("getSettlementRun", "A run and its lines (partner and day).",
                                roles=(_R, _A), errors=("NotFound",), parameters=[_RUN_ID],
                                ok_schema=_object(run=schema_ref("SettlementRun"), lines=_LINES))},
    RUN_PATH + "/payout-files": {"post": operation(
        "makePayoutFiles", "Make the run's CSV and SEPA pain.001 once (the region's account from "
        "the body or HDFPAY_DEBTOR_*); later calls return what was made. 409: a payee's bank "
        "details are wrong.", roles=(_R,), ok_status="201", errors=("BadRequest", "NotFound", "Conflict"),
        parameters=[_RUN_ID], body=_object(debtor_name=_STR, debtor_iban=_STR, debtor_bic=_STR,
                                           execution_date=_DAY_IN),
        ok_schema=_object(run_id=_INT, message_id=_STR, payments=_INT, ctrl_sum_cents=_INT,
                          created=_BOOL, files=_object(csv=_STR, pain001=_STR)))},
    **{f"{RUN_PATH}/payout-files/{kind}": {"get": operation(
        f"downloadPayoutFile{kind.capitalize()}", f"The run's {kind} file as made ({media}).",
        roles=(_R, _A), errors=("NotFound",), ok_description="The file.", parameters=[_RUN_ID])}
       for kind, media in FILE_TYPES.items()},
    PARTNER_PATH + "/settlement": {"get": operation(
        "getPartnerSettlement", "A partner's settled days (a partner: its own only).",
        roles=(_R, _A, _P), errors=("BadRequest",), parameters=[_PARTNER_ID, *_PERIOD],
        ok_schema=_object(partner_id=_INT, lines=_LINES))},
    PARTNER_PATH + "/payee": {"put": operation(
        "setPartnerPayee", "Where the partner is paid: IBAN (check digits, RIB key) and BIC checked.",
        roles=(_R,), errors=("BadRequest", "NotFound"), parameters=[_PARTNER_ID],
        body={"type": "object", "required": ["name", "iban", "bic"],
              "properties": {"name": _STR, "iban": _STR, "bic": _STR}},
        ok_schema=_object(payee=_object(name=_STR, iban=_STR, bic=_STR)))},
    **{f"{REPORTS_PATH}/{kind}": {"get": operation(
        f"get{kind.capitalize()}Report", summary, roles=(_R, _A), errors=("BadRequest",),
        parameters=_PERIOD, ok_schema=_REPORT)}
       for kind, summary in (("volumes", "Approved amounts by day, category and partner."),
                             ("declines", "Declines by response code and message type."),
                             ("funds", "Funded, spent, expired, fees, settled; reconciled with "
                                       "the ledger (Σ debits = Σ credits)."))},
}

OPENAPI_PATHS[RUNS_PATH]["post"]["responses"]["200"] = {
    "description": "Already settled through that day: the existing run, nothing moved.",
    "content": OPENAPI_PATHS[RUNS_PATH]["post"]["responses"]["201"]["content"]}
# Both bodies may be left out entirely (every field has a default).
for _path in (RUNS_PATH, RUN_PATH + "/payout-files"):
    OPENAPI_PATHS[_path]["post"]["requestBody"]["required"] = False
