"""`hdfpay students add-account DOSSIER`: a student's account for "Mon espace Génération #HDF",
with a provisional password printed once (until the e-mail of issue 12 sends it)."""

from __future__ import annotations

from hdfpay.cli_support import run_on_database
from ledger import students


def cmd_add_account(args, settings) -> int:
    async def work(conn) -> None:
        password = await students.create_account(conn, args.dossier.strip().upper())
        print(f"student account for dossier {args.dossier.strip().upper()} created")
        print(f"provisional password  {password}")
        print("Shown this once: give it to the student by a separate channel; it must be changed"
              " at the first login.")
    return run_on_database(settings, work, (students.StudentAccountError,))


def add_commands(subcommands) -> None:
    p = subcommands.add_parser("students", help="students' accounts of their web space")
    actions = p.add_subparsers(dest="students_action", required=True, metavar="ACTION")
    a = actions.add_parser("add-account", help="an account for a beneficiary's dossier; prints"
                                               " its provisional password once")
    a.add_argument("dossier", help="the beneficiary's dossier number")
    a.set_defaults(func=cmd_add_account)
