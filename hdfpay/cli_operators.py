"""`hdfpay operators …` (accounts of the operator API) and `hdfpay audit verify`, run by someone
with the database in hand: audited as "cli:<unix user>"."""

from __future__ import annotations

from hdfpay.cli_ledger import check_seals, print_seal_report, sha256_hex
from hdfpay.cli_support import cli_actor, run_on_database, whole_number
from hdfpay.journal_sealing import SealingRefused
from ledger import operators
from ledger.school_calendar import business_time_zone
from ledger.audit import verify_audit


def _with_database(settings, work) -> int:
    """Run `work(conn)` on a checked schema; account refusals become a plain error, exit 2."""
    return run_on_database(settings, work, (operators.OperatorError, ValueError, SealingRefused))


def _show_provisional(login: str, password: str) -> None:
    print(f"provisional password  {password}")
    print(f"Shown this once: give it to {login} by a separate channel; it must be changed at "
          "the first login (POST /v1/ops/password).")


def cmd_add(args, settings) -> int:
    async def work(conn) -> None:
        account, provisional = await operators.create_operator(
            conn, actor=cli_actor(), login=args.login, role=args.role,
            establishment_id=args.establishment, partner_id=args.partner)
        print(f"operator {account.login} created: {account.role}{_scope(account)}")
        _show_provisional(account.login, provisional)
    return _with_database(settings, work)


def _scope(account: operators.Account) -> str:
    if account.establishment_id is not None:
        return f", establishment {account.establishment_id}"
    if account.partner_id is not None:
        return f", partner {account.partner_id}"
    return ""


def _status(account: operators.Account) -> str:
    if account.disabled:
        return "disabled"
    if account.locked:
        return "locked"
    return "password change due" if account.must_change_password else "active"


def cmd_list(args, settings) -> int:
    async def work(conn) -> None:
        accounts = await operators.list_operators(conn)
        zone = await business_time_zone(conn)
        print(f"{'LOGIN':<24} {'ROLE':<20} {'SCOPE':<18} {'STATUS':<20} CREATED")
        for account in accounts:
            print(f"{account.login:<24} {account.role:<20} {_scope(account)[2:] or '-':<18} "
                  f"{_status(account):<20} {account.created_at.astimezone(zone):%Y-%m-%d %H:%M}")
        print(f"{len(accounts)} account(s)")
    return _with_database(settings, work)


def cmd_disable(args, settings) -> int:
    async def work(conn) -> None:
        await operators.disable_operator(conn, actor=cli_actor(), login_name=args.login)
        print(f"operator {args.login} disabled; their sessions are ended")
    return _with_database(settings, work)


def cmd_reset_password(args, settings) -> int:
    async def work(conn) -> None:
        provisional = await operators.reset_password(conn, actor=cli_actor(), login_name=args.login)
        print(f"operator {args.login}: password reset, lock lifted, sessions ended")
        _show_provisional(args.login, provisional)
    return _with_database(settings, work)


def cmd_audit_verify(args, settings) -> int:
    async def work(conn) -> int:
        expect = bytes.fromhex(args.expect_head) if args.expect_head else None
        report = await verify_audit(conn, expect)      # a read: not itself an audited action
        print(f"rows  {report.rows}\nhead  row {report.head_id}, hash {report.head_hash}")
        for problem in report.problems:
            print(f"PROBLEM {problem}")
        # The chain alone can be recomputed by whoever writes the table: the seals cannot.
        seals = await check_seals(conn, "audit", args.expect_seal)
        print_seal_report(seals)
        problems = len(report.problems) + len(seals.problems)
        if problems == 0:
            print("audit trail intact")
            return 0
        print(f"audit trail NOT intact: {problems} problem(s)")
        return 1
    return _with_database(settings, work)


def add_commands(subcommands) -> None:
    """`operators add|list|disable|reset-password` and `audit verify`."""
    p = subcommands.add_parser("operators", help="operator API accounts: add, list, disable, "
                                                 "reset-password")
    actions = p.add_subparsers(dest="operators_action", required=True, metavar="ACTION")
    a = actions.add_parser("add", help="a new account; prints its provisional password once")
    a.add_argument("login", help="3 to 64 characters: a-z first, then a-z 0-9 . _ -")
    a.add_argument("--role", required=True, choices=operators.ROLES)
    scope = a.add_mutually_exclusive_group()
    scope.add_argument("--establishment", type=whole_number, help="establishment id (establishment_staff)")
    scope.add_argument("--partner", type=whole_number, help="partner id (partner)")
    a.set_defaults(func=cmd_add)
    a = actions.add_parser("list", help="every account with its role, scope and status")
    a.set_defaults(func=cmd_list)
    a = actions.add_parser("disable", help="disable an account for good; its sessions end")
    a.add_argument("login")
    a.set_defaults(func=cmd_disable)
    a = actions.add_parser("reset-password", help="a new provisional password (printed once); "
                                                  "lifts a lock, ends sessions")
    a.add_argument("login")
    a.set_defaults(func=cmd_reset_password)

    p = subcommands.add_parser("audit", help="the audit trail of operator actions: verify it")
    actions = p.add_subparsers(dest="audit_action", required=True, metavar="ACTION")
    a = actions.add_parser("verify", help="recompute the hash chain and check the rows against "
                                          "their seals (HSM key); exit 1 if a row was altered, "
                                          "inserted or deleted")
    a.add_argument("--expect-head", metavar="HASH", type=sha256_hex,
                   help="a head hash printed by an earlier verify (kept elsewhere): it must still be "
                        "in the chain")
    a.add_argument("--expect-seal", metavar="MAC", type=sha256_hex,
                   help="an audit seal's MAC printed earlier by 'hdfpay ledger seal' (kept "
                        "elsewhere): it must still be in the database")
    a.set_defaults(func=cmd_audit_verify)

