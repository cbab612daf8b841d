"""Operator accounts in the ledger and from the CLI: every login refusal costs the same argon2
work, hashes are argon2id and redone when the parameters change, sessions are bounded, the
database keeps roles and scopes straight, and `hdfpay operators` / `hdfpay audit verify` as a
user runs them (audited as cli:<unix user>)."""

from __future__ import annotations

import asyncio
import os
import pwd
import subprocess
import sys

import asyncpg
import pytest
from argon2 import PasswordHasher, extract_parameters

from ledger import operators
from ledger.operators import (LOGIN_FAILURES_BEFORE_LOCK, MAX_ACTIVE_SESSIONS_PER_OPERATOR,
                              LoginRefused, OperatorConflict, OperatorError, UnknownOperator)

CLI_TIMEOUT_S = 60
UNIX_USER = pwd.getpwuid(os.geteuid()).pw_name


class CountingHasher(PasswordHasher):
    """Cheap argon2id that records every hash it verifies against."""

    def __init__(self, **costs) -> None:
        super().__init__(**({"time_cost": 1, "memory_cost": 8, "parallelism": 1} | costs))
        self.verified: list = []

    def verify(self, hash, password) -> bool:
        self.verified.append(hash)
        return super().verify(hash, password)


def _password(login: str) -> str:
    return f"long password of {login[::-1]}"      # a password may not contain the login


async def _account(conn, login: str, hasher: PasswordHasher, role: str = "auditor"):
    account, _ = await operators.create_operator(conn, actor="test:setup", login=login, role=role,
                                                 password=_password(login), hasher=hasher)
    return account


async def test_every_refusal_costs_one_verification_with_the_same_parameters(conn):
    hasher = CountingHasher()
    await _account(conn, "carol", hasher)
    await _account(conn, "dave", hasher)
    await operators.disable_operator(conn, actor="test:setup", login_name="dave")
    for _ in range(LOGIN_FAILURES_BEFORE_LOCK):
        with pytest.raises(LoginRefused):
            await operators.login(conn, "carol", "wrong", hasher)
    hasher.verified.clear()
    for login_name, password in [("carol", _password("carol")),     # locked
                                 ("dave", _password("dave")),       # disabled
                                 ("nobody", "whatever"), ("Not A Login!", "x"),
                                 ("carol", "x" * 1000)]:                # above the maximum
        with pytest.raises(LoginRefused, match="^invalid login or password$"):
            await operators.login(conn, login_name, password, hasher)
    own = extract_parameters(hasher.hash("x"))
    assert [extract_parameters(h) for h in hasher.verified] == [own] * 5


async def test_parallel_guesses_past_the_limit_never_reach_the_real_hash(dsn, conn):
    """Each attempt is charged before its check: of 20 simultaneous guesses, 5 are checked
    against the password, the others only against the dummy."""
    hasher = CountingHasher()
    account = await _account(conn, "lena", hasher)
    real = await conn.fetchval("SELECT password_hash FROM operators WHERE id = $1", account.id)
    hasher.verified.clear()
    async with asyncpg.create_pool(dsn, min_size=20, max_size=20) as pool:
        async def guess(n: int) -> None:
            async with pool.acquire() as guesser:
                with pytest.raises(LoginRefused):
                    await operators.login(guesser, "lena", f"guess number {n}", hasher)
        await asyncio.gather(*(guess(n) for n in range(20)))
    assert len(hasher.verified) == 20
    assert hasher.verified.count(real) == LOGIN_FAILURES_BEFORE_LOCK


async def test_hashes_are_argon2id_and_redone_when_the_parameters_change(conn):
    weak, stronger = CountingHasher(), CountingHasher(time_cost=2, memory_cost=16)
    account = await _account(conn, "erin", weak)
    stored = lambda: conn.fetchval("SELECT password_hash FROM operators WHERE id = $1", account.id)
    assert (await stored()).startswith("$argon2id$v=19$m=8,t=1,p=1$")
    with pytest.raises(LoginRefused):
        await operators.login(conn, "erin", "wrong password", stronger)
    assert (await stored()).startswith("$argon2id$v=19$m=8,t=1,p=1$")
    await operators.login(conn, "erin", _password("erin"), stronger)
    assert (await stored()).startswith("$argon2id$v=19$m=16,t=2,p=1$")
    await operators.login(conn, "erin", _password("erin"), stronger)   # and still right


async def test_an_operator_keeps_a_bounded_number_of_sessions(conn):
    account = await _account(conn, "frank", CountingHasher())
    sessions = [await operators.open_session(conn, account.id)
                for _ in range(MAX_ACTIVE_SESSIONS_PER_OPERATOR + 1)]
    assert await operators.resolve_session(conn, sessions[0].token) is None
    assert all([await operators.resolve_session(conn, s.token) for s in sessions[1:]])
    await operators.open_session(conn, account.id)          # the revoked one is cleared away
    assert await conn.fetchval("SELECT count(*) FROM operator_sessions WHERE operator_id = $1",
                               account.id) == MAX_ACTIVE_SESSIONS_PER_OPERATOR + 1


async def test_the_database_keeps_roles_and_scopes_straight(conn):
    hasher = CountingHasher()
    insert = ("INSERT INTO operators (login, role, establishment_id, partner_id, password_hash)"
              " VALUES ($1, $2, $3, $4, '$argon2id$v=19$m=8,t=1,p=1$x$y')")
    for row in [("g1", "establishment_staff", None, None), ("g2", "partner", None, None),
                ("g3", "auditor", 1, None), ("g4", "region_operator", None, 1)]:
        with pytest.raises(asyncpg.CheckViolationError):
            await conn.execute(insert, "x" + row[0], *row[1:])
    with pytest.raises(asyncpg.CheckViolationError):
        await conn.execute("INSERT INTO operators (login, role, password_hash)"
                           " VALUES ('gina', 'auditor', 'plain-text')")
    staff = await _account(conn, "gina", hasher, role="auditor")
    for change in ["role = 'region_operator'", "partner_id = 1", "login = 'gina2'"]:
        with pytest.raises(asyncpg.IntegrityConstraintViolationError, match="cannot change"):
            await conn.execute(f"UPDATE operators SET {change} WHERE id = $1", staff.id)
    with pytest.raises(asyncpg.IntegrityConstraintViolationError, match="never deleted"):
        await conn.execute("DELETE FROM operators WHERE id = $1", staff.id)
    await operators.disable_operator(conn, actor="test:setup", login_name="gina")
    with pytest.raises(asyncpg.IntegrityConstraintViolationError, match="disabled"):
        await conn.execute("UPDATE operators SET disabled = false WHERE id = $1", staff.id)
    for kwargs, error, message in [
            ({"login": "gina", "role": "auditor"}, OperatorConflict, "taken"),
            ({"login": "hal", "role": "establishment_staff", "establishment_id": 999},
             OperatorError, "no establishment 999"),
            ({"login": "hal", "role": "partner"}, OperatorError, "needs a partner"),
            ({"login": "hal", "role": "auditor", "partner_id": 1}, OperatorError, "needs a partner"),
            ({"login": "hal", "role": "superuser"}, OperatorError, "unknown role"),
            ({"login": "H", "role": "auditor"}, OperatorError, "a login is")]:
        with pytest.raises(error, match=message):
            await operators.create_operator(conn, actor="test:setup", hasher=hasher, **kwargs)
    with pytest.raises(UnknownOperator):
        await operators.reset_password(conn, actor="test:setup", login_name="nobody")


def hdfpay(dsn: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hdfpay.cli", *args], capture_output=True,
                          text=True, timeout=CLI_TIMEOUT_S, stdin=subprocess.DEVNULL,
                          env={**os.environ, "DATABASE_URL": dsn})


def test_the_commands_have_help():
    for command in [("operators",), ("operators", "add"), ("operators", "list"),
                    ("operators", "disable"), ("operators", "reset-password"), ("audit",),
                    ("audit", "verify")]:
        result = subprocess.run([sys.executable, "-m", "hdfpay.cli", *command, "--help"],
                                capture_output=True, text=True, timeout=CLI_TIMEOUT_S)
        assert result.returncode == 0 and "usage: hdfpay" in result.stdout


async def test_operators_from_the_command_line(dsn, conn):
    added = hdfpay(dsn, "operators", "add", "ines", "--role", "establishment_staff",
                   "--establishment", "4")
    assert added.returncode == 0, added.stderr
    assert "establishment_staff, establishment 4" in added.stdout
    provisional = added.stdout.split("provisional password")[1].split()[0]
    session = await operators.login(conn, "ines", provisional)
    assert session.account.must_change_password
    for args, message in [(("add", "ines", "--role", "auditor"), "taken"),
                          (("add", "joe", "--role", "establishment_staff"), "need an establishment"),
                          (("disable", "nobody"), "no operator nobody")]:
        refused = hdfpay(dsn, "operators", *args)
        assert refused.returncode == 2 and message in refused.stderr and not refused.stdout
    listed = hdfpay(dsn, "operators", "list").stdout
    assert "ines" in listed and "password change due" in listed and "1 account(s)" in listed
    reset = hdfpay(dsn, "operators", "reset-password", "ines")
    assert reset.returncode == 0 and provisional not in reset.stdout
    assert await operators.resolve_session(conn, session.token) is None
    with pytest.raises(LoginRefused):
        await operators.login(conn, "ines", provisional)
    assert hdfpay(dsn, "operators", "disable", "ines").returncode == 0
    assert "disabled" in hdfpay(dsn, "operators", "list").stdout
    actions = await conn.fetch("SELECT actor, action FROM audit_log ORDER BY id")
    assert [tuple(row) for row in actions] == [
        (f"cli:{UNIX_USER}", "operator.create"), ("establishment_staff:ines", "operator.login"),
        (f"cli:{UNIX_USER}", "operator.password_reset"), ("anonymous", "operator.login_refused"),
        (f"cli:{UNIX_USER}", "operator.disable")]
    everything = " ".join(str(v) for row in await conn.fetch("SELECT * FROM audit_log") for v in row)
    assert provisional not in everything and "argon2" not in everything


async def test_audit_verify_from_the_command_line_finds_tampering(dsn, conn):
    for login in ("kim", "lou"):
        assert hdfpay(dsn, "operators", "add", login, "--role", "auditor").returncode == 0
    intact = hdfpay(dsn, "audit", "verify")
    assert intact.returncode == 0 and "rows  2" in intact.stdout and "audit trail intact" in intact.stdout
    head = intact.stdout.split("hash ")[1].split()[0]
    assert await conn.fetchval("SELECT count(*) FROM audit_log") == 2      # verifying is a read
    # Someone with the table owner's rights removes the last row and resets the head.
    await conn.execute("ALTER TABLE audit_log DISABLE TRIGGER audit_log_append_only")
    await conn.execute("ALTER TABLE audit_head DISABLE TRIGGER audit_head_follows_the_log")
    await conn.execute("DELETE FROM audit_log WHERE id = 2")
    await conn.execute("UPDATE audit_head SET last_id = 1,"
                       " last_hash = (SELECT row_hash FROM audit_log WHERE id = 1)")
    assert hdfpay(dsn, "audit", "verify").returncode == 0               # the chain alone agrees
    anchored = hdfpay(dsn, "audit", "verify", "--expect-head", head)
    assert anchored.returncode == 1 and "no longer in the trail" in anchored.stdout
    await conn.execute("DELETE FROM audit_log WHERE id = 1")
    broken = hdfpay(dsn, "audit", "verify")
    assert broken.returncode == 1, broken.stderr
    assert "the head says row 1" in broken.stdout and "NOT intact" in broken.stdout
