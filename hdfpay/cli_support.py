"""What every `hdfpay` command shares: argument types, SIGTERM handling, notices, who the audit
trail names, and running one piece of work on the checked database with expected refusals
printed plainly."""

from __future__ import annotations

import argparse
import os
import pwd
import signal
import sys
from typing import Awaitable, Callable

import asyncpg
import uvloop

from ledger import roles
from ledger.database import check_schema, connection, database_dsn
from ledger.roles import role_dsn


# Argument types: each has a name argparse shows, and refuses bad text in plain words.
def concurrency_list(text: str) -> list[int]:
    """`1,16,64` → [1, 16, 64]; anything else is refused in plain words."""
    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated whole numbers such as 1,16,64, got {text!r}") from None
    return values


def whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


concurrency_list.__name__ = "concurrency list"
whole_number.__name__ = "whole number"


def stop_on_sigterm() -> None:
    """SIGTERM (a timeout, systemd, kill) ends a command like Ctrl-C does: finally blocks and
    context managers run, so a throwaway database is stopped and removed, not left running.
    Long-running servers replace this with their own handler (drain, then stop)."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, interrupt)


class UsageError(RuntimeError):
    """A command used wrongly: one line on stderr, exit code 2."""


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
                    refusals: tuple[type[BaseException], ...], role: str = roles.OPS) -> int:
    """Run `work(conn)` on a checked schema, logged in as `role` (an operators' command has
    the operator API's rights, no more); the area's `refusals` become one line on stderr
    and exit code 2."""
    async def main() -> int:
        async with connection(role_dsn(dsn, role)) as conn:
            await check_schema(conn)
            return await work(conn) or 0

    try:
        with cli_database(settings) as dsn:
            return uvloop.run(main())
    except refusals as exc:
        print(f"hdfpay: error: {exc}", file=sys.stderr)
        return 2
