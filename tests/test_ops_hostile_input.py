"""Hostile input on the operator API: every case answers a 400 with a JSON error, never a 500
(with a traceback in the logs). Numbers too long for Python's int(), NaN and nesting too deep in
JSON bodies; NUL characters and lone surrogates in bodies, paths and queries; non-ASCII digits
and ids beyond PostgreSQL's integer; dates at the ends of the calendar. Also: verifying the
audit trail does not grow it, and a refused login is logged masked."""

from __future__ import annotations

import logging

import pytest

from backoffice.operator_auth import Role
from backoffice.ops_requests import MAX_ID

from conftest import TEST_SCHOOL_YEAR as YEAR

REGION = Role.REGION_OPERATOR
JSON = {"Content-Type": "application/json"}
LONG_NUMBER = b"1" + b"0" * 5000          # above Python's 4300-digit int() limit


async def bad_request(session, method: str, path: str, **kwargs) -> str:
    """Asserts a 400 with a JSON error; returns the error's text."""
    async with session.request(method, path, **kwargs) as reply:
        assert reply.status == 400, (method, path, reply.status, await reply.text())
        assert reply.content_type == "application/json", (method, path)
        error = (await reply.json())["error"]
    assert isinstance(error, str) and error, (method, path)
    return error


@pytest.fixture
def no_internal_errors(caplog):
    """After the test: no request of the operator listener failed with a traceback."""
    caplog.set_level(logging.INFO)
    yield
    failed = [r for r in caplog.records if r.getMessage() == "operator request failed"]
    assert failed == [], [r.exc_text for r in failed]


async def test_a_json_number_too_long_for_int_is_a_400_even_before_login(ops_client,
                                                                         no_internal_errors):
    async with ops_client(None) as anonymous:
        error = await bad_request(anonymous, "POST", "/v1/ops/login", headers=JSON,
                                  data=b'{"login": ' + LONG_NUMBER + b', "password": "x"}')
        assert "JSON" in error
        for body in (b"[" * 30_000 + b"]" * 30_000,                     # nested too deep
                     b'{"login": NaN, "password": "x"}', b'{"login": 1e999, "password": "x"}',
                     b'{"login": "ab\\u0000c", "password": "x"}',          # NUL
                     b'{"login": "abc", "password": "x\\ud800"}'):       # lone surrogate
            await bad_request(anonymous, "POST", "/v1/ops/login", headers=JSON, data=body)
    async with ops_client(REGION) as region:
        await bad_request(region, "POST", "/v1/ops/accounts", headers=JSON,
                          data=b'{"login": "long-one", "role": "partner", "partner_id": '
                               + LONG_NUMBER + b"}")
        await bad_request(region, "POST", "/v1/ops/partners", json={
            "name": "Chez\u0000Nul", "category": "BOOKSHOP", "address": "1 rue X",
            "latitude": 50.0, "longitude": 3.0})


@pytest.mark.parametrize("year", ["%C2%B2%E2%81%B0%C2%B2%E2%81%B6",      # ²⁰²⁶
                                  "%EF%BC%92%EF%BC%90%EF%BC%92%EF%BC%96",  # fullwidth 2026
                                  "%D9%A2%D9%A0%D9%A2%D9%A6",              # Arabic-Indic 2026
                                  "9" * 5000, "1999", "2101", "+2026", "%202026"])
async def test_a_school_year_is_four_ascii_digits_in_range(ops_client, year, no_internal_errors):
    async with ops_client(REGION) as region:
        error = await bad_request(region, "GET", f"/v1/ops/school-years/{year}/renewals")
        assert "school year" in error
        async with region.get(f"/v1/ops/school-years/{YEAR}/renewals") as reply:
            assert reply.status == 200


async def test_ids_beyond_postgresql_integer_are_a_400(ops_client, no_internal_errors):
    async with ops_client(REGION) as region:
        for field, role in (("establishment_id", "establishment_staff"), ("partner_id", "partner")):
            for value in (MAX_ID + 1, 2**63, 2**70, 0, -1):
                error = await bad_request(region, "POST", "/v1/ops/accounts", json={
                    "login": "big-one", "role": role, field: value})
                assert field in error and str(MAX_ID) in error
        for path in ("/v1/ops/partners/{}/settlement", "/v1/ops/partners/{}",
                     "/v1/ops/settlement/runs/{}", "/v1/ops/settlement/runs/{}/payout-files/csv",
                     "/v1/ops/card-requests/{}"):
            for value in (MAX_ID + 1, 0, 10**18, "9" * 5000):
                await bad_request(region, "GET", path.format(value))
        too_big = MAX_ID + 1
        await bad_request(region, "PATCH", f"/v1/ops/partners/{too_big}", json={"name": "x"})
        await bad_request(region, "POST", f"/v1/ops/partners/{too_big}/status",
                          json={"status": "ACTIVE"})
        await bad_request(region, "PUT", f"/v1/ops/partners/{too_big}/payee",
                          json={"name": "x", "iban": "x", "bic": "x"})
        await bad_request(region, "POST", f"/v1/ops/card-requests/{too_big}/transitions",
                          json={"state": "PRINTED"})
        await bad_request(region, "POST", f"/v1/ops/settlement/runs/{too_big}/payout-files",
                          json={})
        # Ids in other scripts' digits are not ids: no route (404), as for any non-number.
        async with region.get("/v1/ops/partners/%D9%A3/settlement") as reply:
            assert reply.status == 404 and "error" in await reply.json()
        async with region.get("/v1/ops/partners/1/settlement") as reply:
            assert reply.status == 200


@pytest.mark.parametrize("query", ["to=0001-01-05", "to=0001-01-01", "from=9999-12-25&to=9999-12-31",
                                   "to=9999-12-31", "from=1999-12-31&to=2000-01-05"])
async def test_dates_outside_a_sane_range_are_a_400(ops_client, query, no_internal_errors):
    async with ops_client(REGION) as region:
        error = await bad_request(region, "GET", f"/v1/ops/partners/1/settlement?{query}")
        assert "2000-01-01" in error
        for kind in ("volumes", "declines", "funds"):
            await bad_request(region, "GET", f"/v1/ops/reports/{kind}?{query}")


async def test_dates_in_bodies_are_bounded_too(ops_client, conn, no_internal_errors):
    async with ops_client(REGION) as region:
        for day in ("0001-01-01", "9999-12-31"):
            await bad_request(region, "POST", "/v1/ops/settlement/runs", json={"through_day": day})
    assert await conn.fetchval("SELECT count(*) FROM settlement_runs") == 0


async def test_nul_characters_in_paths_and_queries_are_a_400(ops_client, no_internal_errors):
    async with ops_client(REGION) as region:
        for method, path in (("POST", "/v1/ops/accounts/ab%00c/disable"),
                             ("POST", "/v1/ops/accounts/ab%00c/reset-password"),
                             ("GET", "/v1/ops/cards/HDF%000005"),
                             ("GET", "/v1/ops/card-requests?state=%00"),
                             ("GET", "/v1/ops/card-requests?dossier_number=HDF%00"),
                             ("POST", f"/v1/ops/school-years/{YEAR}/renewals/file?establishment=%00"),
                             ("GET", "/v1/ops/partners/near?lat=1&lon=1&limit=%D9%A3"),
                             ("GET", "/v1/ops/partners/near?lat=nan&lon=1")):
            await bad_request(region, method, path)


async def test_verifying_the_audit_trail_does_not_grow_it(ops_client, conn, no_internal_errors):
    for role in (Role.AUDITOR, REGION):
        async with ops_client(role) as session:
            before = await conn.fetchval("SELECT count(*) FROM audit_log")
            for _ in range(3):
                async with session.get("/v1/ops/audit/verify") as reply:
                    assert reply.status == 200 and (await reply.json())["intact"] is True
            assert await conn.fetchval("SELECT count(*) FROM audit_log") == before


async def test_a_refused_login_is_logged_masked(ops_client, caplog):
    caplog.set_level(logging.INFO, logger="hdfpay.operators")
    passphrase = "correct-horse-battery"     # looks like a login: typed in the wrong field
    async with ops_client(None) as anonymous:
        async with anonymous.post("/v1/ops/login", json={"login": passphrase,
                                                         "password": "whatever"}) as reply:
            assert reply.status == 401
    refused = [r for r in caplog.records if r.getMessage() == "operator login refused"]
    assert len(refused) == 1
    assert refused[0].fields["login"] == f"co...({len(passphrase)} chars)"
    for record in caplog.records:
        assert "horse" not in str(vars(record)) and "horse" not in record.getMessage()
