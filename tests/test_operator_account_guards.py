"""What one region operator's token cannot do alone: reset their own password (which would skip
the current-password check of POST /v1/ops/password), or disable the region's last other active
region operator. And a lock by failed logins ends the account's open sessions: whoever holds one
may be the one guessing."""

from __future__ import annotations

import asyncio

import pytest

from backoffice.operator_auth import Role
from ledger import operators
from ledger.operators import LOGIN_FAILURES_BEFORE_LOCK
from operator_fixtures import add_test_operator

from test_operator_auth import REFUSED, call, login

REGION = Role.REGION_OPERATOR


async def test_a_region_operator_cannot_reset_their_own_password(ops_server, dsn):
    me, token, password = await add_test_operator(dsn, REGION)
    other, other_token, _ = await add_test_operator(dsn, REGION)
    status, body = await call(ops_server, "POST", f"/v1/ops/accounts/{me.login}/reset-password",
                              token)
    assert status == 409 and "/v1/ops/password" in body["error"]
    assert (await call(ops_server, "GET", "/v1/ops/me", token))[0] == 200     # nothing changed
    assert (await login(ops_server, me.login, password))[0] == 200
    status, body = await call(ops_server, "POST",
                              f"/v1/ops/accounts/{me.login}/reset-password", other_token)
    assert status == 200 and body["provisional_password"]                     # another may


async def test_the_last_other_active_region_operator_cannot_be_disabled(ops_server, dsn):
    first, first_token, _ = await add_test_operator(dsn, REGION)
    second, _, _ = await add_test_operator(dsn, REGION)
    staff, _, _ = await add_test_operator(dsn, Role.ESTABLISHMENT_STAFF)
    disable = f"/v1/ops/accounts/{second.login}/disable"
    status, body = await call(ops_server, "POST", disable, first_token)
    assert status == 409 and "region operator" in body["error"]
    assert (await call(ops_server, "POST", f"/v1/ops/accounts/{staff.login}/disable",
                       first_token))[0] == 200                      # other roles: no such floor
    third, _, _ = await add_test_operator(dsn, REGION)
    assert (await call(ops_server, "POST", disable, first_token))[0] == 200
    status, _ = await call(ops_server, "POST", f"/v1/ops/accounts/{third.login}/disable",
                           first_token)
    assert status == 409


async def test_two_region_operators_disabling_each_other_at_once_leave_one_other(ops_server,
                                                                                 dsn, conn):
    """A disables B while C disables A: each alone keeps another; both would leave C alone."""
    a, a_token, _ = await add_test_operator(dsn, REGION)
    b, _, _ = await add_test_operator(dsn, REGION)
    c, c_token, _ = await add_test_operator(dsn, REGION)
    answers = await asyncio.gather(
        call(ops_server, "POST", f"/v1/ops/accounts/{b.login}/disable", a_token),
        call(ops_server, "POST", f"/v1/ops/accounts/{a.login}/disable", c_token))
    assert sorted(status for status, _ in answers) == [200, 409]
    assert await conn.fetchval("SELECT count(*) FROM operators WHERE role = 'region_operator'"
                               " AND NOT disabled") == 2


async def test_the_command_line_cannot_disable_the_last_region_operator(dsn, conn):
    only, _, _ = await add_test_operator(dsn, REGION)
    with pytest.raises(operators.OperatorConflict, match="region operator"):
        await operators.disable_operator(conn, actor="cli:root", login_name=only.login)


async def test_a_lock_by_failed_logins_ends_the_open_sessions(ops_server, dsn):
    account, token, password = await add_test_operator(dsn, REGION)
    for _ in range(LOGIN_FAILURES_BEFORE_LOCK - 1):
        assert await login(ops_server, account.login, "wrong-password") == REFUSED
    assert (await call(ops_server, "GET", "/v1/ops/me", token))[0] == 200    # not locked yet
    assert await login(ops_server, account.login, "wrong-password") == REFUSED
    assert (await call(ops_server, "GET", "/v1/ops/me", token))[0] == 401


async def test_a_lock_by_wrong_current_passwords_ends_the_session_that_tried(ops_server, dsn):
    account, token, password = await add_test_operator(dsn, REGION)
    change = {"current_password": "not the password", "new_password": "a brand new passphrase"}
    for _ in range(LOGIN_FAILURES_BEFORE_LOCK - 1):
        assert (await call(ops_server, "POST", "/v1/ops/password", token, change))[0] == 400
    assert (await call(ops_server, "GET", "/v1/ops/me", token))[0] == 200
    assert (await call(ops_server, "POST", "/v1/ops/password", token, change))[0] == 400
    assert (await call(ops_server, "GET", "/v1/ops/me", token))[0] == 401
