"""The database roles, one per kind of process, so that no running process can do more than its
work needs (ledger/sql/privileges.sql says what each may do).

- `hdfpay_owner` owns every table, view, sequence and function. Only `hdfpay db migrate` acts
  as it (SET ROLE from the administrator's login, or logging in as it). NOLOGIN when we create it.
- `hdfpay_terminal`: the terminal listener. EXECUTE on the four authorization functions
  (SECURITY DEFINER, owned by hdfpay_owner, search_path pinned) and nothing else it can write.
- `hdfpay_ops`: the operator API and back-office pages, and the operators' commands.
- `hdfpay_portal`: the students' space, its mail sender and the personal-data purge.
- `hdfpay_auditor`: reads, for `hdfpay check` and `hdfpay audit verify`; never writes.
- `hdfpay_sealer`: `hdfpay ledger seal` (its timer): reads the journal, appends seals.

None is a superuser, none owns anything, so none can ALTER a table, disable a trigger, set
session_replication_role or run COPY ... PROGRAM: the opposition, the immutable transfers and
the append-only audit trail hold against the processes that serve, not only against ordinary
statements.

A runtime role logs in with the administrator's DSN where only the user name changes (trust,
peer or ~/.pgpass supply the rest), unless HDFPAY_<ROLE>_DATABASE_URL gives its own DSN.
"""

from __future__ import annotations

import os
from typing import Mapping
from urllib.parse import urlsplit, urlunsplit

import asyncpg

OWNER = "hdfpay_owner"
TERMINAL = "hdfpay_terminal"
OPS = "hdfpay_ops"
PORTAL = "hdfpay_portal"
AUDITOR = "hdfpay_auditor"
SEALER = "hdfpay_sealer"
RUNTIME_ROLES = (TERMINAL, OPS, PORTAL, AUDITOR, SEALER)

# What a runtime role may never be, whoever created it: checked before each migration.
_RUNTIME_ATTRIBUTES = "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS"
_OWNER_ATTRIBUTES = "NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS"


class RolesMissing(RuntimeError):
    """The roles do not exist and this login may not create them: the message says what to run."""


def role_dsn(admin_dsn: str, role: str, environ: Mapping[str, str] = os.environ) -> str:
    """The DSN a process of `role` connects with: HDFPAY_<ROLE>_DATABASE_URL when set
    (hdfpay_terminal -> HDFPAY_TERMINAL_DATABASE_URL), else admin_dsn with the user replaced
    and any password dropped."""
    own = environ.get(f"HDFPAY_{role.removeprefix('hdfpay_').upper()}_DATABASE_URL")
    if own:
        return own
    parts = urlsplit(admin_dsn)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{role}@{host}"))


def creation_sql() -> str:
    """What an administrator runs when `hdfpay db migrate`'s login may not create roles."""
    lines = [f"CREATE ROLE {OWNER} {_OWNER_ATTRIBUTES};"]
    lines += [f"CREATE ROLE {role} {_RUNTIME_ATTRIBUTES} PASSWORD '…';" for role in RUNTIME_ROLES]
    lines.append(f"GRANT {OWNER} TO <the login that runs 'hdfpay db migrate'>;")
    lines.append(f"ALTER DATABASE <the database> OWNER TO {OWNER};   -- or: ALTER SCHEMA public OWNER TO {OWNER};")
    return "\n".join(lines)


async def ensure_roles(conn: asyncpg.Connection) -> list[str]:
    """Create the roles that are missing (returns their names) and check that none of the
    runtime roles has gained a dangerous attribute or membership. Raises RolesMissing when a role
    is missing and this login has no CREATEROLE."""
    existing = {r["rolname"]: r for r in await conn.fetch(
        "SELECT rolname, rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls"
        " FROM pg_roles WHERE rolname = ANY($1::text[])", [OWNER, *RUNTIME_ROLES])}
    missing = [role for role in (OWNER, *RUNTIME_ROLES) if role not in existing]
    if missing:
        may_create = await conn.fetchval(
            "SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = current_user")
        if not may_create:
            raise RolesMissing(
                f"the database roles {', '.join(missing)} do not exist and "
                f"'{await conn.fetchval('SELECT current_user')}' may not create them. "
                f"As an administrator, run:\n{creation_sql()}")
        for role in missing:
            attributes = _OWNER_ATTRIBUTES if role == OWNER else _RUNTIME_ATTRIBUTES
            try:
                async with conn.transaction():      # a savepoint: roles are the cluster's,
                    await conn.execute(f"CREATE ROLE {role} {attributes}")
            except (asyncpg.DuplicateObjectError, asyncpg.UniqueViolationError):  # made meanwhile
                pass
    for role in RUNTIME_ROLES:
        row = existing.get(role)
        if row and any(row[flag] for flag in ("rolsuper", "rolcreaterole", "rolcreatedb",
                                               "rolreplication", "rolbypassrls")):
            raise RolesMissing(f"the role {role} has administrator attributes: a process that "
                               f"serves must not. Run: ALTER ROLE {role} {_RUNTIME_ATTRIBUTES};")
    return missing


async def act_as_owner(conn: asyncpg.Connection) -> None:
    """Inside the migration's transaction: give the owner role what an earlier version created
    under the administrator's name, then act as the owner, so that everything created from here
    on is the owner's and the SECURITY DEFINER functions run as a role that is no superuser."""
    if await conn.fetchval("SELECT current_user = $1", OWNER):
        return
    if not await conn.fetchval("SELECT pg_has_role(current_user, $1, 'MEMBER')", OWNER):
        await conn.execute(f"GRANT {OWNER} TO CURRENT_USER")
    if not await conn.fetchval("SELECT has_schema_privilege($1, 'public', 'CREATE')", OWNER):
        await conn.execute(f"ALTER SCHEMA public OWNER TO {OWNER}")
    await conn.execute("""
        DO $$
        DECLARE o record;
        BEGIN
            FOR o IN
                SELECT format('ALTER %s %s OWNER TO hdfpay_owner',
                              CASE c.relkind WHEN 'S' THEN 'SEQUENCE' WHEN 'v' THEN 'VIEW'
                                             ELSE 'TABLE' END, c.oid::regclass) AS sql
                FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'S')
                  AND c.relowner <> 'hdfpay_owner'::regrole
                  AND NOT (c.relkind = 'S' AND EXISTS (SELECT 1 FROM pg_depend d
                           WHERE d.objid = c.oid AND d.deptype IN ('a', 'i')))
                UNION ALL
                SELECT format('ALTER FUNCTION %s OWNER TO hdfpay_owner', p.oid::regprocedure)
                FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                WHERE n.nspname = 'public' AND p.proowner <> 'hdfpay_owner'::regrole
            LOOP
                EXECUTE o.sql;
            END LOOP;
        END $$""")
    await conn.execute(f"SET LOCAL ROLE {OWNER}")
