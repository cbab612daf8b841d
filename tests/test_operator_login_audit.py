"""Logins, refused logins and logouts of operators are in the audit trail (issue 14 §2), from
the API and from the back office's pages, without a password and with a login that names no
account kept masked; and `hdfpay keys new-bdk` is audited."""

from __future__ import annotations

import os
import subprocess
import sys

import aiohttp
import pytest
from argon2 import PasswordHasher
from yarl import URL

from ledger import operators
from ledger.audit import verify_audit
from ledger.operators import LOGIN_FAILURES_BEFORE_LOCK, LoginRefused

CHEAP = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
PASSWORD = "a long password for the trail"
TYPED_BY_MISTAKE = "my secret passphrase"
COMMAND_TIMEOUT_S = 120


async def _trail(conn, since: int = 0) -> list[tuple]:
    rows = await conn.fetch("SELECT actor, action, subject, after FROM audit_log WHERE id > $1"
                            " AND action LIKE 'operator.log%' ORDER BY id", since)
    return [(r["actor"], r["action"], r["subject"], r["after"]) for r in rows]


async def _last_id(conn) -> int:
    return await conn.fetchval("SELECT coalesce(max(id), 0) FROM audit_log")


async def test_logins_refusals_and_logouts_are_audited(conn):
    await operators.create_operator(conn, actor="test:setup", login="gina", role="auditor",
                                    password=PASSWORD, hasher=CHEAP)
    await operators.create_operator(conn, actor="test:setup", login="hugo", role="auditor",
                                    password=PASSWORD, hasher=CHEAP)
    await operators.disable_operator(conn, actor="test:setup", login_name="hugo")
    since = await _last_id(conn)
    attempts = [("gina", "wrong password"), (TYPED_BY_MISTAKE, PASSWORD), ("hugo", PASSWORD),
                ("gina", "x" * 1000)]
    for login_name, password in attempts:
        with pytest.raises(LoginRefused):
            await operators.login(conn, login_name, password, CHEAP)
    session = await operators.login(conn, "Gina", PASSWORD, CHEAP)
    await operators.logout(conn, session)
    await operators.logout(conn, session)                  # ended already: nothing more
    refused = '{"via": "api", "reason": "%s"}'
    assert await _trail(conn, since) == [
        ("anonymous", "operator.login_refused", "operator:gina", refused % "wrong password"),
        ("anonymous", "operator.login_refused", "operator:unknown",
         '{"via": "api", "login": "my...(20 chars)", "reason": "unknown login"}'),
        ("anonymous", "operator.login_refused", "operator:hugo", refused % "account disabled"),
        ("anonymous", "operator.login_refused", "operator:gina",
         refused % "password over the maximum length"),
        ("auditor:gina", "operator.login", "operator:gina",
         '{"via": "api", "session_id": %d}' % session.id),
        ("auditor:gina", "operator.logout", "operator:gina",
         '{"via": "api", "session_id": %d}' % session.id)]
    everything = " ".join(str(v) for row in await conn.fetch("SELECT * FROM audit_log") for v in row)
    assert PASSWORD not in everything and TYPED_BY_MISTAKE not in everything
    assert "wrong password" not in everything.replace('"reason": "wrong password"', "")
    assert (await verify_audit(conn)).intact


async def test_the_failure_that_locks_and_the_locked_account_are_told_apart(conn):
    await operators.create_operator(conn, actor="test:setup", login="iris", role="auditor",
                                    password=PASSWORD, hasher=CHEAP)
    since = await _last_id(conn)
    for _ in range(LOGIN_FAILURES_BEFORE_LOCK + 1):
        with pytest.raises(LoginRefused):
            await operators.login(conn, "iris", "wrong", CHEAP)
    reasons = [after for *_, after in await _trail(conn, since)]
    assert [r.split('"reason": ')[1] for r in reasons] == (
        ['"wrong password"}'] * (LOGIN_FAILURES_BEFORE_LOCK - 1)
        + ['"wrong password, account now locked"}', '"account locked"}'])


async def test_the_api_and_the_pages_audit_their_channel(ops_server, conn):
    await operators.create_operator(conn, actor="test:setup", login="jade", role="auditor",
                                    password=PASSWORD, hasher=CHEAP)
    since = await _last_id(conn)
    async with aiohttp.ClientSession(base_url=ops_server) as api:
        async with api.post("/v1/ops/login", json={"login": "jade", "password": "nope"}) as reply:
            assert reply.status == 401
        async with api.post("/v1/ops/login", json={"login": "jade", "password": PASSWORD}) as reply:
            token = (await reply.json())["token"]
        async with api.post("/v1/ops/logout", headers={"Authorization": f"Bearer {token}"}) as reply:
            assert reply.status == 204
    jar = aiohttp.CookieJar(unsafe=True)
    jar.update_cookies({"hdf_csrf": "t"}, URL(ops_server))
    async with aiohttp.ClientSession(base_url=ops_server, cookie_jar=jar) as browser:
        form = {"csrf_token": "t", "identifiant": "jade", "mot_de_passe": PASSWORD}
        async with browser.post("/bureau/connexion", data=form, allow_redirects=False) as reply:
            assert reply.status == 303
        async with browser.post("/bureau/deconnexion", data={"csrf_token": "t"},
                                allow_redirects=False) as reply:
            assert reply.status == 303
    assert [(actor, action, after.split(",")[0]) for actor, action, _, after in
            await _trail(conn, since)] == [
        ("anonymous", "operator.login_refused", '{"via": "api"'),
        ("auditor:jade", "operator.login", '{"via": "api"'),
        ("auditor:jade", "operator.logout", '{"via": "api"'),
        ("auditor:jade", "operator.login", '{"via": "bureau"'),
        ("auditor:jade", "operator.logout", '{"via": "bureau"')]


async def test_a_new_bdk_is_audited(dsn, conn, tmp_path, kek_file):
    env = {**os.environ, "DATABASE_URL": dsn, "HDFPAY_HSM_BACKEND": "software",
           "HDFPAY_KEYSTORE": str(tmp_path / "keys.json"), "HDFPAY_KEYSTORE_KEK_FILE": str(kek_file)}
    made = subprocess.run([sys.executable, "-m", "hdfpay.cli", "keys", "new-bdk"], env=env,
                          capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S,
                          stdin=subprocess.DEVNULL)
    assert made.returncode == 0, made.stderr
    alias, kcv = made.stdout.split("new BDK ")[1].split()[0], made.stdout.split("KCV ")[1][:6]
    row = await conn.fetchrow("SELECT actor, subject, after FROM audit_log WHERE action = 'key.new_bdk'")
    assert row["subject"] == f"key:{alias}" and row["actor"].startswith("cli:")
    assert row["after"] == '{"kcv": "%s", "usage": "B0"}' % kcv
