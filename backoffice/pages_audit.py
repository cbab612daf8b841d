"""Back-office pages on the audit trail, read-only: the trail filtered by actor, action and
business days, a bounded page at a time (ledger.audit.AUDIT_PAGE_ROWS, newest first), and its
verification (ledger.audit.verify_audit: the head, intact or where the chain breaks). The same
roles as the API's GET /v1/ops/audit/verify: region operators and auditors. Reading is not an
audited action, as in the API."""

from __future__ import annotations

import datetime as dt
import re

import aiohttp_jinja2
from aiohttp import web

from backoffice.operator_auth import POOL, Operator, Role
from backoffice.page_session import BASE, operator_page
from ledger.audit import AUDIT_FILTER_MAX_CHARS, AUDIT_PAGE_ROWS, audit_page, verify_audit

routes = web.RouteTableDef()
AUDIT_READERS = (Role.REGION_OPERATOR, Role.AUDITOR)
AUDIT_PATH = BASE + "/audit"
VERIFY_PATH = AUDIT_PATH + "/verification"
MAX_ID = 2**63 - 1
_DAY = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_ID = re.compile(r"[0-9]{1,19}")
_HASH = re.compile(r"[0-9a-f]{64}")
# verify_audit's findings (English, as the CLI and the API print them) in French for the page;
# one it does not know is shown as it is.
_FINDINGS_FR = (
    (re.compile(r"row (\d+): expected row (\d+) \(rows missing or inserted\)"),
     r"ligne \1 : la ligne \2 était attendue (lignes supprimées ou insérées)"),
    (re.compile(r"row (\d+): does not follow the previous row \(chain broken\)"),
     r"ligne \1 : ne suit pas la ligne précédente (chaîne rompue)"),
    (re.compile(r"row (\d+): content altered \(hash mismatch\)"),
     r"ligne \1 : contenu modifié (son empreinte ne correspond plus)"),
    (re.compile(r"the head says row (\d+) ends the chain, the table ends at row (\d+) .*"),
     r"la tête du journal désigne la ligne \1 comme dernière, la table s'arrête à la ligne \2"
     r" (lignes supprimées à la fin, ou tête modifiée)"),
    (re.compile(r"the head recorded earlier \(([0-9a-f]+)\) is no longer in the trail.*"),
     r"l'empreinte notée auparavant (\1) n'est plus dans le journal : lignes supprimées ou"
     r" réécrites depuis"),
)
_FIRST_ROW = re.compile(r"row (\d+):")


def finding_fr(problem: str) -> str:
    for pattern, french in _FINDINGS_FR:
        if pattern.fullmatch(problem):
            return pattern.sub(french, problem)
    return problem


def first_broken_row(problems) -> int | None:
    """The first row where the chain breaks, if a finding names one."""
    rows = [int(m.group(1)) for m in map(_FIRST_ROW.match, problems) if m]
    return min(rows) if rows else None


def _text(request: web.Request, name: str) -> str:
    return request.query.get(name, "").strip()[:AUDIT_FILTER_MAX_CHARS]


def _day(text: str, label: str, errors: list[str]) -> dt.date | None:
    if not text:
        return None
    try:
        if not _DAY.fullmatch(text):
            raise ValueError(text)
        return dt.date.fromisoformat(text)
    except ValueError:
        errors.append(f"{label} : une date au format AAAA-MM-JJ")
        return None


@routes.get(AUDIT_PATH)
@operator_page(*AUDIT_READERS)
async def trail_page(request: web.Request, operator: Operator):
    errors: list[str] = []
    filters = {name: _text(request, name) for name in ("acteur", "action", "du", "au")}
    from_day = _day(filters["du"], "Du", errors)
    to_day = _day(filters["au"], "Au", errors)
    if from_day and to_day and from_day > to_day:
        errors.append("La date de début suit la date de fin")
    before_text = _text(request, "avant")
    before_id = int(before_text) if _ID.fullmatch(before_text) else None
    if before_id is not None and not 0 < before_id <= MAX_ID:
        before_id = None
    found = None
    if not errors:
        async with request.app[POOL].acquire() as conn:
            found = await audit_page(conn, actor=filters["acteur"], action=filters["action"],
                                     from_day=from_day, to_day=to_day, before_id=before_id)
    next_query = None
    if found is not None and found.older_than_id is not None:
        next_query = {**{k: v for k, v in filters.items() if v}, "avant": found.older_than_id}
    response = aiohttp_jinja2.render_template("bo_audit.html", request, {
        "operator": operator, "filters": filters, "errors": errors, "found": found,
        "next_url": None if next_query is None else
        str(request.rel_url.with_query(next_query)), "paged": before_id is not None,
        "page_rows": AUDIT_PAGE_ROWS})
    if errors:
        response.set_status(400)
    return response


@routes.get(VERIFY_PATH)
@operator_page(*AUDIT_READERS)
async def verify_page(request: web.Request, operator: Operator):
    """Nothing is recomputed until asked (?verifier=1): a whole-chain read is not a page view."""
    expected_text = _text(request, "empreinte").lower()
    error, report = None, None
    if expected_text and not _HASH.fullmatch(expected_text):
        error = "L'empreinte attendue est de 64 caractères hexadécimaux"
    elif request.query.get("verifier") == "1":
        async with request.app[POOL].acquire() as conn:
            report = await verify_audit(
                conn, bytes.fromhex(expected_text) if expected_text else None)
    response = aiohttp_jinja2.render_template("bo_audit_verify.html", request, {
        "operator": operator, "report": report, "expected": expected_text, "error": error,
        "findings": [finding_fr(p) for p in report.problems] if report else [],
        "broken_at": first_broken_row(report.problems) if report else None})
    if error:
        response.set_status(400)
    return response
