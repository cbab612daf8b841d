"""Operator API routes for the school year: rights renewal (one student, or a CSV file checked in
a dry run before it is applied), reload amounts by programme, the bulk reload (started in the
background, followed by its status) and the expiry. The rules are in the ledger; here only who
may call what: establishment staff renew their own students, region operators do everything,
auditors read, partners nothing."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import re
import time
from typing import Mapping

from aiohttp import web

from backoffice.api_school_year_openapi import (BASE, FALSE_WORDS, MAX_SCHOOL_YEAR,
                                                MIN_SCHOOL_YEAR, OPENAPI_PATHS, OPENAPI_SCHEMAS,
                                                TRUE_WORDS)
from backoffice.operator_auth import POOL, Operator, Role, json_error, require
from backoffice.ops_requests import acquire, read_json_object
from ledger import school_calendar
from ledger.establishments import establishment_id
from ledger import bulk_reload, expiry, programmes, rights_renewal
from ledger.rights_renewal import RenewalReport

log = logging.getLogger("hdfpay.school_year")
REGION, AUDITOR, STAFF = Role.REGION_OPERATOR, Role.AUDITOR, Role.ESTABLISHMENT_STAFF
BULK_RELOADS = web.AppKey("bulk_reloads_in_progress", dict)      # school year → asyncio.Task
BULK_RELOAD_ERRORS = web.AppKey("bulk_reload_last_errors", dict)  # school year → message
# school year → (monotonic s, beneficiaries seen) after each chunk of the run in progress here
BULK_RELOAD_PROGRESS = web.AppKey("bulk_reload_progress", dict)
BULK_RELOAD_CHUNK_ROWS = web.AppKey("bulk_reload_chunk_rows", int)   # beneficiaries per chunk
PROGRESS_SAMPLES = 10          # the rate is measured over the last this many chunks
__all__ = ["OPENAPI_PATHS", "OPENAPI_SCHEMAS", "add_routes", "launch_bulk_reload",
           "bulk_reload_rate", "renewal_report"]


@contextlib.contextmanager
def _answers():
    """The ledger's refusals as JSON errors."""
    try:
        yield
    except rights_renewal.StudentNotFound as error:
        raise json_error(web.HTTPNotFound, str(error)) from None
    except (rights_renewal.RenewalRefused, bulk_reload.BulkReloadRefused,
            expiry.ExpiryRefused) as error:
        raise json_error(web.HTTPConflict, str(error)) from None
    except (rights_renewal.RenewalFileRefused, programmes.ProgrammeError) as error:
        raise json_error(web.HTTPBadRequest, str(error)) from None


def _school_year(request: web.Request) -> int:
    text = request.match_info["school_year"]
    # ASCII digits only: str.isdigit() also admits "²⁰²⁶", which int() then refuses.
    if not re.fullmatch(r"[0-9]{4}", text) or not MIN_SCHOOL_YEAR <= int(text) <= MAX_SCHOOL_YEAR:
        raise json_error(web.HTTPBadRequest, f"a school year is named by its first year, "
                                             f"{MIN_SCHOOL_YEAR} to {MAX_SCHOOL_YEAR}")
    return int(text)


def _scope(operator: Operator) -> int | None:
    """Staff act for their establishment; region operators for the whole region."""
    return operator.establishment_id if operator.role is STAFF else None


def renewal_report(report: RenewalReport, operator: Operator) -> dict:
    """The report as the caller may read it (the API's JSON; the back office's pages too)."""
    errors = []
    for error in report.errors:
        code, message = error.code, error.message
        if code in ("other_establishment", "unknown_dossier") and operator.role is STAFF:
            # Staff learn nothing about other establishments' students: another establishment's
            # dossier reads exactly as one that does not exist (code and message; the ledger
            # leaves both out of the counts).
            code = "unknown_dossier"
            message = f"no student with dossier number {error.dossier} in your establishment"
        errors.append({"line": error.line, "code": code, "message": message, "dossier": error.dossier})
    return {"school_year": report.school_year, "file_sha256": report.file_sha256,
            "lines": report.lines, "renewed": report.renewed,
            "already_renewed": report.already_renewed, "applied": report.applied,
            "ok": report.ok, "errors": errors}


async def renew_student(request: web.Request) -> web.Response:
    operator = require(request, REGION, STAFF)
    year = _school_year(request)
    body = await read_json_object(request)
    dossier, programme = body.get("dossier_number"), body.get("programme")
    if not isinstance(dossier, str) or not rights_renewal.DOSSIER_PATTERN.match(dossier.strip().upper()):
        raise json_error(web.HTTPBadRequest, "dossier_number must be a dossier number, e.g. HDF0000005")
    if programme is not None and (not isinstance(programme, str)
                                  or not programmes.PROGRAMME_PATTERN.match(programme)):
        raise json_error(web.HTTPBadRequest, "programme must be a programme code, e.g. BOOKS")
    async with acquire(request) as conn:
        with _answers():
            result = await rights_renewal.renew_one(
                conn, dossier, school_year=year, actor=operator.actor, establishment_id=_scope(operator),
                programme=programme)
    return web.json_response({"renewal": {
        "dossier_number": result.dossier_number, "school_year": result.school_year,
        "programme": result.programme, "already_renewed": result.already_renewed}},
        status=200 if result.already_renewed else 201)


def _flag(request: web.Request, name: str, default: bool) -> bool:
    text = request.query.get(name)
    if text is None:
        return default
    if text.lower() not in TRUE_WORDS | FALSE_WORDS:
        raise json_error(web.HTTPBadRequest, f"{name} must be true or false")
    return text.lower() in TRUE_WORDS


async def renew_file(request: web.Request) -> web.Response:
    operator = require(request, REGION, STAFF)
    year = _school_year(request)
    dry_run = _flag(request, "dry_run", True)
    limit = rights_renewal.MAX_RENEWAL_FILE_BYTES
    if (request.content_length or 0) > limit:
        raise web.HTTPRequestEntityTooLarge(
            limit, request.content_length, content_type="application/json",
            text=json.dumps({"error": f"a renewal file is at most {limit} bytes"}))
    data = await request.read()
    async with acquire(request) as conn:
        with _answers():
            scope = _scope(operator)
            if operator.role is REGION and "establishment" in request.query:
                scope = await establishment_id(conn, request.query["establishment"])
                if scope is None:
                    raise json_error(web.HTTPNotFound, "no establishment with this UAI")
            report = await rights_renewal.renew_file(
                conn, data, school_year=year, actor=operator.actor, establishment_id=scope,
                apply=not dry_run)
    status = 422 if report.errors and not dry_run else 200
    return web.json_response({"report": renewal_report(report, operator)}, status=status)


async def renewal_counts(request: web.Request) -> web.Response:
    operator = require(request, REGION, STAFF, AUDITOR)
    year = _school_year(request)
    async with acquire(request) as conn:
        counts = await rights_renewal.renewal_counts(conn, year, _scope(operator))
        opens = (await school_calendar.calendar(conn, year)).rights_renewal_opens_at
    return web.json_response({"school_year": year, "renewal_opens": opens.date().isoformat(),
                              "establishments": counts})


async def list_programmes(request: web.Request) -> web.Response:
    require(request, REGION, AUDITOR)
    year = _school_year(request)
    async with acquire(request) as conn:
        amounts = await programmes.list_amounts(conn, year)
        missing = await programmes.missing_amounts(conn, year)
    return web.json_response({
        "school_year": year,
        "programmes": [{"programme": a.programme, "amount_cents": a.amount_cents} for a in amounts],
        "missing": [{"programme": p, "beneficiaries": n} for p, n in missing]})


async def set_programme(request: web.Request) -> web.Response:
    operator = require(request, REGION)
    year = _school_year(request)
    amount = (await read_json_object(request)).get("amount_cents")
    if not isinstance(amount, int) or isinstance(amount, bool):
        raise json_error(web.HTTPBadRequest, "amount_cents must be an integer")
    async with acquire(request) as conn:
        with _answers():
            saved = await programmes.set_amount(conn, school_year=year, actor=operator.actor,
                                                programme=request.match_info["programme"],
                                                amount_cents=amount)
    return web.json_response({"school_year": year, "programme": saved.programme,
                              "amount_cents": saved.amount_cents})


async def _bulk_reload_status(request: web.Request, year: int, status: int = 200) -> web.Response:
    task = request.app[BULK_RELOADS].get(year)
    async with acquire(request) as conn:
        run = await bulk_reload.latest_run(conn, year)
    return web.json_response({"school_year": year, "in_progress": task is not None and not task.done(),
                              "last_error": request.app[BULK_RELOAD_ERRORS].get(year),
                              "run": None if run is None else run.as_json()}, status=status)


async def bulk_reload_status(request: web.Request) -> web.Response:
    require(request, REGION, AUDITOR)
    return await _bulk_reload_status(request, _school_year(request))


async def start_bulk_reload(request: web.Request) -> web.Response:
    """202 at once: the run goes on in the background (it may take a while); GET follows it.
    Starting again while it runs changes nothing; after a crash it resumes."""
    operator = require(request, REGION)
    year = _school_year(request)
    async with acquire(request) as conn:
        with _answers():
            await launch_bulk_reload(request.app, conn, year, operator.actor)
    return await _bulk_reload_status(request, year, status=202)


async def launch_bulk_reload(app: Mapping, conn, year: int, actor: str) -> bool:
    """Start (or resume) the year's run in the background unless it is running already (False
    then). BulkReloadRefused if it could not start. The API and the back office's page share
    this, so one listener never runs two of a year's reloads; `app` is the operator
    application, or a page's request.config_dict, which reads through to it."""
    running = app[BULK_RELOADS].get(year)
    if running is not None and not running.done():
        return False
    await bulk_reload.check_bulk_reload(conn, year)
    app[BULK_RELOAD_ERRORS].pop(year, None)
    app[BULK_RELOAD_PROGRESS][year] = collections.deque(maxlen=PROGRESS_SAMPLES)
    app[BULK_RELOADS][year] = asyncio.create_task(_run_in_background(app, year, actor))
    return True


async def _run_in_background(app: Mapping, year: int, actor: str) -> None:
    samples = app[BULK_RELOAD_PROGRESS][year]
    try:
        async with app[POOL].acquire() as conn:
            run = await bulk_reload.run_bulk_reload(
                conn, year, actor=actor, chunk_rows=app[BULK_RELOAD_CHUNK_ROWS],
                progress=lambda run: samples.append((time.monotonic(), run.beneficiaries_seen)))
        log.info("bulk reload finished", extra={"fields": {
            "school_year": year, "run": run.id, "wallets_credited": run.wallets_credited}})
    except asyncio.CancelledError:
        raise
    except Exception as error:  # noqa: BLE001 (kept for the status, then logged)
        app[BULK_RELOAD_ERRORS][year] = str(error) or type(error).__name__
        log.warning("bulk reload stopped", extra={"fields": {"school_year": year, "error": str(error)}})


def bulk_reload_rate(app: Mapping, year: int) -> float | None:
    """Beneficiaries per second over the last chunks this listener ran (wall clock, not the
    business clock: a pinned clock does not stop a reload); None before two chunks."""
    samples = app[BULK_RELOAD_PROGRESS].get(year)
    if not samples or len(samples) < 2 or samples[-1][0] <= samples[0][0]:
        return None
    return (samples[-1][1] - samples[0][1]) / (samples[-1][0] - samples[0][0])


async def _stop_bulk_reloads(app: web.Application) -> None:
    """At shutdown: the chunk in progress rolls back; the run resumes at the next start."""
    tasks = [task for task in app[BULK_RELOADS].values() if not task.done()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def run_expiry(request: web.Request) -> web.Response:
    operator = require(request, REGION)
    year = _school_year(request)
    async with acquire(request) as conn:
        with _answers():
            result = await expiry.expire_school_year(conn, year, actor=operator.actor)
    return web.json_response({"expiry": {"school_year": year, "wallets_expired": result.wallets_expired,
                                         "expired_cents": result.expired_cents}})


async def expiry_status(request: web.Request) -> web.Response:
    require(request, REGION, AUDITOR)
    year = _school_year(request)
    async with acquire(request) as conn:
        closes_at, closed = await expiry.wallet_close(conn, year)
        runs = await expiry.expiry_runs(conn, year)
    return web.json_response({
        "school_year": year, "closes_at": closes_at.isoformat(), "closed": closed,
        "runs": [{"at": r.at.isoformat(), "actor": r.actor, "wallets_expired": r.wallets_expired,
                  "expired_cents": r.expired_cents} for r in runs]})


def add_routes(app: web.Application) -> None:
    """Register this area's routes on the operator application."""
    app[BULK_RELOADS] = {}
    app[BULK_RELOAD_ERRORS] = {}
    app[BULK_RELOAD_PROGRESS] = {}
    app.setdefault(BULK_RELOAD_CHUNK_ROWS, bulk_reload.BULK_RELOAD_CHUNK_ROWS)
    app.on_shutdown.append(_stop_bulk_reloads)
    app.router.add_post(f"{BASE}/renewals", renew_student)
    app.router.add_get(f"{BASE}/renewals", renewal_counts)
    app.router.add_post(f"{BASE}/renewals/file", renew_file)
    app.router.add_get(f"{BASE}/programmes", list_programmes)
    app.router.add_put(f"{BASE}/programmes/{{programme}}", set_programme)
    app.router.add_post(f"{BASE}/bulk-reload", start_bulk_reload)
    app.router.add_get(f"{BASE}/bulk-reload", bulk_reload_status)
    app.router.add_post(f"{BASE}/expiry", run_expiry)
    app.router.add_get(f"{BASE}/expiry", expiry_status)
