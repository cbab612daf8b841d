"""Operator authentication on the operator listener: login (one answer for every refusal), the
lock after repeated failures, sessions that expire and end, disabled accounts, the provisional
password flow, the role matrix, audited account changes, and passwords kept out of logs and audit.
The clock is pinned (business_now()) to cross the lock and session edges: no sleeping."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging

import aiohttp

from backoffice.areas import openapi_document
from backoffice.operator_auth import Role
from ledger.audit import verify_audit
from ledger.clock import pin_clock
from ledger.operators import LOGIN_FAILURES_BEFORE_LOCK, LOGIN_LOCK_MS, SESSION_LIFETIME_MS
from operator_fixtures import add_test_operator

from conftest import SCHOOL_DAY

REFUSED = (401, {"error": "invalid login or password"})
REGION, STAFF, PARTNER, AUDITOR = (Role.REGION_OPERATOR, Role.ESTABLISHMENT_STAFF, Role.PARTNER,
                                   Role.AUDITOR)
# Who may call each of this module's endpoints; every other role must get 403.
ALLOWED = {
    ("get", "/v1/ops/me"): set(Role),
    ("post", "/v1/ops/logout"): set(Role),
    ("post", "/v1/ops/password"): set(Role),
    ("get", "/v1/ops/accounts"): {REGION, AUDITOR},
    ("post", "/v1/ops/accounts"): {REGION},
    ("post", "/v1/ops/accounts/{login}/disable"): {REGION},
    ("post", "/v1/ops/accounts/{login}/reset-password"): {REGION},
    ("get", "/v1/ops/audit/verify"): {REGION, AUDITOR},
}


async def call(url: str, method: str, path: str, token: str | None = None,
               json: dict | None = None) -> tuple[int, dict | None]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with aiohttp.ClientSession(base_url=url, headers=headers) as session:
        async with session.request(method, path, json=json) as reply:
            body = await reply.json() if reply.status != 204 else None
            return reply.status, body


async def login(url: str, login_name: str, password: str) -> tuple[int, dict]:
    return await call(url, "POST", "/v1/ops/login", json={"login": login_name, "password": password})


async def token_of(url: str, login_name: str, password: str) -> str:
    status, body = await login(url, login_name, password)
    assert status == 200, body
    return body["token"]


def at(ms_after_school_day: int) -> dt.datetime:
    return SCHOOL_DAY + dt.timedelta(milliseconds=ms_after_school_day)


async def test_login_gives_a_token_and_every_refusal_the_same_answer(ops_server, dsn):
    account, _, password = await add_test_operator(dsn, AUDITOR)
    status, body = await login(ops_server, account.login, password)
    assert status == 200 and body["token_type"] == "Bearer" and len(body["token"]) == 43
    assert body["operator"]["login"] == account.login and body["must_change_password"] is False
    assert dt.datetime.fromisoformat(body["expires_at"]) == at(SESSION_LIFETIME_MS)
    assert (await login(ops_server, account.login.upper(), password))[0] == 200   # case-blind
    assert await login(ops_server, account.login, password + "x") == REFUSED
    assert await login(ops_server, "nobody-here", password) == REFUSED
    assert await login(ops_server, "Not A Login!", password) == REFUSED
    assert await login(ops_server, account.login, "x" * 10_000) == REFUSED
    assert (await call(ops_server, "POST", "/v1/ops/login", json={"login": account.login}))[0] == 400


async def test_five_failures_lock_the_account_until_the_lock_time_is_over(ops_server, dsn, conn):
    account, _, password = await add_test_operator(dsn, REGION)
    for _ in range(LOGIN_FAILURES_BEFORE_LOCK - 1):
        assert await login(ops_server, account.login, "wrong-password") == REFUSED
    assert (await login(ops_server, account.login, password))[0] == 200     # a success resets
    for _ in range(LOGIN_FAILURES_BEFORE_LOCK):
        assert await login(ops_server, account.login, "wrong-password") == REFUSED
    assert await login(ops_server, account.login, password) == REFUSED      # right, but locked
    assert await conn.fetchval("SELECT locked_until FROM operators WHERE id = $1",
                               account.id) == at(LOGIN_LOCK_MS)
    await pin_clock(conn, at(LOGIN_LOCK_MS - 1))
    assert await login(ops_server, account.login, password) == REFUSED
    await pin_clock(conn, at(LOGIN_LOCK_MS))
    assert (await login(ops_server, account.login, password))[0] == 200
    assert await conn.fetchval("SELECT failed_logins FROM operators WHERE id = $1", account.id) == 0


async def test_a_burst_of_parallel_guesses_gets_no_more_than_the_allowed_tries(ops_server, dsn,
                                                                              conn):
    account, _, password = await add_test_operator(dsn, REGION)
    guesses = [login(ops_server, account.login, f"guess-{n:04d}-wrong") for n in range(20)]
    assert all(answer == REFUSED for answer in await asyncio.gather(*guesses))
    assert await conn.fetchval("SELECT failed_logins FROM operators WHERE id = $1",
                               account.id) == LOGIN_FAILURES_BEFORE_LOCK
    assert await login(ops_server, account.login, password) == REFUSED


async def test_a_session_expires_and_logout_ends_it(ops_server, dsn, conn):
    account, _, password = await add_test_operator(dsn, PARTNER)
    first, second = [await token_of(ops_server, account.login, password) for _ in range(2)]
    assert (await call(ops_server, "GET", "/v1/ops/me", first))[0] == 200
    assert await call(ops_server, "POST", "/v1/ops/logout", first) == (204, None)
    assert (await call(ops_server, "GET", "/v1/ops/me", first))[0] == 401
    assert (await call(ops_server, "GET", "/v1/ops/me", second))[0] == 200   # the other lives on
    await pin_clock(conn, at(SESSION_LIFETIME_MS - 1))
    assert (await call(ops_server, "GET", "/v1/ops/me", second))[0] == 200
    await pin_clock(conn, at(SESSION_LIFETIME_MS))
    status, body = await call(ops_server, "GET", "/v1/ops/me", second)
    assert status == 401 and "bearer token" in body["error"]
    stored = await conn.fetch("SELECT token_hash FROM operator_sessions")
    assert all(bytes(row["token_hash"]) not in (first.encode(), second.encode()) for row in stored)


async def test_a_disabled_account_is_refused_at_once(ops_server, ops_client, dsn):
    account, token, password = await add_test_operator(dsn, STAFF, establishment_id=2)
    async with ops_client(REGION) as region:
        async with region.post(f"/v1/ops/accounts/{account.login}/disable") as reply:
            assert reply.status == 200 and (await reply.json())["account"]["disabled"] is True
        async with region.post(f"/v1/ops/accounts/{account.login}/disable") as reply:
            assert reply.status == 409
        async with region.post("/v1/ops/accounts/nobody-here/disable") as reply:
            assert reply.status == 404
        own = (await (await region.get("/v1/ops/me")).json())["operator"]["login"]
        async with region.post(f"/v1/ops/accounts/{own}/disable") as reply:
            assert reply.status == 409 and "your own" in (await reply.json())["error"]
    assert (await call(ops_server, "GET", "/v1/ops/me", token))[0] == 401
    assert await login(ops_server, account.login, password) == REFUSED


async def test_a_provisional_password_must_be_changed_first(ops_server, ops_client, conn):
    async with ops_client(REGION) as region:
        async with region.post("/v1/ops/accounts", json={"login": "alice.martin",
                                                         "role": "region_operator"}) as reply:
            assert reply.status == 201
            provisional = (await reply.json())["provisional_password"]
    status, body = await login(ops_server, "alice.martin", provisional)
    assert status == 200 and body["must_change_password"] is True
    token, other = body["token"], await token_of(ops_server, "alice.martin", provisional)
    status, body = await call(ops_server, "GET", "/v1/ops/accounts", token)
    assert status == 403 and "password change required" in body["error"]
    assert (await call(ops_server, "GET", "/v1/ops/me", token))[0] == 200
    change = "/v1/ops/password"
    for current, new, refusal in [(provisional, "short", "12 to 128"),
                                  (provisional, "alice.martin-2026!", "login"),
                                  (provisional, provisional, "differ"),
                                  ("not-the-current-one", "a brand new passphrase", "wrong")]:
        status, body = await call(ops_server, "POST", change, token,
                                  {"current_password": current, "new_password": new})
        assert status == 400 and refusal in body["error"], body
    assert await call(ops_server, "POST", change, token, {
        "current_password": provisional, "new_password": "a brand new passphrase"}) == (204, None)
    assert (await call(ops_server, "GET", "/v1/ops/accounts", token))[0] == 200
    assert (await call(ops_server, "GET", "/v1/ops/me", other))[0] == 401    # other sessions end
    assert await login(ops_server, "alice.martin", provisional) == REFUSED
    status, body = await login(ops_server, "alice.martin", "a brand new passphrase")
    assert status == 200 and body["must_change_password"] is False
    stored = await conn.fetchval("SELECT password_hash FROM operators WHERE login = 'alice.martin'")
    assert stored.startswith("$argon2id$v=19$m=65536,t=3,p=4$")


async def test_the_role_matrix_of_the_account_endpoints(ops_client):
    document = openapi_document()
    for (method, path), allowed in ALLOWED.items():
        documented = document["paths"][path][method]["x-roles"]
        assert set(documented or Role) == allowed, (method, path)
    async with ops_client(None) as anonymous, ops_client(REGION) as region, \
            ops_client(STAFF) as staff, ops_client(PARTNER) as partner, \
            ops_client(AUDITOR) as auditor:
        sessions = {REGION: region, STAFF: staff, PARTNER: partner, AUDITOR: auditor}
        for (method, path), allowed in ALLOWED.items():
            url = path.format(login="nobody-here")
            async with anonymous.request(method, url, json={}) as reply:
                assert reply.status == 401, (method, path)
                assert reply.headers["WWW-Authenticate"].startswith("Bearer")
            async with anonymous.request(method, url, json={}, headers={
                    "Authorization": "Bearer " + "A" * 43}) as reply:
                assert reply.status == 401, (method, path)
            for role in set(Role) - allowed:
                async with sessions[role].request(method, url, json={}) as reply:
                    assert reply.status == 403, (method, path, role)
                    assert "forbidden" in (await reply.json())["error"]
            if path.startswith("/v1/ops/accounts") or path.endswith("verify"):
                for role in allowed:
                    async with sessions[role].request(method, url, json={}) as reply:
                        assert reply.status not in (401, 403), (method, path, role)


async def test_every_documented_operation_refuses_the_roles_it_does_not_list(ops_client):
    """Every area's endpoints, from the served document: 401 without a token, 403 for each role
    its x-roles leaves out (handlers call require() before reading anything else)."""
    document = openapi_document()
    async with contextlib.AsyncExitStack() as stack:
        anonymous = await stack.enter_async_context(ops_client(None))
        clients = {role: await stack.enter_async_context(ops_client(role)) for role in Role}
        for path, item in document["paths"].items():
            url = "/".join("1" if part.startswith("{") else part for part in path.split("/"))
            for method, operation in item.items():
                if method == "parameters" or operation.get("security") == []:
                    continue
                async with anonymous.request(method, url, json={}) as reply:
                    assert reply.status == 401, (method, path)
                for role in set(Role) - set(operation["x-roles"] or Role):
                    async with clients[role].request(method, url, json={}) as reply:
                        assert reply.status == 403, (method, path, role)


async def test_account_changes_are_audited_without_secrets(ops_server, ops_client, conn, caplog):
    caplog.set_level(logging.DEBUG)
    async with ops_client(REGION) as region:
        me = (await (await region.get("/v1/ops/me")).json())["operator"]["login"]
        async with region.post("/v1/ops/accounts", json={
                "login": "bob", "role": "partner", "partner_id": 3}) as reply:
            provisional = (await reply.json())["provisional_password"]
        token = await token_of(ops_server, "bob", provisional)
        await call(ops_server, "POST", "/v1/ops/password", token,
                   {"current_password": provisional, "new_password": "correct horse battery"})
        await login(ops_server, "bob", "a wrong password for bob")
        await login(ops_server, "Typed In The Login Field 42!", "x")    # a password, misplaced
        async with region.post("/v1/ops/accounts/bob/reset-password") as reply:
            reset = (await reply.json())["provisional_password"]
        async with region.post("/v1/ops/accounts/bob/disable") as reply:
            assert reply.status == 200
        async with region.get("/v1/ops/audit/verify") as reply:
            report = await reply.json()
    rows = await conn.fetch("SELECT actor, action, subject, before::text, after::text"
                            " FROM audit_log ORDER BY id")
    assert [(r["actor"], r["action"], r["subject"]) for r in rows[1:]] == [
        (f"region_operator:{me}", "operator.create", "operator:bob"),
        ("partner:bob", "operator.login", "operator:bob"),
        ("partner:bob", "operator.password", "operator:bob"),
        ("anonymous", "operator.login_refused", "operator:bob"),
        ("anonymous", "operator.login_refused", "operator:unknown"),
        (f"region_operator:{me}", "operator.password_reset", "operator:bob"),
        (f"region_operator:{me}", "operator.disable", "operator:bob")]   # verifying: no row
    assert report == {"intact": True, "rows": 8, "head_id": 8, "head_hash": report["head_hash"],
                      "problems": []}
    everything = " ".join(str(value) for row in rows for value in row) + caplog.text
    hashes = [h for (h,) in await conn.fetch("SELECT password_hash FROM operators")]
    for secret in [provisional, "correct horse battery", "a wrong password for bob", reset,
                   "Typed In The Login Field", *hashes, "$argon2"]:
        assert secret not in everything
    assert "operator login refused" in caplog.text      # the logs did see the attempts


async def test_the_verify_endpoint_reports_tampering(ops_client, conn):
    async with ops_client(AUDITOR) as auditor:
        await conn.execute("ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only")
        await conn.execute("UPDATE audit_log SET actor = 'test:someone-else' WHERE id = 1")
        await conn.execute("ALTER TABLE audit_log ENABLE TRIGGER audit_log_append_only")
        async with auditor.get("/v1/ops/audit/verify") as reply:
            report = await reply.json()
    assert reply.status == 200 and report["intact"] is False
    assert report["problems"] == ["row 1: content altered (hash mismatch)"]
    assert not (await verify_audit(conn)).intact


async def test_operator_errors_are_json(ops_server):
    for method, path, status in [("GET", "/v1/ops/nothing-here", 404), ("DELETE", "/v1/ops/me", 405),
                                 ("GET", "/v1/ops/login", 405)]:
        got, body = await call(ops_server, method, path)
        assert got == status and isinstance(body["error"], str)
    async with aiohttp.ClientSession() as session:
        async with session.post(ops_server + "/v1/ops/login", data=b"{not json") as reply:
            assert reply.status == 400 and "JSON" in (await reply.json())["error"]
        async with session.post(ops_server + "/v1/ops/login", data=b"x" * 100_000) as reply:
            assert reply.status == 413 and "error" in await reply.json()
