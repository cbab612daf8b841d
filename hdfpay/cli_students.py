"""`hdfpay students add-account DOSSIER` (a student's account for "Mon espace Génération #HDF",
with a provisional password printed once) and `hdfpay students purge` (personal data past its
time, hourly from deploy/systemd/hdfpay-purge.timer)."""

from __future__ import annotations

from hdfpay.cli_support import run_on_database
from ledger import roles, students
from portal.housekeeping import purge_personal_data


def cmd_add_account(args, settings) -> int:
    async def work(conn) -> None:
        password = await students.create_account(conn, args.dossier.strip().upper())
        print(f"student account for dossier {args.dossier.strip().upper()} created")
        print(f"provisional password  {password}")
        print("Shown this once: give it to the student by a separate channel; it must be changed"
              " at the first login.")
    return run_on_database(settings, work, (students.StudentAccountError,), role=roles.PORTAL)


def cmd_purge(args, settings) -> int:
    async def work(conn) -> None:
        purged = await purge_personal_data(conn, settings.photo_dir)
        print(f"purged: {len(purged.photo_files)} photo(s), {purged.sessions} session(s),"
              f" {purged.reset_links} reset link(s), {purged.mail_addresses} mail address(es)")
    return run_on_database(settings, work, (students.StudentAccountError,), role=roles.PORTAL)


def add_commands(subcommands) -> None:
    p = subcommands.add_parser("students", help="students' accounts of their web space")
    actions = p.add_subparsers(dest="students_action", required=True, metavar="ACTION")
    a = actions.add_parser("add-account", help="an account for a beneficiary's dossier; prints"
                                               " its provisional password once")
    a.add_argument("dossier", help="the beneficiary's dossier number")
    a.set_defaults(func=cmd_add_account)
    a = actions.add_parser("purge", help="delete the students' personal data past its time "
                                         "(ledger/personal_data.py); hourly from a systemd timer")
    a.set_defaults(func=cmd_purge)
