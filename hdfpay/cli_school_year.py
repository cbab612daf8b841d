"""`hdfpay rights …`, `hdfpay programmes …`, `hdfpay bulk-reload` and `hdfpay expire`: the school
year's operations from the command line, audited as "cli:<unix user>"."""

from __future__ import annotations

import sys
import time
from pathlib import Path


from hdfpay.cli_support import cli_actor, run_on_database, whole_number
from ledger.school_calendar import reload_school_year
from ledger.establishments import establishment_id
from ledger.bulk_reload import (BULK_RELOAD_CHUNK_ROWS, BulkReloadRefused, BulkReloadRun,
                                latest_run, run_bulk_reload)
from ledger.expiry import ExpiryRefused, expire_school_year, last_closed_school_year
from ledger.programmes import ProgrammeError, list_amounts, set_amount
from ledger.rights_renewal import (RenewalFileRefused, RenewalRefused, RenewalReport, renew_file,
                                   renew_one, renewal_school_year)
from terminal_protocol.amounts import AmountError, format_euros, parse_euros

PROGRESS_BAR_CHARS = 30
MAX_PRINTED_LINE_ERRORS = 200
EXPECTED_ERRORS = (RenewalRefused, RenewalFileRefused, BulkReloadRefused, ExpiryRefused,
                   ProgrammeError, AmountError)


class _Refused(ValueError):
    pass


def _with_database(settings, work) -> int:
    """Run `work(conn)` on a checked schema; the area's refusals become a plain error, exit 2."""
    return run_on_database(settings, work, (*EXPECTED_ERRORS, _Refused))


async def _establishment_id_or_refuse(conn, uai: str | None) -> int | None:
    if uai is None:
        return None
    found = await establishment_id(conn, uai)
    if found is None:
        raise _Refused(f"no establishment with UAI {uai}")
    return found


def cmd_rights(args, settings) -> int:
    async def work(conn) -> int:
        year = args.school_year or await renewal_school_year(conn)
        scope = await _establishment_id_or_refuse(conn, args.establishment)
        if args.rights_action == "renew":
            result = await renew_one(conn, args.dossier, school_year=year, actor=cli_actor(),
                                     establishment_id=scope, programme=args.programme)
            state = "already renewed" if result.already_renewed else "renewed"
            print(f"{result.dossier_number}: {state} for {year}-{year + 1} ({result.programme})")
            return 0
        data = Path(args.file).read_bytes()
        report = await renew_file(conn, data, school_year=year, actor=cli_actor(),
                                  establishment_id=scope, apply=args.apply)
        _print_report(report)
        return 0 if report.ok else 1
    return _with_database(settings, work)


def _print_report(report: RenewalReport) -> None:
    year = f"{report.school_year}-{report.school_year + 1}"
    for error in report.errors[:MAX_PRINTED_LINE_ERRORS]:
        print(f"line {error.line}: {error.message}", file=sys.stderr)
    if len(report.errors) > MAX_PRINTED_LINE_ERRORS:
        print(f"… and {len(report.errors) - MAX_PRINTED_LINE_ERRORS} more", file=sys.stderr)
    print(f"file sha256 {report.file_sha256}, {report.lines} line(s) for {year}")
    if report.errors:
        print(f"{len(report.errors)} line(s) in error: nothing changed; correct the file and run again")
    elif report.applied:
        print(f"applied: {report.renewed} renewed, {report.already_renewed} already renewed")
    else:
        print(f"dry run: {report.renewed} would be renewed, {report.already_renewed} already "
              f"renewed; nothing changed (add --apply)")


def cmd_programmes(args, settings) -> int:
    async def work(conn) -> None:
        if args.programmes_action == "set":
            amount = await set_amount(conn, school_year=args.year, programme=args.programme.upper(),
                                      amount_cents=parse_euros(args.amount), actor=cli_actor())
            print(f"{amount.school_year}-{amount.school_year + 1} {amount.programme}: "
                  f"{format_euros(amount.amount_cents)}")
            return
        for amount in await list_amounts(conn, args.school_year):
            print(f"{amount.school_year}-{amount.school_year + 1}  {amount.programme:<24} "
                  f"{format_euros(amount.amount_cents)}")
    return _with_database(settings, work)


def progress_bar(run: BulkReloadRun, started: float) -> str:
    total = max(run.beneficiaries_total, run.beneficiaries_seen, 1)
    filled = PROGRESS_BAR_CHARS * run.beneficiaries_seen // total
    return (f"[{'#' * filled}{'.' * (PROGRESS_BAR_CHARS - filled)}] "
            f"{100 * run.beneficiaries_seen // total:3d}% {run.beneficiaries_seen}/{total} "
            f"beneficiaries, {run.wallets_credited} credited, {time.monotonic() - started:.1f} s")


def _print_run(run: BulkReloadRun) -> None:
    year = f"{run.school_year}-{run.school_year + 1}"
    state = ("finished" if run.finished
             else f"open (resume with 'hdfpay bulk-reload --school-year {run.school_year}')")
    print(f"run {run.id} for {year} by {run.started_by}: {state}")
    print(f"  amounts {', '.join(f'{p} {format_euros(c)}' for p, c in sorted(run.amounts.items())) or '-'}")
    print(f"  {run.beneficiaries_seen}/{run.beneficiaries_total} beneficiaries seen in "
          f"{run.chunks_done} chunk(s): {run.wallets_credited} credited "
          f"({run.wallets_opened} wallets opened), {run.without_amount} without an amount")
    print(f"  credited {format_euros(run.credited_cents)}, pending fees recovered "
          f"{format_euros(run.fee_recovered_cents)}")


def cmd_bulk_reload(args, settings) -> int:
    tty = sys.stderr.isatty()

    async def work(conn) -> int:
        year = args.school_year or await reload_school_year(conn)
        if args.status:
            run = await latest_run(conn, year)
            if run is None:
                print(f"no bulk reload for {year}-{year + 1} yet")
                return 0
            _print_run(run)
            return 0
        started = time.monotonic()

        def progress(run: BulkReloadRun) -> None:
            print(("\r" if tty else "") + progress_bar(run, started), end="" if tty else "\n",
                  file=sys.stderr, flush=True)

        run = await run_bulk_reload(conn, year, actor=cli_actor(), chunk_rows=args.chunk_rows,
                                    max_chunks=args.max_chunks, progress=progress)
        if tty:
            print(file=sys.stderr)
        _print_run(run)
        return 0 if run.finished else 3
    return _with_database(settings, work)


def cmd_expire(args, settings) -> int:
    async def work(conn) -> None:
        year = args.school_year or await last_closed_school_year(conn)
        result = await expire_school_year(conn, year, actor=cli_actor())
        print(f"school year {year}-{year + 1}: {result.wallets_expired} wallet(s) expired, "
              f"{format_euros(result.expired_cents)} to the expired-funds account")
    return _with_database(settings, work)


def add_commands(subcommands) -> None:
    """Add this area's subcommands to hdfpay's parser. Each sets func(args, settings) -> int and
    turns its own expected errors into a message on stderr and a non-zero code."""
    p = subcommands.add_parser("rights", help="renew students' rights for a school year (one, or a CSV file)")
    actions = p.add_subparsers(dest="rights_action", required=True, metavar="ACTION")
    one = actions.add_parser("renew", help="renew one student by dossier number")
    one.add_argument("dossier", help="dossier number, e.g. HDF0000005")
    one.add_argument("--programme", help="BOOKS, EQUIPMENT… (default: last year's, else by establishment)")
    many = actions.add_parser("renew-file", help="renew the students of a CSV file: a dry run "
                                                  "unless --apply; any error changes nothing")
    many.add_argument("file", help="CSV: dossier number[;school year[;programme]] per line")
    many.add_argument("--apply", action="store_true", help="renew (default: only check the file)")
    for sub in (one, many):
        sub.add_argument("--school-year", type=whole_number,
                         help="first year of the school year (default: the newest open for renewal)")
        sub.add_argument("--establishment", metavar="UAI",
                         help="act for this establishment: only its students")
    p.set_defaults(func=cmd_rights)

    p = subcommands.add_parser("programmes", help="reload amounts by programme and school year")
    actions = p.add_subparsers(dest="programmes_action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="the amounts")
    listing.add_argument("--school-year", type=whole_number)
    setting = actions.add_parser("set", help="set one programme's amount for a school year")
    setting.add_argument("year", type=whole_number, help="first year of the school year, e.g. 2027")
    setting.add_argument("programme", help="e.g. BOOKS or EQUIPMENT")
    setting.add_argument("amount", help="in euros, e.g. 100 or 12,50")
    p.set_defaults(func=cmd_programmes)

    p = subcommands.add_parser("bulk-reload", help="credit every beneficiary with rights for a "
                                                   "school year with their programme's amount "
                                                   "(resumable, once each)")
    p.add_argument("--school-year", type=whole_number, help="first year of the school year (default: current, "
                                                   "or next in May and June)")
    p.add_argument("--chunk-rows", type=whole_number, default=BULK_RELOAD_CHUNK_ROWS,
                   help=f"beneficiaries per committed chunk (default {BULK_RELOAD_CHUNK_ROWS})")
    p.add_argument("--max-chunks", type=whole_number, help="stop after this many chunks (resume later)")
    p.add_argument("--status", action="store_true", help="show the school year's last run, change nothing")
    p.set_defaults(func=cmd_bulk_reload)

    p = subcommands.add_parser("expire", help="move the closed school year's remaining balances to "
                                              "expired funds (from 1 May, Europe/Paris; idempotent)")
    p.add_argument("--school-year", type=whole_number, help="first year of the school year (default: the last "
                                                   "one closed)")
    p.set_defaults(func=cmd_expire)
