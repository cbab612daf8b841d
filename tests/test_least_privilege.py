"""Least privilege in the database (issue 14 §1): the tampering an outside tester did as the
server's login, replayed as each role of the running system, is refused; and the roles are what
ledger/roles.py says (no superuser, no owner, nothing a migration forgot to take back)."""

from __future__ import annotations

import asyncpg
import pytest

from ledger import roles
from ledger.audit import append_audit
from ledger.embedded import throwaway_cluster, throwaway_workdir
from ledger.migrate import migrate
from ledger.roles import RolesMissing, ensure_roles, role_dsn

# Each statement as the tester wrote it; every runtime role must be refused each one.
TAMPERING = {
    "lost card back to active": "UPDATE cards SET status = 'ACTIVE' WHERE status = 'LOST'",
    "transfers deleted": "DELETE FROM transfers WHERE id = (SELECT min(id) FROM transfers)",
    "reload rewritten": "UPDATE transfers SET amount_cents = 65000 WHERE id = (SELECT min(id) FROM transfers)",
    "table altered": "ALTER TABLE cards ADD COLUMN backdoor text",
    "triggers disabled": "ALTER TABLE cards DISABLE TRIGGER USER",
    "replication role": "SET LOCAL session_replication_role = replica",
    "shell through COPY": "COPY (SELECT 1) TO PROGRAM 'id'",
    "operator password hashes": "SELECT password_hash FROM operators",
    "audit row rewritten": "UPDATE audit_log SET actor = 'someone else' WHERE id = 1",
    "audit truncated": "TRUNCATE audit_log",
    "clock moved": "UPDATE clock_override SET pinned_at = pinned_at + interval '1 day'",
    "role escalated": "SET ROLE hdfpay_owner",
    "seals deleted": "DELETE FROM journal_seals",
}


@pytest.fixture
async def as_role(dsn):
    opened: list[asyncpg.Connection] = []

    async def connect(role: str) -> asyncpg.Connection:
        conn = await asyncpg.connect(role_dsn(dsn, role, environ={}))
        opened.append(conn)
        return conn
    yield connect
    for conn in opened:
        await conn.close()


@pytest.mark.parametrize("role", roles.RUNTIME_ROLES)
async def test_every_tampering_is_refused_as_every_role_of_the_running_system(as_role, conn, role):
    opposed = await conn.fetchval("SELECT uid FROM cards WHERE status <> 'ACTIVE' LIMIT 1")
    await append_audit(conn, actor="test", action="card.oppose", subject="card:3")
    before = await conn.fetchval("SELECT sum(amount_cents) FROM transfers")
    session = await as_role(role)
    refused = {}
    for what, statement in TAMPERING.items():
        try:
            async with session.transaction():
                await session.execute(statement)
        except (asyncpg.InsufficientPrivilegeError, asyncpg.FeatureNotSupportedError) as exc:
            refused[what] = type(exc).__name__
    assert sorted(refused) == sorted(TAMPERING), f"{role} was allowed: {set(TAMPERING) - set(refused)}"
    assert await conn.fetchval("SELECT status FROM cards WHERE uid = $1", opposed) != "ACTIVE"
    assert await conn.fetchval("SELECT actor FROM audit_log WHERE id = 1") == "test"
    assert await conn.fetchval("SELECT sum(amount_cents) FROM transfers") == before


async def test_no_runtime_role_is_superuser_owner_or_member_of_the_owner(conn):
    rows = await conn.fetch(
        "SELECT rolname, rolsuper, rolcreaterole, rolcreatedb, rolbypassrls, rolreplication,"
        " pg_has_role(rolname, 'hdfpay_owner', 'MEMBER') AS owner_member FROM pg_roles"
        " WHERE rolname = ANY($1::text[]) ORDER BY rolname", list(roles.RUNTIME_ROLES))
    assert [r["rolname"] for r in rows] == sorted(roles.RUNTIME_ROLES)
    for row in rows:
        assert not any(row[k] for k in ("rolsuper", "rolcreaterole", "rolcreatedb",
                                        "rolbypassrls", "rolreplication", "owner_member")), row
    owned = await conn.fetch(
        "SELECT c.relname, c.relowner::regrole::text AS owner FROM pg_class c"
        " WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'v', 'S', 'p')"
        " AND c.relowner <> 'hdfpay_owner'::regrole")
    assert owned == []
    functions = await conn.fetch(
        "SELECT p.proname FROM pg_proc p WHERE p.pronamespace = 'public'::regnamespace"
        " AND p.proowner <> 'hdfpay_owner'::regrole")
    assert functions == []
    assert not await conn.fetchval("SELECT rolsuper OR rolcanlogin FROM pg_roles"
                                   " WHERE rolname = 'hdfpay_owner'")


async def test_every_security_definer_function_pins_its_search_path(conn):
    definers = await conn.fetch(
        "SELECT proname, proconfig FROM pg_proc WHERE pronamespace = 'public'::regnamespace"
        " AND prosecdef ORDER BY proname")
    assert len(definers) >= 4
    unpinned = [r["proname"] for r in definers
                if not any(c.startswith("search_path=") for c in (r["proconfig"] or []))]
    assert unpinned == []


async def test_the_terminal_role_runs_the_authorizations_and_nothing_of_the_operators(conn):
    can = dict(await conn.fetch(
        "SELECT proname, has_function_privilege('hdfpay_terminal', p.oid, 'EXECUTE')"
        " FROM pg_proc p WHERE pronamespace = 'public'::regnamespace"
        " AND proname IN ('authorize_purchase', 'authorize_reversal', 'authorize_refund',"
        " 'authorize_batch', 'server_void_purchase',"
        " 'close_terminal_batch', 'oppose_card', 'append_audit', 'reload_wallet', 'settle_through')"))
    assert can == {"authorize_purchase": True, "authorize_reversal": True, "authorize_refund": True,
                   "authorize_batch": True, "server_void_purchase": True,
                   "close_terminal_batch": True, "oppose_card": False, "append_audit": False,
                   "reload_wallet": False, "settle_through": False}
    readable = await conn.fetch(
        "SELECT c.relname FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace"
        " AND c.relkind IN ('r', 'v') AND has_table_privilege('hdfpay_terminal', c.oid, 'SELECT')"
        " ORDER BY 1")
    assert [r["relname"] for r in readable] == ["clock_override", "rules", "schema_migrations",
                                                "schema_repeatables"]


async def test_the_auditor_writes_nothing_and_reads_no_secret(conn, as_role):
    writable = await conn.fetch(
        "SELECT c.relname FROM pg_class c WHERE c.relnamespace = 'public'::regnamespace"
        " AND c.relkind IN ('r', 'v') AND (has_table_privilege('hdfpay_auditor', c.oid,"
        " 'INSERT, UPDATE, DELETE, TRUNCATE') OR has_any_column_privilege('hdfpay_auditor',"
        " c.oid, 'INSERT, UPDATE'))")
    assert writable == []
    await append_audit(conn, actor="test", action="card.oppose", subject="card:3")
    auditor = await as_role(roles.AUDITOR)
    assert await auditor.fetchval("SELECT count(*) FROM audit_log") >= 1
    assert await auditor.fetch("SELECT login, role, disabled FROM operators") is not None
    for secret in ("SELECT token_hash FROM operator_sessions", "SELECT password_hash FROM student_accounts",
                   "SELECT token_hash FROM student_sessions",
                   "SELECT data FROM renewal_drafts"):    # an operator's file before its apply
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await auditor.fetch(secret)


async def test_a_login_that_may_not_create_roles_is_told_exactly_what_to_run(hsm):
    with throwaway_workdir("roles") as workdir:
        cluster = throwaway_cluster(workdir)
        admin_dsn = cluster.start()
        admin = await asyncpg.connect(admin_dsn)
        try:
            await admin.execute("CREATE ROLE migrator LOGIN")
            migrator = await asyncpg.connect(role_dsn(admin_dsn, "migrator", environ={}))
            try:
                with pytest.raises(RolesMissing) as refused:
                    await ensure_roles(migrator)
            finally:
                await migrator.close()
            assert "CREATE ROLE hdfpay_terminal" in str(refused.value)
            assert "GRANT hdfpay_owner TO" in str(refused.value)
            # What the message says to run, then the migration as that login works.
            for line in roles.creation_sql().splitlines():
                sql = line.split("--")[0].replace(" PASSWORD '…'", "")
                sql = sql.replace("<the login that runs 'hdfpay db migrate'>", "migrator")
                sql = sql.replace("DATABASE <the database>", "DATABASE hdfpay")
                await admin.execute(sql)
            migrator = await asyncpg.connect(role_dsn(admin_dsn, "migrator", environ={}))
            try:
                assert "privileges.sql" in await migrate(migrator)
                assert await migrator.fetchval(
                    "SELECT relowner::regrole::text FROM pg_class WHERE relname = 'cards'") == "hdfpay_owner"
            finally:
                await migrator.close()
        finally:
            await admin.close()
