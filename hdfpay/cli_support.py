"""What every `hdfpay` command of the region's operations shares: who the audit trail names, and
running one piece of work on the checked database with expected refusals printed plainly."""

from __future__ import annotations

import os
import pwd
import signal
import sys
from typing import Awaitable, Callable

import asyncpg
import uvloop

from ledger.database import check_schema, connection, database_dsn


def stop_on_sigterm() -> None:
    """SIGTERM (a timeout, systemd, kill) ends a command like Ctrl-C does: finally blocks and
    context managers run, so a throwaway database is stopped and removed, not left running.
    Long-running servers replace this with their own handler (drain, then stop)."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, interrupt)


def notice(text: str) -> None:
    """A line for whoever runs the command, on stderr so that stdout stays the command's output."""
    print(f"hdfpay: {text}", file=sys.stderr)


def cli_database(settings):
    """The command's database (DATABASE_URL, or the embedded cluster, announced if stopped)."""
    return database_dsn(settings.database_url, announce=notice)


def cli_actor() -> str:
    """The audit trail's name for whoever runs the command: the effective unix user."""
    try:
        return f"cli:{pwd.getpwuid(os.geteuid()).pw_name}"
    except KeyError:
        return f"cli:uid-{os.geteuid()}"


def run_on_database(settings, work: Callable[[asyncpg.Connection], Awaitable[int | None]],
                    refusals: tuple[type[BaseException], ...]) -> int:
    """Run `work(conn)` on a checked schema; the area's `refusals` become one line on stderr
    and exit code 2."""
    async def main() -> int:
        async with connection(dsn) as conn:
            await check_schema(conn)
            return await work(conn) or 0

    try:
        with cli_database(settings) as dsn:
            return uvloop.run(main())
    except refusals as exc:
        print(f"hdfpay: error: {exc}", file=sys.stderr)
        return 2
