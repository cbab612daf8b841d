"""Which PostgreSQL to use: DATABASE_URL when set, otherwise the private embedded cluster."""

from __future__ import annotations

import contextlib
import os
from typing import AsyncIterator, Iterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from ledger.embedded import EmbeddedPostgres, default_data_dir, throwaway_cluster, throwaway_workdir
from ledger.migrate import shipped_migrations, shipped_repeatables

APPLICATION_NAME = "hdfpay"


class SchemaNotReady(RuntimeError):
    pass


@contextlib.contextmanager
def database_dsn(database_url: str | None, announce=None) -> Iterator[str]:
    """Yield a DSN. The embedded cluster is started if needed and stopped again on exit only if
    this call started it (a cluster started by `hdfpay db start` keeps running). Starting a
    stopped cluster is said through `announce`, never done silently."""
    if database_url:
        yield database_url
        return
    cluster = EmbeddedPostgres(default_data_dir())
    was_running = cluster.is_running()
    if not was_running and announce is not None:
        announce(f"the embedded database ({cluster.data_dir}) is stopped: starting it for this "
                 "command only ('hdfpay db start' keeps it running)")
    dsn = cluster.start()
    try:
        yield dsn
    finally:
        if not was_running:
            cluster.stop()


@contextlib.asynccontextmanager
async def connection(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(dsn, server_settings={"application_name": APPLICATION_NAME})
    try:
        yield conn
    finally:
        await conn.close()


async def recreate_database(dsn: str, name: str) -> str:
    """On someone else's server (DATABASE_URL), a database of our own for a throwaway run (demo,
    bench, loadtest), dropped and created again each time; returns its DSN."""
    async with connection(dsn) as conn:
        await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await conn.execute(f"CREATE DATABASE {name}")
    return urlunsplit(urlsplit(dsn)._replace(path="/" + name))


@contextlib.asynccontextmanager
async def throwaway_database(database_url: str | None, name: str) -> AsyncIterator[str]:
    """A database nobody else uses, for a benchmark: `name` on DATABASE_URL's server (dropped
    at the end), or a private cluster in a temporary directory (removed at the end)."""
    if database_url:
        dsn = await recreate_database(database_url, name)
        try:
            yield dsn
        finally:
            async with connection(database_url) as admin:
                await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        return
    with throwaway_workdir(name) as workdir:
        yield throwaway_cluster(workdir).start()


async def _keep_session(_: asyncpg.Connection) -> None:
    """The pipeline leaves no session state (no LISTEN, locks, cursors or SET), so a connection
    goes back to the pool as it is: asyncpg's default reset would cost a second round trip."""


# A terminal message gives up waiting for a row lock after this long (55P03, answered 91). Its
# locks are held for a millisecond by other messages; a wallet held for long (the expiry on
# 1 May, a long operator transaction) must cost that card 91s, not the pool's connections, which
# every other card needs.
HOT_PATH_LOCK_TIMEOUT_MS = 500


# With several hosts (a primary and its standby, deploy/patroni/), each host gets this long to
# accept a new connection before the next is tried. asyncpg bounds an attempt only as a whole: a
# first host that drops packets (a machine powered off sends no RST) would hold every new
# connection past the pool's acquire timeout, and the promoted host after it would never be tried.
PER_HOST_CONNECT_TIMEOUT_MS = 500


DEFAULT_PORT = 5432


def _hosts_of(dsn: str) -> list[tuple[str, int]]:
    """The (host, port) pairs of a postgresql:// URL listing several hosts, else []."""
    parts = urlsplit(dsn)
    hostspec = parts.netloc.rpartition("@")[2]
    if parts.scheme not in ("postgresql", "postgres") or "," not in hostspec:
        return []
    hosts = []
    for item in hostspec.split(","):
        host, colon, port = item.rpartition(":") if not item.endswith("]") else ("", "", item)
        if not colon:
            host, port = item, ""
        hosts.append((host.strip("[]"), int(port or os.environ.get("PGPORT") or DEFAULT_PORT)))
    return hosts


async def connect_each_host(dsn: str, **kwargs) -> asyncpg.Connection:
    """asyncpg.connect, but each host of a multi-host DSN tried in turn with its own bound (the
    pools' `connect`): the DSN's target_session_attrs still picks the one that accepts writes."""
    hosts = _hosts_of(dsn)
    if not hosts:
        return await asyncpg.connect(dsn, **kwargs)
    last_error: BaseException | None = None
    for host, port in hosts:
        try:
            return await asyncpg.connect(dsn, host=host, port=port,
                                         timeout=PER_HOST_CONNECT_TIMEOUT_MS / 1000, **kwargs)
        except (OSError, TimeoutError, asyncpg.CannotConnectNowError,
                asyncpg.TargetServerAttributeNotMatched) as exc:
            last_error = exc     # down, silent, starting up, or a standby: the next host
    assert last_error is not None
    raise last_error


async def create_pool(dsn: str, size: int) -> asyncpg.Pool:
    """The terminal listener's connections."""
    return await asyncpg.create_pool(
        dsn, min_size=size, max_size=size, reset=_keep_session, connect=connect_each_host,
        # Short, fast statements: JIT compilation would only add latency.
        server_settings={"application_name": APPLICATION_NAME, "jit": "off",
                         "lock_timeout": f"{HOT_PATH_LOCK_TIMEOUT_MS}ms"},
    )


async def create_ops_pool(dsn: str, size: int) -> asyncpg.Pool:
    """The operator API's own connections: long bulk statements there never take a
    connection the terminals need. asyncpg's default reset, since handlers use transactions."""
    return await asyncpg.create_pool(dsn, min_size=1, max_size=size, connect=connect_each_host,
                                     server_settings={"application_name": f"{APPLICATION_NAME}-ops"})


async def ping(pool: asyncpg.Pool, timeout_s: float) -> None:
    """One trivial round trip: raises when no connection is free or the database does not answer
    within timeout_s (each; a caller that needs one bound for the whole, cancel included, sets
    it around this call)."""
    async with pool.acquire(timeout=timeout_s) as conn:
        await conn.fetchval("SELECT 1", timeout=timeout_s)


async def check_schema(conn: asyncpg.Connection) -> None:
    """Refuse to serve on a database whose migrations are missing, or whose SQL functions are not
    the ones this version ships (a deploy that forgot 'hdfpay db migrate' would run old rules)."""
    applied, functions = set(), {}
    if await conn.fetchval("SELECT to_regclass('schema_repeatables') IS NOT NULL"):
        applied = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        functions = dict(await conn.fetch("SELECT path, checksum FROM schema_repeatables"))
    missing = [m.version for m in shipped_migrations() if m.version not in applied]
    if missing:
        raise SchemaNotReady(f"the database lacks migrations {missing}: run 'hdfpay db migrate'")
    stale = [f.version for f in shipped_repeatables() if functions.get(f.version) != f.checksum]
    if stale:
        raise SchemaNotReady(f"the database runs other versions of {', '.join(stale[:5])}"
                             f"{' …' if len(stale) > 5 else ''}: run 'hdfpay db migrate'")
