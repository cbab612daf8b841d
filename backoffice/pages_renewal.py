"""Back-office pages for the rights renewal: the year open for renewal and how many students are
renewed, one student renewed by dossier number, and a CSV file checked in a dry run (a table,
each line OK or its error in French) before an "Appliquer" button applies the same bytes. The
work is ledger.rights_renewal's, as for POST /v1/ops/school-years/{year}/renewals[/file]: the
same checks, the same audit rows (rights.renew, rights.renew_file), nothing applied by a dry run
and nothing at all when a line is wrong.

Who, as in the API: region operators (the whole region) and establishment staff (their own
students: another establishment's dossier reads as an unknown one, as the API says it);
auditors read the counts; partners have no business here.

Between the dry run and "Appliquer" the uploaded bytes wait in the database
(ledger/renewal_drafts.py: any server process may take the apply), named by a random token tied
to the operator who sent them; the apply checks the whole file again, so a student renewed
meanwhile or a renewal closed meanwhile is seen then."""

from __future__ import annotations

import aiohttp_jinja2
from aiohttp import web

from backoffice.api_school_year import renewal_report
from backoffice.operator_auth import POOL, Operator, Role
from backoffice.page_session import BASE, operator_page, scope
from ledger import rights_renewal
from ledger.renewal_drafts import RenewalDraft, keep_draft, take_draft
from ledger.programmes import PROGRAMME_PATTERN

routes = web.RouteTableDef()
RENEWAL_PATH = BASE + "/droits"
REGION, STAFF, AUDITOR = Role.REGION_OPERATOR, Role.ESTABLISHMENT_STAFF, Role.AUDITOR
# The largest CSV file a page takes: the ledger's own limit (4 MB); the listener refuses a body
# above OPS_MAX_BODY_BYTES (8 MiB) before it is read whole.
RENEWAL_UPLOAD_MAX_BYTES = rights_renewal.MAX_RENEWAL_FILE_BYTES
DRY_RUN_OK_LINES_SHOWN = 500            # every error line is shown; correct ones up to this
FIELD_MAX_CHARS = 40
ERRORS_FR = {
    "empty_line": "ligne vide",
    "too_many_fields": "plus de 3 colonnes (dossier ; année scolaire ; programme)",
    "bad_dossier": "ce n'est pas un numéro de dossier (ex. HDF0000050)",
    "wrong_year": "l'année scolaire de la ligne n'est pas celle renouvelée",
    "bad_programme": "ce n'est pas un code de programme (ex. BOOKS)",
    "duplicate": "ce dossier figure déjà plus haut dans le fichier",
    "unknown_dossier": "aucun élève avec ce numéro de dossier",
    "other_establishment": "élève d'un autre établissement",
}


def _text(form, name: str) -> str:
    value = form.get(name)
    return value.strip()[:FIELD_MAX_CHARS] if isinstance(value, str) else ""


def _dossier_shown(request: web.Request) -> str:
    """The dossier a notice names: a dossier number only (a link cannot make it say more)."""
    text = request.query.get("dossier", "")
    return text if rights_renewal.DOSSIER_PATTERN.match(text) else ""


def _count(request: web.Request, name: str) -> int:
    text = request.query.get(name, "")
    return int(text) if text.isascii() and text.isdigit() and len(text) < 10 else 0


async def _year_and_counts(conn, operator: Operator):
    year = await rights_renewal.renewal_school_year(conn)
    counts = await rights_renewal.renewal_counts(conn, year, scope(operator))
    return year, counts


async def _render(request, operator, status: int = 200, **extra):
    async with request.app[POOL].acquire() as conn:
        year, counts = await _year_and_counts(conn, operator)
    response = aiohttp_jinja2.render_template("bo_renewal.html", request, {
        "operator": operator, "year": year, "counts": counts,
        "can_act": operator.role in (REGION, STAFF), "max_mb": RENEWAL_UPLOAD_MAX_BYTES // 1_000_000,
        "notice": request.query.get("fait"), "error": request.query.get("refus"),
        "dossier": _dossier_shown(request), "dry_run": None,
        "renewed": _count(request, "renouveles"), "already": _count(request, "deja"), **extra})
    response.set_status(status)
    return response


@routes.get(RENEWAL_PATH)
@operator_page(REGION, STAFF, AUDITOR)
async def renewal_page(request: web.Request, operator: Operator):
    return await _render(request, operator)


@routes.post(RENEWAL_PATH + "/eleve")
@operator_page(REGION, STAFF)
async def renew_one(request: web.Request, operator: Operator):
    form = await request.post()
    dossier, programme = _text(form, "dossier").upper(), _text(form, "programme").upper() or None
    if not rights_renewal.DOSSIER_PATTERN.match(dossier) or (
            programme is not None and not PROGRAMME_PATTERN.match(programme)):
        raise web.HTTPSeeOther(f"{RENEWAL_PATH}?refus=saisie")
    async with request.app[POOL].acquire() as conn:
        year = await rights_renewal.renewal_school_year(conn)
        try:
            result = await rights_renewal.renew_one(
                conn, dossier, school_year=year, actor=operator.actor,
                establishment_id=scope(operator), programme=programme)
        except rights_renewal.StudentNotFound:
            raise web.HTTPSeeOther(f"{RENEWAL_PATH}?refus=inconnu&dossier={dossier}") from None
        except rights_renewal.RenewalRefused:
            raise web.HTTPSeeOther(f"{RENEWAL_PATH}?refus=ferme") from None
    done = "deja" if result.already_renewed else "renouvele"
    raise web.HTTPSeeOther(f"{RENEWAL_PATH}?fait={done}&dossier={dossier}")


def _lines_table(data: bytes, year: int, errors: list[dict]) -> tuple[list[dict], int]:
    """Each line of the file with its outcome: the error lines all, correct ones up to
    DRY_RUN_OK_LINES_SHOWN; and how many correct lines are not shown."""
    lines, _ = rights_renewal.parse_renewal_file(data, year)
    by_line = {e["line"]: e for e in errors}
    table = [{"line": e["line"], "dossier": e["dossier"] or "", "programme": "",
              "error": ERRORS_FR.get(e["code"], e["code"])} for e in errors]
    correct = [line for line in lines if line.line not in by_line]
    table += [{"line": line.line, "dossier": line.dossier, "programme": line.programme or "",
               "error": None} for line in correct[:DRY_RUN_OK_LINES_SHOWN]]
    return sorted(table, key=lambda row: row["line"]), max(0, len(correct) - DRY_RUN_OK_LINES_SHOWN)


@routes.post(RENEWAL_PATH + "/fichier")
@operator_page(REGION, STAFF)
async def dry_run(request: web.Request, operator: Operator):
    form = await request.post()          # multipart: its CSRF field checked by web.security
    upload = form.get("fichier")
    if not isinstance(upload, web.FileField):
        raise web.HTTPSeeOther(f"{RENEWAL_PATH}?refus=fichier")
    data = upload.file.read(RENEWAL_UPLOAD_MAX_BYTES + 1)
    if len(data) > RENEWAL_UPLOAD_MAX_BYTES:
        raise web.HTTPSeeOther(f"{RENEWAL_PATH}?refus=taille")
    async with request.app[POOL].acquire() as conn:
        year = await rights_renewal.renewal_school_year(conn)
        try:
            report = await rights_renewal.renew_file(
                conn, data, school_year=year, actor=operator.actor,
                establishment_id=scope(operator), apply=False)
        except rights_renewal.RenewalFileRefused:
            raise web.HTTPSeeOther(f"{RENEWAL_PATH}?refus=illisible") from None
        except rights_renewal.RenewalRefused:
            raise web.HTTPSeeOther(f"{RENEWAL_PATH}?refus=ferme") from None
    shown = renewal_report(report, operator)
    table, hidden = _lines_table(data, year, shown["errors"])
    name = (upload.filename or "fichier.csv")[:100]
    token = None
    if report.ok:
        async with request.app[POOL].acquire() as conn:
            token = await keep_draft(conn, RenewalDraft(operator.id, year, name, data))
    return await _render(request, operator, dry_run={
        "report": shown, "table": table, "hidden": hidden, "token": token, "name": name})


@routes.post(RENEWAL_PATH + "/fichier/appliquer")
@operator_page(REGION, STAFF)
async def apply_file(request: web.Request, operator: Operator):
    token = _text(await request.post(), "fichier")
    async with request.app[POOL].acquire() as conn, conn.transaction():
        pending = await take_draft(conn, token, operator.id) if token else None
        if pending is None:
            raise web.HTTPSeeOther(f"{RENEWAL_PATH}?refus=expire")
        try:
            report = await rights_renewal.renew_file(
                conn, pending.data, school_year=pending.school_year, actor=operator.actor,
                establishment_id=scope(operator), apply=True)
        except rights_renewal.RenewalFileRefused:
            raise web.HTTPSeeOther(f"{RENEWAL_PATH}?refus=illisible") from None
        except rights_renewal.RenewalRefused:
            raise web.HTTPSeeOther(f"{RENEWAL_PATH}?refus=ferme") from None
    if not report.applied:               # the file changed meaning since its dry run
        raise web.HTTPSeeOther(f"{RENEWAL_PATH}?refus=change")
    raise web.HTTPSeeOther(f"{RENEWAL_PATH}?fait=fichier&renouveles={report.renewed}"
                           f"&deja={report.already_renewed}")
