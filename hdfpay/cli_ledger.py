"""`hdfpay check` (the ledger's invariants and the transfers' seals) and `hdfpay ledger seal`
(the periodic job of deploy/systemd/hdfpay-seal.timer), and the seals' lines that `hdfpay audit
verify` prints too."""

from __future__ import annotations

import argparse
import contextlib

from hdfpay.cli_support import cli_actor, run_on_database, whole_number
from hdfpay.journal_sealing import SealingRefused, SealReport, seal_journal, verify_seals
from hsm.config import open_hsm_from_env
from ledger import journal_seals, roles
from ledger.invariants import ledger_violations


def sha256_hex(text: str) -> str:
    """An argument holding a hash or MAC printed earlier: 64 hex digits."""
    if len(text) != 64 or any(c not in "0123456789abcdefABCDEF" for c in text):
        raise argparse.ArgumentTypeError("64 hex digits expected")
    return text


async def check_seals(conn, stream: str, expect_seal: str | None) -> SealReport:
    """The stream's seals checked; the HSM is opened only if the database holds seals."""
    expect = bytes.fromhex(expect_seal) if expect_seal else None
    if not await journal_seals.seal_count(conn):
        return await verify_seals(conn, None, stream, expect)
    with contextlib.closing(open_hsm_from_env()) as hsm:
        return await verify_seals(conn, hsm, stream, expect)


def print_seal_report(report: SealReport) -> None:
    rows = "transfer(s)" if report.stream == "transfers" else "audit row(s)"
    if report.last is None:
        print(f"{report.stream}: no seal yet ('hdfpay ledger seal', run by"
              " deploy/systemd/hdfpay-seal.timer); nothing is protected by the seal key")
    else:
        print(f"{report.stream}: sealed through id {report.last.last_id} by seal"
              f" {report.last.seq} (MAC {report.last.mac.hex()}); {report.unsealed_rows}"
              f" {rows} since, protected only until the next seal")
    for problem in report.problems:
        print(f"SEAL PROBLEM {problem}")
    if report.last is not None or report.problems:
        print(f"{report.stream} seals intact" if report.intact else
              f"{report.stream} seals NOT intact: {len(report.problems)} problem(s)")


def cmd_check(args, settings) -> int:
    async def work(conn) -> int:
        violations = await ledger_violations(conn)
        for rule, detail in violations:
            print(f"VIOLATION {rule}: {detail}")
        print("ledger balanced" if not violations else f"{len(violations)} violation(s)")
        report = await check_seals(conn, "transfers", args.expect_seal)
        print_seal_report(report)
        return 1 if violations or not report.intact else 0
    return run_on_database(settings, work, (SealingRefused,), role=roles.AUDITOR)


def cmd_seal(args, settings) -> int:
    async def work(conn) -> int:
        with contextlib.closing(open_hsm_from_env()) as hsm:
            run = await seal_journal(conn, hsm, actor=cli_actor(), wait_max_ms=args.wait_max_ms)
        if run.key_created is not None:
            print(f"created the journal's seal key {run.key_created} in the HSM")
        for seal in run.made:
            print(f"sealed {seal.describe()}: {seal.row_count} row(s)")
        for stream, last in run.last.items():
            if last is None:
                print(f"{stream}: nothing to seal yet")
            else:       # the line to keep outside the database (--expect-seal)
                print(f"{stream}: last seal {last.seq} through id {last.last_id}, MAC {last.mac.hex()}")
        for reason in run.not_ready:
            print(f"NOT SEALED {reason}")
        return 1 if run.not_ready else 0
    return run_on_database(settings, work, (SealingRefused,), role=roles.SEALER)


def add_commands(subcommands) -> None:
    """`check` and `ledger seal`."""
    p = subcommands.add_parser(
        "check", help="verify the ledger's invariants (debits = credits, no negative wallet) and "
                      "every sealed transfer against its seal")
    p.add_argument("--expect-seal", metavar="MAC", type=sha256_hex,
                   help="a transfers seal's MAC printed earlier by 'hdfpay ledger seal' (kept "
                        "elsewhere): it must still be in the database")
    p.set_defaults(func=cmd_check)

    p = subcommands.add_parser("ledger", help="the journal's seals: seal what was committed since "
                                              "the last seal")
    actions = p.add_subparsers(dest="ledger_action", required=True, metavar="ACTION")
    text = ("hash the transfers and audit rows committed since the last seal, in id order, into "
            "a new seal MAC'd with the HSM's HMAC key (made at the first seal); prints each "
            "stream's last seal MAC, to keep outside the database")
    a = actions.add_parser("seal", help=text, description=text)
    a.add_argument("--wait-max-ms", type=whole_number, default=journal_seals.HORIZON_WAIT_MAX_MS,
                   help="how long to wait for transactions writing transfers to end (default"
                        f" {journal_seals.HORIZON_WAIT_MAX_MS})")
    a.set_defaults(func=cmd_seal)
