"""`hdfpay` commands for settlement: settle closed days, make a run's payout files, record a
partner's bank details, and the operator reports (volumes, declines, funds, settlement)."""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

import asyncpg

from hdfpay.cli_support import cli_actor as _actor, run_on_database, whole_number
from backoffice.payout_files import BankAccount, PayoutError, payout_files, set_payee, write_payout_files
from ledger import payouts
from ledger.clock import business_today
from ledger import reports
from ledger.settlement import (SettlementRefused, UnknownRun, get_run, list_runs, run_lines,
                               settle)
from terminal_protocol.response_codes import APPROVED_CODES, describe

DEFAULT_REPORT_DAYS = 7
LISTED_RUNS_ROWS = 20


def _day(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


def euros(cents: int) -> str:
    """Integer cents as '-1,234.50' (no float on the way)."""
    whole, part = divmod(abs(cents), 100)
    return f"{'-' if cents < 0 else ''}{whole:,}.{part:02d}"


def _run_command(settings, main) -> int:
    """Open the database, run `main(conn)`; expected refusals become one line on stderr."""
    return run_on_database(settings, main,
                           (SettlementRefused, UnknownRun, PayoutError, reports.ReportRefused))


def cmd_settle(args, settings) -> int:
    async def main(conn: asyncpg.Connection) -> int:
        outcome = await settle(conn, actor=_actor(), through_day=args.day)
        run = outcome.run
        if not outcome.created:
            print(f"already settled by run {run.run_id} (through {run.through_day}): nothing moved")
            return 0
        start = run.first_day or "the first transaction"
        print(f"run {run.run_id}: settled {start} through {run.through_day}: {run.transactions} "
              f"transactions, {run.lines} partner-days, {run.payments} payments, "
              f"{euros(run.paid_cents)} EUR paid, {euros(run.debt_carried_cents)} EUR carried as debts")
        _print_lines(await run_lines(conn, run.run_id))
        return 0
    return _run_command(settings, main)


def cmd_payouts(args, settings) -> int:
    async def main(conn: asyncpg.Connection) -> int:
        await get_run(conn, args.run)  # an unknown run is said before a missing bank account
        kept = await payouts.files_exist(conn, args.run)
        debtor = None if kept else BankAccount.debtor_from(
            name=args.debtor_name, iban=args.debtor_iban, bic=args.debtor_bic)
        files = await payout_files(conn, args.run, actor=_actor(), debtor=debtor,
                                   execution_date=args.execution_date)
        written = write_payout_files(files, Path(args.output))
        print(f"run {args.run}: {files.payments} payments, {euros(files.ctrl_sum_cents)} EUR, "
              f"message id {files.message_id}" + ("" if files.created else " (as made earlier)"))
        if files.pain001 is None:
            print("nobody is paid in this run: no pain.001 written")
        for path in written:
            print(f"wrote {path}")
        return 0
    return _run_command(settings, main)


def cmd_payee(args, settings) -> int:
    async def main(conn: asyncpg.Connection) -> int:
        account = await set_payee(conn, args.partner, name=args.name, iban=args.iban, bic=args.bic,
                                  actor=_actor())
        print(f"partner {args.partner} is paid to {account.name}, IBAN {account.iban}, BIC {account.bic}")
        return 0
    return _run_command(settings, main)


def cmd_report(args, settings) -> int:
    async def main(conn: asyncpg.Connection) -> int:
        today = await business_today(conn)
        last = args.to or today
        first = args.from_ or (None if args.kind == "funds" else last - dt.timedelta(days=DEFAULT_REPORT_DAYS - 1))
        period = reports.Period(first, last).check()
        if args.kind != "settlement":
            print(f"{args.kind} from {first or 'the beginning'} to {last} (Europe/Paris business days)")
        if args.kind == "volumes":
            _print_volumes(await reports.volumes(conn, period))
        elif args.kind == "declines":
            _print_declines(*await reports.declines(conn, period, APPROVED_CODES))
        elif args.kind == "funds":
            return _print_funds(await reports.funds(conn, period))
        elif args.run is not None:
            run = await get_run(conn, args.run)
            print(f"run {run.run_id}: {run.first_day or 'start'} → {run.through_day}, by {run.settled_by}")
            _print_lines(await run_lines(conn, run.run_id))
        else:
            _print_runs(await list_runs(conn, LISTED_RUNS_ROWS))
        return 0
    return _run_command(settings, main)


ROW_LINES = "{:>8} {:>10}  {:<36} {:>9} {:>12} {:>12} {:>12} {:>12} {:>12}"


def _print_lines(lines) -> None:
    if not lines:
        print("(no transactions)")
        return
    print(ROW_LINES.format("partner", "day", "name", "txns", "purchases", "reversals", "refunds",
                           "paid", "debt after"))
    for l in lines:
        print(ROW_LINES.format(l.partner_id, l.business_day.isoformat(), l.partner_name[:36],
                               l.purchases_count + l.reversals_count + l.refunds_count,
                               euros(l.purchases_cents), euros(l.reversals_cents),
                               euros(l.refunds_cents), euros(l.paid_cents), euros(l.debt_after_cents)))


def _print_runs(runs) -> None:
    row = "{:>6} {:>12} {:>12} {:>10} {:>9} {:>14} {:>12}  {}"
    print(row.format("run", "from", "through", "txns", "payments", "paid", "debts", "by"))
    for r in runs:
        print(row.format(r.run_id, str(r.first_day or "start"), r.through_day.isoformat(),
                         r.transactions, r.payments, euros(r.paid_cents), euros(r.debt_carried_cents),
                         r.settled_by))


def _print_volumes(rows: list[dict]) -> None:
    row = "{:>10} {:<9} {:<36} {:>7} {:>12} {:>6} {:>10} {:>6} {:>10} {:>12}"
    print(row.format("day", "category", "partner", "sales", "purchases", "voids", "reversed",
                     "refs", "refunded", "net"))
    for r in rows:
        if r["business_day"] is None:
            label, day, category = "TOTAL", "", ""
        else:
            day, category = r["business_day"].isoformat(), r["category"].lower()
            label = (f"{r['partner_id']} {r['partner_name']}"[:36] if r["partner_id"] is not None
                     else f"all {category} partners")
        print(row.format(day, category, label, r["purchases_count"], euros(r["purchases_cents"]),
                         r["reversals_count"], euros(r["reversals_cents"]), r["refunds_count"],
                         euros(r["refunds_cents"]), euros(r["net_cents"])))


def _print_declines(total: int, rows: list[dict]) -> None:
    declined = sum(r["count"] for r in rows)
    print(f"{total} messages answered by the ledger, {declined} declined"
          + (f" ({declined * 100 // total} %)" if total else ""))
    row = "{:>4}  {:<42} {:<9} {:>8} {:>14}"
    print(row.format("code", "reason", "message", "count", "requested"))
    for r in rows:
        print(row.format(r["response_code"], describe(r["response_code"]).meaning[:42],
                         r["message_type"].lower(), r["count"], euros(r["requested_cents"])))


def _print_funds(report: reports.FundsReport) -> int:
    f = report.flows
    for label, key in [("funded (reloads)", "funded_cents"), ("purchases", "purchases_cents"),
                       ("reversals", "reversals_cents"),
                       ("  back to wallets", "reversals_to_wallets_cents"),
                       ("  to expired funds (after 1 May)", "reversals_to_expired_funds_cents"),
                       ("refunds", "refunds_cents"), ("spent (net)", "spent_cents"),
                       ("expired", "expired_cents"), ("  of which 1 May sweeps", "expiry_sweeps_cents"),
                       ("fees", "fees_cents"), ("settled to merchants", "settled_cents")]:
        print(f"  {label:<28} {euros(f[key]):>16} EUR")
    print("position now")
    for key, value in report.position.items():
        print(f"  {key.removesuffix('_cents').replace('_', ' '):<28} {euros(value):>16} EUR")
    print("reconciliation with the ledger (all time)")
    for check in report.checks:
        print(f"  {'ok' if check.ok else 'MISMATCH':<8} {check.rule:<44} {euros(check.left):>16} "
              f"{'=' if check.ok else '≠'} {euros(check.right)}")
    for rule, detail in report.violations:
        print(f"  VIOLATION {rule}: {detail}")
    print("reconciled: Σ debits = Σ credits and every balance matches its flows" if report.reconciled
          else "NOT RECONCILED: see the lines above")
    return 0 if report.reconciled else 1


def add_commands(subcommands) -> None:
    """Add this area's subcommands to hdfpay's parser. Each sets func(args, settings) -> int and
    turns its own expected errors into a message on stderr and a non-zero code."""
    p = subcommands.add_parser("settle", help="settle closed business days (Europe/Paris) not yet "
                                              "settled, through --day (default: yesterday)")
    p.add_argument("--day", type=_day, help="last day to settle, YYYY-MM-DD (before today)")
    p.set_defaults(func=cmd_settle)

    p = subcommands.add_parser("payouts", help="a settlement run's payout files: CSV and SEPA "
                                               "pain.001 (made once, then the same files again)")
    p.add_argument("--run", type=whole_number, required=True, help="settlement run id")
    p.add_argument("--output", required=True, help="directory to write the files into")
    for part, variable in [("name", "HDFPAY_DEBTOR_NAME"), ("iban", "HDFPAY_DEBTOR_IBAN"),
                           ("bic", "HDFPAY_DEBTOR_BIC")]:
        p.add_argument(f"--debtor-{part}", help=f"the region's account {part} (default ${variable})")
    p.add_argument("--execution-date", type=_day, help="requested execution date (default: next weekday)")
    p.set_defaults(func=cmd_payouts)

    p = subcommands.add_parser("payee", help="record where a partner is paid (IBAN and BIC checked)")
    p.add_argument("partner", type=whole_number, help="partner id")
    p.add_argument("--name", required=True, help="account holder, at most 70 characters")
    p.add_argument("--iban", required=True)
    p.add_argument("--bic", required=True)
    p.set_defaults(func=cmd_payee)

    p = subcommands.add_parser("report", help="operator reports: volumes, declines, funds "
                                              "(reconciled with the ledger), settlement runs")
    p.add_argument("kind", choices=["volumes", "declines", "funds", "settlement"])
    p.add_argument("--from", dest="from_", type=_day, help="first day, YYYY-MM-DD (default: a week "
                                                           "before --to; funds: the beginning)")
    p.add_argument("--to", type=_day, help="last day, YYYY-MM-DD (default: today)")
    p.add_argument("--run", type=whole_number, help="settlement: one run's lines")
    p.set_defaults(func=cmd_report)
