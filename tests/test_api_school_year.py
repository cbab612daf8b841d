"""The school year's operator API: who may call what (every endpoint refused with 403 to the other
roles and 401 without a token, changing nothing), staff limited to their own establishment, and
each operation through HTTP: renewal (one, or a file in a dry run then applied), programme
amounts, the bulk reload in the background, the expiry."""

from __future__ import annotations

import asyncio
import json

import pytest

from backoffice.operator_auth import Role
from ledger.clock import pin_clock
from operator_fixtures import assert_roles_refused, ops_call as call

from conftest import TEST_SCHOOL_YEAR, paris

REGION, STAFF, PARTNER, AUDITOR = (Role.REGION_OPERATOR, Role.ESTABLISHMENT_STAFF, Role.PARTNER,
                                   Role.AUDITOR)
YEAR = TEST_SCHOOL_YEAR
BASE = f"/v1/ops/school-years/{YEAR}"
NEXT_BASE = f"/v1/ops/school-years/{YEAR + 1}"
# Staff of the fixture's establishment 1 (Lycée Faidherbe, 0590117G): students 10, 20, 30…;
# 50, 100, 150… have no rights for YEAR. Student 11 is another establishment's.
OWN_UNRENEWED = ["HDF0000050", "HDF0000100", "HDF0000150"]
OTHER_SCHOOL = "HDF0000011"
STATUS_POLLS = 2_000
ENDPOINTS = [
    ("POST", f"{BASE}/renewals", {"dossier_number": OWN_UNRENEWED[0]}, {REGION, STAFF}),
    ("GET", f"{BASE}/renewals", None, {REGION, STAFF, AUDITOR}),
    ("POST", f"{BASE}/renewals/file?dry_run=false", OWN_UNRENEWED[0] + "\n", {REGION, STAFF}),
    ("GET", f"{BASE}/programmes", None, {REGION, AUDITOR}),
    ("PUT", f"{BASE}/programmes/BOOKS", {"amount_cents": 100_00}, {REGION}),
    ("POST", f"{BASE}/bulk-reload", None, {REGION}),
    ("GET", f"{BASE}/bulk-reload", None, {REGION, AUDITOR}),
    ("POST", f"{BASE}/expiry", None, {REGION}),
    ("GET", f"{BASE}/expiry", None, {REGION, AUDITOR}),
]



async def _counts(conn):
    return (await conn.fetchval("SELECT count(*) FROM audit_log"),
            await conn.fetchval("SELECT count(*) FROM rights"),
            await conn.fetchval("SELECT count(*) FROM transfers"),
            await conn.fetchval("SELECT count(*) FROM reload_programmes"))


async def test_the_role_matrix(ops_client, conn):
    audit_rows, *others = await _counts(conn)
    audit_rows += await assert_roles_refused(ops_client, ENDPOINTS)   # one account per role
    assert await _counts(conn) == (audit_rows, *others)


async def test_staff_renew_their_own_students_only(ops_client, conn):
    async with ops_client(STAFF, establishment_id=1) as staff:
        status, answer = await call(staff, "POST", f"{BASE}/renewals", {"dossier_number": OWN_UNRENEWED[0]})
        renewal = answer["renewal"]
        assert (status, renewal["already_renewed"], renewal["programme"]) == (201, False, "BOOKS")
        status, answer = await call(staff, "POST", f"{BASE}/renewals", {"dossier_number": OWN_UNRENEWED[0]})
        assert (status, answer["renewal"]["already_renewed"]) == (200, True)
        status, answer = await call(staff, "POST", f"{BASE}/renewals", {"dossier_number": OTHER_SCHOOL})
        assert status == 404 and "in this establishment" in answer["error"]
        for body in [{}, {"dossier_number": 5}, {"dossier_number": "x"},
                     {"dossier_number": OWN_UNRENEWED[1], "programme": "books!"}]:
            assert (await call(staff, "POST", f"{BASE}/renewals", body))[0] == 400
        status, answer = await call(staff, "GET", f"{BASE}/renewals")
        assert status == 200 and [e["uai"] for e in answer["establishments"]] == ["0590117G"]
        assert answer["renewal_opens"] == f"{YEAR}-06-20"
        status, answer = await call(staff, "POST", f"/v1/ops/school-years/{YEAR + 1}/renewals",
                                    {"dossier_number": OWN_UNRENEWED[1]})
        assert status == 409 and f"opens on 20/06/{YEAR + 1}" in answer["error"]
        bad_year = await call(staff, "POST", "/v1/ops/school-years/99/renewals",
                              {"dossier_number": "HDF0000050"})
        assert bad_year[0] == 400
    actor = await conn.fetchval("SELECT actor FROM audit_log WHERE action = 'rights.renew'")
    assert actor.startswith("establishment_staff:")


async def test_a_file_dry_run_then_applied_and_errors_by_line(ops_client, conn):
    good = "dossier;annee\n" + "".join(f"{d};{YEAR}\n" for d in OWN_UNRENEWED)
    bad = f"{OWN_UNRENEWED[0]}\n\n{OTHER_SCHOOL}\nHDF9999999\n{OWN_UNRENEWED[0]}\n{OWN_UNRENEWED[1]};{YEAR + 1}\n"
    rights = await conn.fetchval("SELECT count(*) FROM rights")
    async with ops_client(STAFF, establishment_id=1) as staff:
        status, answer = await call(staff, "POST", f"{BASE}/renewals/file", good)
        assert status == 200
        assert {k: answer["report"][k] for k in ("ok", "applied", "lines", "renewed")} == {
            "ok": True, "applied": False, "lines": 3, "renewed": 3}
        status, answer = await call(staff, "POST", f"{BASE}/renewals/file?dry_run=false", bad)
        assert status == 422 and answer["report"]["applied"] is False
        assert [(e["line"], e["code"]) for e in answer["report"]["errors"]] == [
            (2, "empty_line"), (3, "unknown_dossier"), (4, "unknown_dossier"), (5, "duplicate"),
            (6, "wrong_year")]
        assert OTHER_SCHOOL in answer["report"]["errors"][1]["message"]
        assert "another establishment" not in json.dumps(answer)
        assert await conn.fetchval("SELECT count(*) FROM rights") == rights
        assert (await call(staff, "POST", f"{BASE}/renewals/file?dry_run=maybe", good))[0] == 400
        status, answer = await call(staff, "POST", f"{BASE}/renewals/file?dry_run=false", good)
        assert status == 200 and (answer["report"]["applied"], answer["report"]["renewed"]) == (True, 3)
    assert await conn.fetchval("SELECT count(*) FROM rights") == rights + 3
    audit = await conn.fetchrow("SELECT actor, after FROM audit_log WHERE action = 'rights.renew_file'")
    assert audit["actor"].startswith("establishment_staff:")
    assert json.loads(audit["after"])["file_sha256"] == answer["report"]["file_sha256"]
    async with ops_client(REGION) as region:
        status, answer = await call(region, "POST", f"{BASE}/renewals/file?dry_run=false&establishment=0590119J",
                                    f"{OWN_UNRENEWED[0]}\n")
        assert status == 422 and answer["report"]["errors"][0]["code"] == "other_establishment"
        status, answer = await call(region, "POST", f"{BASE}/renewals/file", "HDF0000200\nHDF0000011\n")
        assert (status, answer["report"]["ok"], answer["report"]["already_renewed"]) == (200, True, 1)


async def test_a_staff_dry_run_reveals_nothing_about_other_establishments(ops_client, conn):
    """Another establishment's student, renewed or not, answers exactly as a dossier that does
    not exist: the same counts, code and message."""
    await pin_clock(conn, paris(YEAR + 1, 6, 20, 0, 0, 0))
    other_unrenewed = "HDF0000021"                         # the second establishment's, like 11
    async with ops_client(REGION) as region:
        status, _ = await call(region, "POST", f"/v1/ops/school-years/{YEAR + 1}/renewals",
                               {"dossier_number": OTHER_SCHOOL})
        assert status == 201
    answers = {}
    async with ops_client(STAFF, establishment_id=1) as staff:
        for dossier in (OTHER_SCHOOL, other_unrenewed, "HDF9999999"):
            for file in (f"{dossier}\n", f"{OWN_UNRENEWED[0]}\n{dossier}\n"):
                status, answer = await call(staff, "POST", f"/v1/ops/school-years/{YEAR + 1}/renewals/file",
                                            file)
                report = answer["report"]
                assert status == 200 and "another establishment" not in json.dumps(answer)
                errors = [(e["line"], e["code"], e["message"].replace(dossier, "…")) for e in report["errors"]]
                answers.setdefault(dossier, []).append(
                    (report["lines"], report["renewed"], report["already_renewed"], report["ok"], errors))
    assert answers[OTHER_SCHOOL] == answers[other_unrenewed] == answers["HDF9999999"] == [
        (1, 0, 0, False, [(1, "unknown_dossier", "no student with dossier number … in your establishment")]),
        (2, 1, 0, False, [(2, "unknown_dossier", "no student with dossier number … in your establishment")])]


async def test_amounts_then_a_bulk_reload_in_the_background(ops_client, conn):
    """25 June: last year's wallets closed, the next year's rights renewed for every student
    of the seed, whose year's credit the bulk reload makes."""
    await conn.execute("INSERT INTO rights (beneficiary_id, school_year, renewed_by)"
                       " SELECT beneficiary_id, $1, 'test' FROM rights WHERE school_year = $2",
                       YEAR + 1, YEAR)
    await pin_clock(conn, paris(YEAR + 1, 6, 25, 10, 0, 0))     # sessions live in business time
    async with ops_client(REGION) as region, ops_client(AUDITOR) as auditor:
        status, answer = await call(region, "POST", f"{NEXT_BASE}/bulk-reload")
        assert status == 409 and "no amount" in answer["error"]
        status, answer = await call(auditor, "GET", f"{NEXT_BASE}/programmes")
        assert {m["programme"] for m in answer["missing"]} == {"BOOKS", "EQUIPMENT"}
        assert (await call(region, "PUT", f"{NEXT_BASE}/programmes/BOOKS", {"amount_cents": 90_00}))[0] == 200
        assert (await call(region, "PUT", f"{NEXT_BASE}/programmes/EQUIPMENT", {"amount_cents": 140_00}))[0] == 200
        for bad in [{"amount_cents": "90"}, {"amount_cents": 0}, {}]:
            assert (await call(region, "PUT", f"{NEXT_BASE}/programmes/BOOKS", bad))[0] == 400
        status, answer = await call(region, "POST", f"{NEXT_BASE}/bulk-reload")
        assert status == 202 and answer["in_progress"] in (True, False)
        answer = await _until_finished(auditor, NEXT_BASE)
        run = answer["run"]
        assert (run["finished"], run["wallets_credited"], answer["last_error"]) == (True, 294, None)
        assert run["amounts"] == {"BOOKS": 90_00, "EQUIPMENT": 140_00}
        status, answer = await call(region, "POST", f"{NEXT_BASE}/bulk-reload")
        assert status == 202
        answer = await _until_finished(auditor, NEXT_BASE)
        assert (answer["run"]["id"], answer["run"]["wallets_credited"]) == (run["id"] + 1, 0)
    assert await conn.fetchval("SELECT count(*) FROM transfers WHERE code = 'RELOAD' AND reference LIKE $1",
                               f"bulk:{YEAR + 1}:%") == 294
    assert (await conn.fetchval("SELECT actor FROM audit_log WHERE action = 'reload.bulk_start'")).startswith(
        "region_operator:")


async def _until_finished(session, base: str = BASE) -> dict:
    """Poll the status until the background run ends (a condition, bounded)."""
    for _ in range(STATUS_POLLS):
        status, answer = await call(session, "GET", f"{base}/bulk-reload")
        assert status == 200
        if not answer["in_progress"] and answer["run"] and answer["run"]["finished"]:
            return answer
        await asyncio.sleep(0.01)
    pytest.fail(f"the bulk reload did not finish: {answer}")


async def test_the_expiry_by_hand(ops_client, conn):
    await pin_clock(conn, paris(YEAR + 1, 4, 30, 23, 59, 59))    # sessions live in business time
    async with ops_client(REGION) as region, ops_client(AUDITOR) as auditor:
        status, answer = await call(region, "POST", f"{BASE}/expiry")
        assert status == 409 and "no expiry before" in answer["error"]
        await pin_clock(conn, paris(YEAR + 1, 5, 1, 0, 0, 0))
        status, answer = await call(region, "POST", f"{BASE}/expiry")
        assert status == 200 and answer["expiry"]["wallets_expired"] > 200
        expired = answer["expiry"]["expired_cents"]
        status, answer = await call(region, "POST", f"{BASE}/expiry")
        assert answer["expiry"] == {"school_year": YEAR, "wallets_expired": 0, "expired_cents": 0}
        status, answer = await call(auditor, "GET", f"{BASE}/expiry")
        assert status == 200 and answer["closed"] is True
        assert answer["closes_at"].startswith(f"{YEAR + 1}-04-30T22:00:00")
        assert [r["expired_cents"] for r in answer["runs"]] == [expired, 0]
        assert answer["runs"][0]["actor"].startswith("region_operator:")
        status, answer = await call(region, "POST", f"{BASE}/bulk-reload")
        assert status == 409 and "closed on 1 May" in answer["error"]
