"""Rights renewal by establishments: one student or a CSV file, open from 20 June (Europe/Paris)
for the next school year, only their own students, a file with any error changes nothing and
says which lines are wrong."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import subprocess
import sys

import pytest

from ledger.rules import RulesRefused, current_rules, set_rules
from ledger.clock import pin_clock
from ledger.rights_renewal import (MAX_RENEWAL_FILE_BYTES, RenewalFileRefused, RenewalRefused,
                                   StudentNotFound, renew_file, renew_one, 
                                   renewal_school_year)

from conftest import TEST_SCHOOL_YEAR, paris

YEAR = TEST_SCHOOL_YEAR
NEXT = YEAR + 1
ACTOR = "establishment_staff:dupont"
UTC = dt.timezone.utc
COMMAND_TIMEOUT_S = 120
# Seeded students 50, 100, 150… have no rights for YEAR; like 10, 20, 30… they belong to the
# first establishment (a lycée). Student 11 belongs to the second.
UNRENEWED = ["HDF0000050", "HDF0000100", "HDF0000150"]
RENEWED_SAME_SCHOOL = "HDF0000010"
OTHER_SCHOOL = "HDF0000011"


async def _establishment(conn, dossier: str) -> int:
    return await conn.fetchval("SELECT establishment_id FROM beneficiaries WHERE dossier_number = $1", dossier)


async def _rights(conn, year: int) -> int:
    return await conn.fetchval("SELECT count(*) FROM rights WHERE school_year = $1", year)


async def _audits(conn, action: str) -> list:
    return await conn.fetch("SELECT actor, subject, before, after FROM audit_log WHERE action = $1"
                            " ORDER BY id", action)


async def test_one_student_is_renewed_once_and_audited(conn):
    school = await _establishment(conn, UNRENEWED[0])
    result = await renew_one(conn, UNRENEWED[0].lower(), school_year=YEAR, actor=ACTOR,
                             establishment_id=school)
    assert (result.dossier_number, result.programme, result.already_renewed) == (UNRENEWED[0], "BOOKS", False)
    again = await renew_one(conn, UNRENEWED[0], school_year=YEAR, actor=ACTOR, establishment_id=school)
    assert again.already_renewed
    audits = await _audits(conn, "rights.renew")
    assert len(audits) == 1
    assert (audits[0]["actor"], audits[0]["subject"]) == (ACTOR, f"beneficiary:{UNRENEWED[0]}")
    assert json.loads(audits[0]["after"]) == {"school_year": YEAR, "renewed": True, "programme": "BOOKS"}
    assert await conn.fetchval("SELECT renewed_by FROM rights r JOIN beneficiaries b ON b.id = r.beneficiary_id"
                               " WHERE b.dossier_number = $1 AND r.school_year = $2", UNRENEWED[0], YEAR) == ACTOR


async def test_staff_renew_only_their_own_students(conn):
    school = await _establishment(conn, UNRENEWED[0])
    with pytest.raises(StudentNotFound, match="in this establishment"):
        await renew_one(conn, OTHER_SCHOOL, school_year=YEAR, actor=ACTOR, establishment_id=school)
    with pytest.raises(StudentNotFound):
        await renew_one(conn, "HDF9999999", school_year=YEAR, actor=ACTOR)
    # A region operator (no establishment scope) renews anyone.
    assert not (await renew_one(conn, "HDF0000250", school_year=YEAR, actor="region_operator:x")).already_renewed


@pytest.mark.parametrize("when, opened", [
    (paris(NEXT, 6, 19, 23, 59, 59, 999_000), False),
    (paris(NEXT, 6, 20, 0, 0, 0), True),
    # 20 June 00:00 in Paris is 19 June 22:00 UTC (CEST, UTC+2).
    (dt.datetime(NEXT, 6, 19, 21, 59, 59, tzinfo=UTC), False),
    (dt.datetime(NEXT, 6, 19, 22, 0, 0, tzinfo=UTC), True),
    (paris(YEAR, 11, 26, 10, 0), False),
])
async def test_renewal_for_the_next_school_year_opens_on_20_june_paris(conn, when, opened):
    await pin_clock(conn, when)
    if opened:
        assert not (await renew_one(conn, "HDF0000005", school_year=NEXT, actor=ACTOR)).already_renewed
        assert await renewal_school_year(conn) == NEXT
    else:
        with pytest.raises(RenewalRefused, match=f"opens on 20/06/{NEXT}"):
            await renew_one(conn, "HDF0000005", school_year=NEXT, actor=ACTOR)
        with pytest.raises(RenewalRefused, match=f"opens on 20/06/{NEXT}"):
            await renew_file(conn, b"HDF0000005\n", school_year=NEXT, actor=ACTOR, apply=True)
        assert await _rights(conn, NEXT) == 0


async def test_a_school_year_that_ended_cannot_be_renewed(conn):
    with pytest.raises(RenewalRefused, match=f"ended on 30/06/{YEAR}"):
        await renew_one(conn, UNRENEWED[0], school_year=YEAR - 1, actor=ACTOR)
    await pin_clock(conn, paris(NEXT, 6, 30, 23, 59, 59))
    assert not (await renew_one(conn, UNRENEWED[0], school_year=YEAR, actor=ACTOR)).already_renewed
    await pin_clock(conn, paris(NEXT, 7, 1, 0, 0, 0))
    with pytest.raises(RenewalRefused, match="ended"):
        await renew_one(conn, UNRENEWED[1], school_year=YEAR, actor=ACTOR)


async def test_the_opening_date_is_a_rule_of_the_ledger(conn):
    await pin_clock(conn, paris(NEXT, 6, 1, 0, 0, 0))
    with pytest.raises(RenewalRefused, match="opens on 20/06"):
        await renew_one(conn, "HDF0000005", school_year=NEXT, actor=ACTOR)
    await set_rules(conn, actor=ACTOR, rights_renewal_opens_month=6, rights_renewal_opens_day=1)
    assert await renewal_school_year(conn) == NEXT
    assert not (await renew_one(conn, "HDF0000005", school_year=NEXT, actor=ACTOR)).already_renewed
    for month, day in [(13, 1), (7, 1), (6, 31), (2, 30)]:
        with pytest.raises(RulesRefused):
            await set_rules(conn, actor=ACTOR, rights_renewal_opens_month=month,
                            rights_renewal_opens_day=day)
    assert (await current_rules(conn)).rights_renewal_opens_day == 1


async def test_the_programme_follows_last_year_unless_given(conn):
    await conn.execute("UPDATE rights SET programme = 'EQUIPMENT' WHERE beneficiary_id = 5"
                       " AND school_year = $1", YEAR)
    await pin_clock(conn, paris(NEXT, 6, 20, 0, 0, 0))
    assert (await renew_one(conn, "HDF0000005", school_year=NEXT, actor=ACTOR)).programme == "EQUIPMENT"
    given = await renew_one(conn, "HDF0000015", school_year=NEXT, actor=ACTOR, programme="BOOKS")
    assert given.programme == "BOOKS"
    # A vocational school's student, with no rights last year: equipment.
    report = await renew_file(conn, b"HDF0000007\nHDF0000008;;BOOKS\n", school_year=NEXT, actor=ACTOR,
                              apply=True)
    assert (report.applied, report.renewed) == (True, 2)
    programmes = dict(await conn.fetch("SELECT b.dossier_number, r.programme FROM rights r JOIN beneficiaries b"
                                       " ON b.id = r.beneficiary_id WHERE r.school_year = $1", NEXT))
    assert programmes["HDF0000008"] == "BOOKS"
    kind = await conn.fetchval("SELECT e.kind FROM beneficiaries b JOIN establishments e"
                               " ON e.id = b.establishment_id WHERE b.dossier_number = 'HDF0000007'")
    assert kind in ("LP", "CFA") and programmes["HDF0000007"] == "EQUIPMENT"


async def test_a_good_file_dry_run_then_applied(conn):
    school = await _establishment(conn, UNRENEWED[0])
    data = ("N° dossier;année scolaire\r\n"
            f"{UNRENEWED[0]};{YEAR}\r\n{UNRENEWED[1]};{YEAR}-{NEXT}\r\n{UNRENEWED[2]}\r\n"
            f"{RENEWED_SAME_SCHOOL};{YEAR}\r\n\r\n\r\n").encode("cp1252")
    before = await _rights(conn, YEAR)
    dry = await renew_file(conn, data, school_year=YEAR, actor=ACTOR, establishment_id=school)
    assert (dry.ok, dry.applied, dry.lines, dry.renewed, dry.already_renewed) == (True, False, 4, 3, 1)
    assert await _rights(conn, YEAR) == before and await _audits(conn, "rights.renew_file") == []
    applied = await renew_file(conn, data, school_year=YEAR, actor=ACTOR, establishment_id=school, apply=True)
    assert (applied.ok, applied.applied, applied.renewed, applied.already_renewed) == (True, True, 3, 1)
    assert await _rights(conn, YEAR) == before + 3
    [audit] = await _audits(conn, "rights.renew_file")
    assert audit["subject"] == f"rights:{YEAR}:0590117G"
    assert json.loads(audit["after"]) == {
        "file_sha256": hashlib.sha256(data).hexdigest(), "school_year": YEAR, "establishment": "0590117G",
        "lines": 4, "renewed": 3, "already_renewed": 1}
    again = await renew_file(conn, data, school_year=YEAR, actor=ACTOR, establishment_id=school, apply=True)
    assert (again.renewed, again.already_renewed) == (0, 4)


async def test_a_scoped_dry_run_counts_only_the_callers_students(conn):
    """Another establishment's student, renewed or not, moves the counts exactly as a dossier
    that does not exist: not at all. Only the caller's own students are counted."""
    await pin_clock(conn, paris(NEXT, 6, 20, 0, 0, 0))
    school = await _establishment(conn, UNRENEWED[0])
    other_unrenewed = "HDF0000021"
    assert await _establishment(conn, OTHER_SCHOOL) == await _establishment(conn, other_unrenewed) != school
    await renew_one(conn, OTHER_SCHOOL, school_year=NEXT, actor=ACTOR)           # by the region
    await renew_one(conn, RENEWED_SAME_SCHOOL, school_year=NEXT, actor=ACTOR, establishment_id=school)

    async def counts(*dossiers: str) -> tuple[int, int, int, list[str]]:
        report = await renew_file(conn, "".join(f"{d}\n" for d in dossiers).encode(),
                                  school_year=NEXT, actor=ACTOR, establishment_id=school)
        return report.lines, report.renewed, report.already_renewed, [e.code for e in report.errors]

    nowhere = await counts("HDF9999999")
    assert nowhere == (1, 0, 0, ["unknown_dossier"])
    assert await counts(OTHER_SCHOOL) == await counts(other_unrenewed) == (1, 0, 0, ["other_establishment"])
    own = (UNRENEWED[0], RENEWED_SAME_SCHOOL)
    assert await counts(*own) == (2, 1, 1, [])
    for stranger in (OTHER_SCHOOL, other_unrenewed, "HDF9999999"):
        lines, renewed, already, _ = await counts(*own, stranger)
        assert (lines, renewed, already) == (3, 1, 1)
    # The region (no scope) counts everyone it found, never a dossier that does not exist.
    region = await renew_file(conn, f"{OTHER_SCHOOL}\n{other_unrenewed}\nHDF9999999\n".encode(),
                              school_year=NEXT, actor="region_operator:x")
    assert (region.renewed, region.already_renewed) == (1, 1)


async def test_a_file_with_errors_is_reported_by_line_and_changes_nothing(conn):
    school = await _establishment(conn, UNRENEWED[0])
    data = "\n".join([
        "dossier_number,school_year,programme",          # 1 header
        UNRENEWED[0],                                    # 2 fine
        "HDF9999999",                                    # 3 unknown
        OTHER_SCHOOL,                                    # 4 another establishment
        "",                                              # 5 empty
        UNRENEWED[0],                                    # 6 duplicate of 2
        f"{UNRENEWED[1]},{NEXT}",                        # 7 wrong year
        "HDF-12",                                        # 8 not a dossier number
        f"{UNRENEWED[2]},{YEAR},books & more",           # 9 not a programme
        f"{UNRENEWED[2]},{YEAR}-{YEAR + 2}",             # 10 not a school year
        f"{UNRENEWED[2]},{YEAR},BOOKS,extra",            # 11 too many fields
        f"{RENEWED_SAME_SCHOOL}",                        # 12 fine
    ]).encode()
    before = await _rights(conn, YEAR)
    report = await renew_file(conn, data, school_year=YEAR, actor=ACTOR, establishment_id=school, apply=True)
    assert not report.ok and not report.applied
    assert [(e.line, e.code) for e in report.errors] == [
        (3, "unknown_dossier"), (4, "other_establishment"), (5, "empty_line"), (6, "duplicate"),
        (7, "wrong_year"), (8, "bad_dossier"), (9, "bad_programme"), (10, "wrong_year"),
        (11, "too_many_fields")]
    assert "already on line 2" in report.errors[3].message
    assert f"this file renews {YEAR}-{NEXT}" in report.errors[4].message
    assert report.lines == 11
    assert await _rights(conn, YEAR) == before
    assert await _audits(conn, "rights.renew_file") == []


async def test_files_that_cannot_be_read_are_refused_whole(conn):
    with pytest.raises(RenewalFileRefused, match="larger than"):
        await renew_file(conn, b"HDF0000050\n" * (MAX_RENEWAL_FILE_BYTES // 11 + 1), school_year=YEAR, actor=ACTOR)
    with pytest.raises(RenewalFileRefused, match="more than"):
        await renew_file(conn, b"\n".join(b"HDF%07d" % n for n in range(1, 50_002)), school_year=YEAR, actor=ACTOR)
    report = await renew_file(conn, b"", school_year=YEAR, actor=ACTOR, apply=True)
    assert (report.lines, report.renewed, report.ok) == (0, 0, True)


def _hdfpay(dsn: str, *args: str):
    return subprocess.run([sys.executable, "-m", "hdfpay.cli", *args], capture_output=True,
                          text=True, timeout=COMMAND_TIMEOUT_S, stdin=subprocess.DEVNULL,
                          env={**os.environ, "DATABASE_URL": dsn})


async def test_the_cli_checks_a_file_then_applies_it(conn, dsn, tmp_path):
    good = tmp_path / "renouvellement.csv"
    good.write_text(f"dossier;annee\n{UNRENEWED[0]};{YEAR}\n{UNRENEWED[1]};{YEAR}\n")
    bad = tmp_path / "erreurs.csv"
    bad.write_text(f"{UNRENEWED[0]}\n\n{OTHER_SCHOOL}\n")
    before = await _rights(conn, YEAR)
    scope = ["--school-year", str(YEAR), "--establishment", "0590117G"]
    checked = _hdfpay(dsn, "rights", "renew-file", str(good), *scope)
    assert checked.returncode == 0 and "dry run: 2 would be renewed" in checked.stdout
    refused = _hdfpay(dsn, "rights", "renew-file", str(bad), *scope, "--apply")
    assert refused.returncode == 1
    assert "line 2: empty line" in refused.stderr
    assert "line 3: HDF0000011 is a student of another" in refused.stderr
    assert await _rights(conn, YEAR) == before
    applied = _hdfpay(dsn, "rights", "renew-file", str(good), *scope, "--apply")
    assert applied.returncode == 0 and "applied: 2 renewed" in applied.stdout
    assert await _rights(conn, YEAR) == before + 2
    one = _hdfpay(dsn, "rights", "renew", UNRENEWED[2], "--school-year", str(YEAR))
    assert one.returncode == 0 and f"{UNRENEWED[2]}: renewed for {YEAR}-{NEXT} (BOOKS)" in one.stdout
    assert (await _audits(conn, "rights.renew"))[0]["actor"].startswith("cli:")
    early = _hdfpay(dsn, "rights", "renew", UNRENEWED[2], "--school-year", str(NEXT))
    assert early.returncode == 2 and f"opens on 20/06/{NEXT}" in early.stderr
    assert "Traceback" not in early.stderr
