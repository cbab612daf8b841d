"""Rights renewal for a school year, by the student's establishment: one student, or a CSV file
of dossier numbers checked whole before anything changes (a dry run, then the same file applied).

Renewal for school year Y opens at rights_renewal_opens_at(Y) (SQL: 20 June Y, business time, a
rule of the table rules), and closes when the school year ends
(school_year_starts_at(Y + 1), 1 July). A caller scoped to an establishment renews only
that establishment's students. Applied renewals are audited: one row per student, or one per file
with its counts and SHA-256.

File format: UTF-8 (or Windows-1252, as spreadsheets export it), ',' or ';' separated, one
student per line: dossier number, then optionally the school year (2027 or 2027-2028, which must
be the year renewed) and a programme code. An optional first line whose first cell mentions
"dossier" is a header.
"""

from __future__ import annotations

import csv
import hashlib
import re
from dataclasses import dataclass, field

import asyncpg

from ledger.audit import append_audit
from ledger.programmes import PROGRAMME_PATTERN

MAX_RENEWAL_FILE_BYTES = 4_000_000
MAX_RENEWAL_FILE_ROWS = 50_000
MAX_RENEWAL_FIELDS = 3
DOSSIER_PATTERN = re.compile(r"^[0-9A-Z]{6,20}$")
YEAR_PATTERN = re.compile(r"^(\d{4})(?:\s*[-/]\s*(\d{4}))?$")
class RenewalRefused(ValueError):
    """Renewal closed for that school year, or a student the caller may not renew."""


class StudentNotFound(RenewalRefused):
    """No such dossier number, or not within the caller's establishment."""


class RenewalFileRefused(ValueError):
    """The file as a whole cannot be read (size, encoding, too many lines)."""


@dataclass(frozen=True)
class LineError:
    line: int
    code: str      # empty_line, too_many_fields, bad_dossier, wrong_year, bad_programme,
    message: str   # duplicate, unknown_dossier, other_establishment
    dossier: str | None = None


@dataclass(frozen=True)
class RenewalReport:
    school_year: int
    file_sha256: str
    lines: int                 # student lines read (header and trailing blank lines excluded)
    renewed: int               # renewed now, or that would be on a dry run (caller's scope only)
    already_renewed: int       # of the caller's scope only
    errors: tuple[LineError, ...] = field(default=())
    applied: bool = False

    @property
    def ok(self) -> bool:
        return not self.errors


@dataclass(frozen=True)
class RenewalResult:
    dossier_number: str
    school_year: int
    programme: str
    already_renewed: bool


@dataclass(frozen=True)
class _Line:
    line: int
    dossier: str
    programme: str | None


async def renewal_school_year(conn: asyncpg.Connection) -> int:
    """The newest school year open for renewal: the next one from its opening date, else the
    current one."""
    return await conn.fetchval(
        "SELECT CASE WHEN business_now() >= rights_renewal_opens_at(y + 1) THEN y + 1 ELSE y END"
        " FROM (SELECT school_year_of(business_now()) AS y) now")


async def check_renewal_open(conn: asyncpg.Connection, school_year: int) -> None:
    row = await conn.fetchrow(
        "SELECT business_now() >= rights_renewal_opens_at($1) AS opened,"
        " to_char(business_day_of(rights_renewal_opens_at($1)), 'DD/MM/YYYY') AS opens,"
        " business_now() >= school_year_starts_at($1 + 1) AS over,"
        " to_char(business_day_of(school_year_starts_at($1 + 1)) - 1, 'DD/MM/YYYY') AS last_day,"
        " business_time_zone() AS zone",
        school_year)
    name = f"{school_year}-{school_year + 1}"
    if not row["opened"]:
        raise RenewalRefused(f"renewal for school year {name} opens on {row['opens']} ({row['zone']})")
    if row["over"]:
        raise RenewalRefused(f"school year {name} ended on {row['last_day']}: its rights can "
                             f"no longer be renewed")


async def renew_one(conn: asyncpg.Connection, dossier_number: str, *, school_year: int, actor: str,
                    establishment_id: int | None = None, programme: str | None = None,
                    ) -> RenewalResult:
    """Renew one student (programme: given, else last year's, else the establishment's kind)."""
    dossier = dossier_number.strip().upper()
    if programme is not None and not PROGRAMME_PATTERN.match(programme):
        raise RenewalRefused(f"{programme!r} is not a programme code")
    async with conn.transaction():
        await check_renewal_open(conn, school_year)
        student = await conn.fetchrow("SELECT id, establishment_id FROM beneficiaries"
                                      " WHERE dossier_number = $1", dossier)
        if student is None or (establishment_id is not None
                               and student["establishment_id"] != establishment_id):
            raise StudentNotFound(f"no student with dossier number {dossier}"
                                 + ("" if establishment_id is None else " in this establishment"))
        inserted = await conn.fetchval(
            "INSERT INTO rights (beneficiary_id, school_year, renewed_by, renewed_at, programme)"
            " SELECT $1, $2, $3, business_now(), coalesce($4, (SELECT programme FROM rights"
            "   WHERE beneficiary_id = $1 AND school_year = $2 - 1))"
            " ON CONFLICT (beneficiary_id, school_year) DO NOTHING RETURNING programme",
            student["id"], school_year, actor, programme)
        if inserted is not None:
            await append_audit(conn, actor=actor, action="rights.renew", subject=f"beneficiary:{dossier}",
                               before={"school_year": school_year, "renewed": False},
                               after={"school_year": school_year, "renewed": True,
                                      "programme": inserted})
            return RenewalResult(dossier, school_year, inserted, already_renewed=False)
    current = await conn.fetchval("SELECT programme FROM rights WHERE beneficiary_id = $1"
                                  " AND school_year = $2", student["id"], school_year)
    return RenewalResult(dossier, school_year, current, already_renewed=True)


def parse_renewal_file(data: bytes, school_year: int) -> tuple[list[_Line], list[LineError]]:
    """The file's student lines and the errors found without the database, by line number."""
    if len(data) > MAX_RENEWAL_FILE_BYTES:
        raise RenewalFileRefused(f"the file is larger than {MAX_RENEWAL_FILE_BYTES // 1_000_000} MB")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        try:
            text = data.decode("cp1252")
        except UnicodeDecodeError:
            raise RenewalFileRefused("the file is neither UTF-8 nor Windows-1252 text") from None
    physical = text.splitlines()
    while physical and not physical[-1].strip():
        physical.pop()
    # Spreadsheets in French locales write ';', others ','.
    delimiter = ";" if text.count(";") > text.count(",") else ","
    lines: list[_Line] = []
    errors: list[LineError] = []
    first_seen: dict[str, int] = {}
    for number, raw in enumerate(physical, start=1):
        cells = [c.strip() for c in next(csv.reader([raw], delimiter=delimiter), [])]
        if number == 1 and cells and "dossier" in cells[0].lower():
            continue
        if len(lines) + len(errors) >= MAX_RENEWAL_FILE_ROWS:
            raise RenewalFileRefused(f"the file has more than {MAX_RENEWAL_FILE_ROWS} lines")
        error = _line_error(number, cells, school_year, first_seen)
        if error is not None:
            errors.append(error)
            continue
        dossier = cells[0].upper()
        first_seen[dossier] = number
        programme = cells[2].upper() if len(cells) > 2 and cells[2] else None
        lines.append(_Line(number, dossier, programme))
    return lines, errors


def _line_error(number: int, cells: list[str], school_year: int,
                first_seen: dict[str, int]) -> LineError | None:
    if not any(cells):
        return LineError(number, "empty_line", "empty line")
    if len(cells) > MAX_RENEWAL_FIELDS and any(cells[MAX_RENEWAL_FIELDS:]):
        return LineError(number, "too_many_fields",
                         f"more than {MAX_RENEWAL_FIELDS} fields (dossier; school year; programme)")
    dossier = cells[0].upper()
    if not DOSSIER_PATTERN.match(dossier):
        return LineError(number, "bad_dossier", f"{cells[0]!r} is not a dossier number", cells[0] or None)
    if len(cells) > 1 and cells[1]:
        year = YEAR_PATTERN.match(cells[1])
        if not year or (year[2] and int(year[2]) != int(year[1]) + 1):
            return LineError(number, "wrong_year", f"{cells[1]!r} is not a school year", dossier)
        if int(year[1]) != school_year:
            return LineError(number, "wrong_year", f"school year {year[1]}-{int(year[1]) + 1} on "
                             f"this line; this file renews {school_year}-{school_year + 1}", dossier)
    if len(cells) > 2 and cells[2] and not PROGRAMME_PATTERN.match(cells[2].upper()):
        return LineError(number, "bad_programme", f"{cells[2]!r} is not a programme code", dossier)
    if dossier in first_seen:
        return LineError(number, "duplicate", f"{dossier} is already on line {first_seen[dossier]}",
                         dossier)
    return None


async def renew_file(conn: asyncpg.Connection, data: bytes, *, school_year: int, actor: str,
                     establishment_id: int | None = None, apply: bool = False,
                     ) -> RenewalReport:
    """Check the whole file; if it has no error and `apply`, renew every student in it in one
    transaction (already renewed students are left as they are). Any error: nothing changes."""
    digest = hashlib.sha256(data).hexdigest()
    lines, errors = parse_renewal_file(data, school_year)
    read = len(lines) + len(errors)
    async with conn.transaction():
        await check_renewal_open(conn, school_year)
        await conn.execute("CREATE TEMP TABLE renewal_lines (line integer PRIMARY KEY,"
                           " dossier text NOT NULL, programme text) ON COMMIT DROP")
        await conn.copy_records_to_table("renewal_lines", records=[
            (line.line, line.dossier, line.programme) for line in lines])
        found = await conn.fetch(
            "SELECT l.line, l.dossier, b.id AS beneficiary_id, b.establishment_id,"
            " r.beneficiary_id IS NOT NULL AS already FROM renewal_lines l"
            " LEFT JOIN beneficiaries b ON b.dossier_number = l.dossier"
            " LEFT JOIN rights r ON r.beneficiary_id = b.id AND r.school_year = $1 ORDER BY l.line",
            school_year)
        for row in found:
            if row["beneficiary_id"] is None:
                errors.append(LineError(row["line"], "unknown_dossier",
                                        f"no student with dossier number {row['dossier']}", row["dossier"]))
            elif establishment_id is not None and row["establishment_id"] != establishment_id:
                errors.append(LineError(row["line"], "other_establishment",
                                        f"{row['dossier']} is a student of another establishment",
                                        row["dossier"]))
        errors.sort(key=lambda e: e.line)
        # Counted: only the students the caller may renew. A dossier of another establishment
        # moves no count, exactly as a dossier that does not exist, so that the counts of a dry
        # run tell a scoped caller nothing about other establishments' students.
        in_scope = [row for row in found if row["beneficiary_id"] is not None
                    and (establishment_id is None or row["establishment_id"] == establishment_id)]
        already = sum(1 for row in in_scope if row["already"])
        report = RenewalReport(school_year, digest, read, len(in_scope) - already, already,
                               tuple(errors))
        if errors or not apply:
            return report
        renewed = await conn.fetchval(
            "WITH renewed AS (INSERT INTO rights"
            "  (beneficiary_id, school_year, renewed_by, renewed_at, programme)"
            "  SELECT b.id, $1, $2, business_now(), coalesce(l.programme, last.programme)"
            "    FROM renewal_lines l JOIN beneficiaries b ON b.dossier_number = l.dossier"
            "    LEFT JOIN rights last ON last.beneficiary_id = b.id AND last.school_year = $1 - 1"
            "  ON CONFLICT (beneficiary_id, school_year) DO NOTHING RETURNING 1)"
            " SELECT count(*) FROM renewed", school_year, actor)
        uai = None if establishment_id is None else await conn.fetchval(
            "SELECT uai FROM establishments WHERE id = $1", establishment_id)
        report = RenewalReport(school_year, digest, read, renewed, read - renewed, (), applied=True)
        await append_audit(conn, actor=actor, action="rights.renew_file",
                           subject=f"rights:{school_year}:{uai or 'region'}",
                           after={"file_sha256": digest, "school_year": school_year,
                                  "establishment": uai, "lines": report.lines,
                                  "renewed": renewed, "already_renewed": report.already_renewed})
        return report


async def renewal_counts(conn: asyncpg.Connection, school_year: int,
                         establishment_id: int | None = None) -> list[dict]:
    """Per establishment (or just one): its students and how many are renewed for the year."""
    rows = await conn.fetch(
        "SELECT e.uai, e.name, e.kind, count(b.id) AS students, count(r.beneficiary_id) AS renewed"
        " FROM establishments e LEFT JOIN beneficiaries b ON b.establishment_id = e.id"
        " LEFT JOIN rights r ON r.beneficiary_id = b.id AND r.school_year = $1"
        " WHERE $2::integer IS NULL OR e.id = $2 GROUP BY e.id ORDER BY e.uai",
        school_year, establishment_id)
    return [dict(r) for r in rows]
