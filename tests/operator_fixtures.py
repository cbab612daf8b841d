"""Fixtures for the operator API (a pytest plugin, registered in conftest.py): the operator
listener of the test server, and authenticated sessions on it for any role.

    async def test_something(ops_client):
        async with ops_client(Role.PARTNER, partner_id=1) as session:
            async with session.get("/v1/ops/me") as reply: ...
        async with ops_client(None) as anonymous: ...          # no token: expect 401

Each authenticated client is a freshly created account (login `test-<role>-<n>`, its password
already changed, so no password change is due) with a session opened directly in the ledger:
no argon2 work on the way. Creating it appends one `operator.create` row to the audit trail
(actor "test:ops_client"). Staff default to establishment 1, partners to partner 1.
"""

from __future__ import annotations

import contextlib
import itertools
import secrets
from typing import AsyncIterator

import aiohttp
import asyncpg
import pytest
from argon2 import PasswordHasher

from backoffice.operator_auth import Role
from ledger.operators import create_operator, open_session

FIXTURE_ACTOR = "test:ops_client"
# Test accounts never log in with their password: the cheapest argon2id parameters will do.
CHEAP_HASHER = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
_logins = itertools.count(1)


@pytest.fixture
def ops_server(server) -> str:
    """Base URL of the running test server's operator listener (on the test's database)."""
    return server.ops_url


async def add_test_operator(dsn: str, role: Role, *, establishment_id: int | None = None,
                            partner_id: int | None = None, password: str | None = None):
    """A new enabled account of `role` with a session; returns (account, token, password)."""
    if role is Role.ESTABLISHMENT_STAFF and establishment_id is None:
        establishment_id = 1
    if role is Role.PARTNER and partner_id is None:
        partner_id = 1
    password = password or secrets.token_urlsafe(16)
    conn = await asyncpg.connect(dsn)
    try:
        account, _ = await create_operator(
            conn, actor=FIXTURE_ACTOR, login=f"test-{role.value.replace('_', '-')}-{next(_logins)}",
            role=role.value, establishment_id=establishment_id, partner_id=partner_id,
            password=password, hasher=CHEAP_HASHER)
        session = await open_session(conn, account.id)
    finally:
        await conn.close()
    return account, session.token, password


@pytest.fixture
def ops_client(ops_server: str, dsn: str):
    """ops_client(role, establishment_id=None, partner_id=None) → for `async with`: an
    aiohttp.ClientSession on the operator listener (base_url set, paths like "/v1/ops/me"),
    with a bearer token of a new account of that role; role None: no token at all."""
    @contextlib.asynccontextmanager
    async def make(role: Role | None, establishment_id: int | None = None,
                   partner_id: int | None = None) -> AsyncIterator[aiohttp.ClientSession]:
        headers = {}
        if role is not None:
            _, token, _ = await add_test_operator(dsn, Role(role), establishment_id=establishment_id,
                                                  partner_id=partner_id)
            headers["Authorization"] = f"Bearer {token}"
        async with aiohttp.ClientSession(base_url=ops_server, headers=headers) as session:
            yield session
    return make


async def ops_call(session: aiohttp.ClientSession, method: str, path: str,
                   body=None) -> tuple[int, dict]:
    """One call of the operator API: (status, decoded JSON answer). A str body goes as CSV."""
    kwargs = ({"data": body.encode(), "headers": {"Content-Type": "text/csv"}}
              if isinstance(body, str) else {"json": body})
    async with session.request(method, path, **kwargs) as reply:
        return reply.status, await reply.json()


async def assert_roles_refused(ops_client, endpoints) -> int:
    """Each (method, path, body, allowed roles) answers 401 with no token and 403 to every role
    it does not allow, always with a JSON error. Returns how many accounts the check created
    (one audit row each), for callers that count audit rows."""
    for role in (None, *Role):
        async with ops_client(role) as session:
            for method, path, body, allowed in endpoints:
                if role in allowed:
                    continue
                status, answer = await ops_call(session, method, path, body)
                assert status == (401 if role is None else 403), (role, method, path, answer)
                assert "error" in answer
    return len(Role)
