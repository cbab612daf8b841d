"""The operator API of settlement: the role matrix (401 without a token, 403 for the roles that
may not, nothing changed), a partner reading only its own settled days, and an operator's run,
payout files and reports through HTTP."""

from __future__ import annotations

import xmlschema

from backoffice.operator_auth import Role
from operator_fixtures import assert_roles_refused, ops_call as call

from test_payout_files import REGION as REGION_ACCOUNT, XSD, french_iban
from test_reports import busy_days

REGION, STAFF, PARTNER, AUDITOR = (Role.REGION_OPERATOR, Role.ESTABLISHMENT_STAFF, Role.PARTNER,
                                   Role.AUDITOR)
RUNS = "/v1/ops/settlement/runs"
DEBTOR = {"debtor_name": REGION_ACCOUNT.name, "debtor_iban": REGION_ACCOUNT.iban,
          "debtor_bic": REGION_ACCOUNT.bic}
# (method, path, body) → the roles allowed; every other role gets 403, no token 401. The ops_client
# partner is partner 1's.
ENDPOINTS = [
    ("GET", RUNS, None, {REGION, AUDITOR}),
    ("POST", RUNS, {}, {REGION}),
    ("GET", f"{RUNS}/1", None, {REGION, AUDITOR}),
    ("POST", f"{RUNS}/1/payout-files", DEBTOR, {REGION}),
    ("GET", f"{RUNS}/1/payout-files/csv", None, {REGION, AUDITOR}),
    ("GET", f"{RUNS}/1/payout-files/pain001", None, {REGION, AUDITOR}),
    ("GET", "/v1/ops/partners/1/settlement", None, {REGION, AUDITOR, PARTNER}),
    ("GET", "/v1/ops/partners/2/settlement", None, {REGION, AUDITOR}),
    ("PUT", "/v1/ops/partners/1/payee", {"name": "SARL Furet", "iban": french_iban(1),
                                         "bic": "BNPAFRPP"}, {REGION}),
    ("GET", "/v1/ops/reports/volumes", None, {REGION, AUDITOR}),
    ("GET", "/v1/ops/reports/declines", None, {REGION, AUDITOR}),
    ("GET", "/v1/ops/reports/funds", None, {REGION, AUDITOR}),
]



async def settled_with_files(conn, region) -> None:
    await busy_days(conn)
    for partner in (1, 2, 7):
        status, _ = await call(region, "PUT", f"/v1/ops/partners/{partner}/payee",
                               {"name": f"SARL {partner}", "iban": french_iban(partner), "bic": "BNPAFRPP"})
        assert status == 200
    assert (await call(region, "POST", RUNS, {"through_day": "2026-11-24"}))[0] == 201
    assert (await call(region, "POST", f"{RUNS}/1/payout-files", DEBTOR))[0] == 201


async def test_the_role_matrix(ops_client, conn):
    async with ops_client(REGION) as region:
        await settled_with_files(conn, region)
    before = [await conn.fetchval(q) for q in (
        "SELECT count(*) FROM settlement_runs", "SELECT count(*) FROM payout_files",
        "SELECT count(*) FROM audit_log WHERE action NOT IN ('operator.create',"
        " 'settlement.payout_file_download')",
        "SELECT count(*) FROM partners WHERE iban IS NOT NULL")]
    await assert_roles_refused(ops_client, ENDPOINTS)
    await conn.execute("UPDATE clock_override SET pinned_at = pinned_at + interval '1 day'")
    for role in (None, STAFF, PARTNER, AUDITOR):                 # a day is now open to settle
        async with ops_client(role) as session:
            assert (await call(session, "POST", RUNS, {}))[0] in (401, 403)
    after = [await conn.fetchval(q) for q in (
        "SELECT count(*) FROM settlement_runs", "SELECT count(*) FROM payout_files",
        "SELECT count(*) FROM audit_log WHERE action NOT IN ('operator.create',"
        " 'settlement.payout_file_download')",
        "SELECT count(*) FROM partners WHERE iban IS NOT NULL")]
    assert after == before


async def test_a_partner_sees_only_its_own_settled_days(ops_client, conn):
    async with ops_client(REGION) as region:
        await settled_with_files(conn, region)
    async with ops_client(PARTNER, partner_id=2) as shop:
        status, answer = await call(shop, "GET", "/v1/ops/partners/2/settlement?from=2026-11-01&to=2026-11-30")
        assert status == 200
        assert [(l["business_day"], l["net_cents"], l["paid_cents"]) for l in answer["lines"]] == [
            ("2026-11-24", 7_00, 7_00)]
        for path in ("/v1/ops/partners/1/settlement", f"{RUNS}/1", f"{RUNS}/1/payout-files/csv"):
            status, answer = await call(shop, "GET", path)
            assert status == 403 and "error" in answer
        status, answer = await call(shop, "GET", "/v1/ops/partners/2/settlement?from=yesterday")
        assert status == 400 and "YYYY-MM-DD" in answer["error"]


async def test_an_operator_settles_and_downloads_the_payout_files(ops_client, conn):
    await busy_days(conn)
    async with ops_client(REGION) as region:
        status, answer = await call(region, "POST", RUNS, {"through_day": "2026-11-26"})
        assert status == 400 and "not closed yet" in answer["error"]
        status, answer = await call(region, "POST", RUNS, {"through_day": "2026-11-24"})
        assert status == 201 and answer["created"] and answer["run"]["paid_cents"] == 143_50
        status, answer = await call(region, "POST", RUNS, {"through_day": "2026-11-24"})
        assert (status, answer["created"], answer["run"]["run_id"]) == (200, False, 1)
        status, answer = await call(region, "GET", f"{RUNS}/1")
        assert [(l["partner_id"], l["paid_cents"]) for l in answer["lines"]] == [(1, 37_50), (2, 7_00), (7, 99_00)]
        assert (await call(region, "GET", f"{RUNS}/9"))[0] == 404
        assert (await call(region, "GET", f"{RUNS}/1/payout-files/csv"))[0] == 404   # not made yet

        status, answer = await call(region, "POST", f"{RUNS}/1/payout-files", DEBTOR)
        assert status == 409 and "partner 1 (Librairie Le Furet du Nord): no account holder, IBAN, BIC on record" in answer["error"]
        status, answer = await call(region, "PUT", "/v1/ops/partners/1/payee",
                                    {"name": "SARL Furet", "iban": "FR7630004000010000000000299", "bic": "BNPAFRPP"})
        assert status == 400 and "invalid IBAN" in answer["error"]
        assert (await call(region, "PUT", "/v1/ops/partners/999/payee",
                           {"name": "X", "iban": french_iban(1), "bic": "BNPAFRPP"}))[0] == 404
        for partner in (1, 2, 7):
            status, answer = await call(region, "PUT", f"/v1/ops/partners/{partner}/payee",
                                        {"name": f"SARL {partner}", "iban": french_iban(partner), "bic": "bnpafrpp"})
            assert (status, answer["payee"]["bic"]) == (200, "BNPAFRPP")
        status, made = await call(region, "POST", f"{RUNS}/1/payout-files", DEBTOR)
        assert status == 201 and (made["payments"], made["ctrl_sum_cents"]) == (3, 143_50)
        status, again = await call(region, "POST", f"{RUNS}/1/payout-files")
        assert (status, again["created"], again["message_id"]) == (200, False, made["message_id"])

    async with ops_client(AUDITOR) as auditor:
        async with auditor.get(made["files"]["pain001"]) as reply:
            assert reply.status == 200 and reply.content_type == "application/xml"
            assert 'filename="hdfpay-payout-run000001.pain001.xml"' in reply.headers["Content-Disposition"]
            xmlschema.XMLSchema(str(XSD)).validate((await reply.read()).decode())
        async with auditor.get(made["files"]["csv"]) as reply:
            assert reply.content_type == "text/csv"
            assert (await reply.text()).count("\r\n") == 4        # header and three lines
    actions = [r["action"] for r in await conn.fetch(
        "SELECT action FROM audit_log WHERE action LIKE 'settlement.%' OR action = 'partner.payee' ORDER BY id")]
    assert actions == ["settlement.run", *["partner.payee"] * 3, "settlement.payout_file",
                       *["settlement.payout_file_download"] * 2]     # each download audited


async def test_the_reports_through_the_api(ops_client, conn):
    await busy_days(conn)
    async with ops_client(AUDITOR) as auditor:
        status, answer = await call(auditor, "GET", "/v1/ops/reports/volumes?from=2026-11-24&to=2026-11-25")
        assert status == 200
        [total] = [r for r in answer["rows"] if r["business_day"] is None]
        assert total["net_cents"] == 147_50
        status, answer = await call(auditor, "GET", "/v1/ops/reports/declines?from=2026-11-24&to=2026-11-25")
        assert (answer["messages"], answer["rows"][0]["reason"]) == (13, "insufficient funds")
        status, answer = await call(auditor, "GET", "/v1/ops/reports/funds")
        assert status == 200 and answer["reconciled"] is True and answer["from"] is None
        assert all(check["ok"] for check in answer["checks"])
        status, answer = await call(auditor, "GET", "/v1/ops/reports/volumes?from=2026-11-25&to=2026-11-24")
        assert status == 400 and "after it ends" in answer["error"]
        assert (await call(auditor, "GET", "/v1/ops/reports/unknown"))[0] == 404
