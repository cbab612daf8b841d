"""`hdfpay`: the one command line for the authorizer, its database and its tools."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

import asyncpg
import uvloop

from hdfpay import (cli_cards, cli_ledger, cli_operators, cli_rules, cli_school_year,
                    cli_settlement, cli_students)
from hdfpay.cli_backup import add_backup_actions
from hdfpay.cli_db import cmd_db
from hdfpay.cli_support import UsageError, cli_actor, cli_database, stop_on_sigterm, whole_number
from hdfpay.config import DEFAULT_OPS_PORT, MAX_WORKERS, ConfigError, Settings
from ledger import roles
from ledger.database import SchemaNotReady, check_schema, connection
from ledger.roles import role_dsn
from backoffice.provisioning import ProvisioningError
from hsm.config import open_hsm_from_env
from hsm.interface import HsmError
from ledger.terminals import list_terminals
from ledger.school_calendar import reload_school_year
from ledger.embedded import EmbeddedDatabaseError
from ledger.audit import append_audit
from ledger.migrate import MigrationError
from ledger.reload import ReloadRefused, UnknownBeneficiary, reload_wallet
from terminal_protocol.amounts import AmountError, format_euros, parse_euros
from terminal_protocol.agent.agent_config import AgentConfigError
from terminal_protocol.agent.cli import add_terminal_commands
from terminal_protocol.agent.local_store import StoreLocked
from terminal_protocol.agent.sealed_state import SealedStateError

DEFAULT_SEED_BENEFICIARIES = 1000
LOADTEST_COMMANDS = {
    "bench": "end-to-end authorization benchmark beside pgbench",
    "loadtest": "a locust scenario (peak, students, hot-card, reversal-storm, decline-mix) on a throwaway "
                "database, then the ledger checked",
    "fuzz": "generated and mutated terminal messages against the codec and a server on a "
            "throwaway database: 0 crashes, 0 hangs, 0 debits from invalid messages",
    "chaos": "a bank test under faults on a throwaway HA cluster: workers, the primary and etcd "
             "killed, paused, restarted while terminals sell; every approval checked after",
}




def _run(coro) -> int:
    return uvloop.run(coro) or 0


def cmd_demo(args, settings: Settings) -> int:
    from hdfpay.demo import run_demo
    return _run(run_demo(settings, keep_serving=args.serve))


def _smtp_settings():
    """The students' mail server, when HDFPAY_SMTP_HOST is set (a bad setting stops serve)."""
    from portal.mail_sender import SmtpConfigError, SmtpSettings
    if not os.environ.get("HDFPAY_SMTP_HOST"):
        return None
    try:
        return SmtpSettings.from_env()
    except SmtpConfigError as exc:
        raise ConfigError(str(exc)) from None


def cmd_serve(args, settings: Settings) -> int:
    from authorizer.server_voids import SERVER_VOID_DRAIN_WAIT_MS
    from hdfpay.json_logs import configure_json_logging
    from hdfpay.server import SHUTDOWN_GRACE_S, serve_forever
    from hdfpay.workers import Supervisor, worker_index
    configure_json_logging()
    settings = _override(settings, host=args.host, port=args.port, workers=args.workers)
    settings.check_transport()
    if not 1 <= settings.workers <= MAX_WORKERS:
        raise ConfigError(f"--workers must be between 1 and {MAX_WORKERS}")
    if settings.workers > 1:
        if 0 in (settings.port, settings.ops_listen_port, settings.portal_listen_port):
            raise ConfigError("workers share their ports: HDFPAY_PORT, HDFPAY_OPS_PORT and "
                              "HDFPAY_PORTAL_PORT must be fixed (not 0) with --workers")

        async def supervise() -> int:
            async with connection(dsn) as conn:
                await check_schema(conn)
            stop_after_s = (settings.drain_notice_ms / 1000 + SHUTDOWN_GRACE_S
                            + SERVER_VOID_DRAIN_WAIT_MS / 1000)
            return await Supervisor(settings.workers, dsn, stop_after_s).run()

        with cli_database(settings) as dsn:
            return _run(supervise())
    index = worker_index()
    metrics_port = None
    if index is not None:
        settings = _override(settings, reuse_port=True)
        metrics_port = settings.worker_metrics_port + index
    hsm = open_hsm_from_env() if settings.terminal_authentication == "dukpt" else None
    smtp = _smtp_settings()

    async def main() -> None:
        async with connection(dsn) as conn:
            await check_schema(conn)
        await serve_forever(settings, dsn, hsm, smtp=smtp, metrics_port=metrics_port)

    try:
        with cli_database(settings) as dsn:
            return _run(main())
    finally:
        if hsm is not None:
            hsm.close()


def cmd_keys(args, settings: Settings) -> int:
    from backoffice.provisioning import create_bdk
    from hsm.config import BACKEND_VARIABLE, KEYSTORE_VARIABLE, SOFTWARE
    keystore = os.environ.get(KEYSTORE_VARIABLE)
    create = (args.action == "new-bdk" and os.environ.get(BACKEND_VARIABLE, SOFTWARE) == SOFTWARE
              and bool(keystore) and not os.path.exists(keystore))

    async def audited_new_bdk(hsm) -> None:
        async with connection(role_dsn(dsn, roles.OPS)) as conn:   # audited: who made it
            await check_schema(conn)
            print(f"new BDK {await create_bdk(conn, hsm, actor=cli_actor())}: new terminals and "
                  "rotations now use it")

    if create:
        print(f"creating the encrypted keystore {keystore}")
    with contextlib.closing(open_hsm_from_env(create=create)) as hsm:
        if args.action == "new-bdk":
            with cli_database(settings) as dsn:
                _run(audited_new_bdk(hsm))
        for key in sorted(hsm.list_keys(), key=lambda k: (k.usage.value, k.created_at)):
            print(f"{key.usage.value}  {key.alias:<32} KCV {key.kcv}  created {key.created_at:%Y-%m-%d %H:%M}")
    return 0


def cmd_terminals(args, settings: Settings) -> int:
    from backoffice import provisioning

    async def main() -> None:
        async with connection(role_dsn(dsn, roles.OPS)) as conn:
            await check_schema(conn)
            if args.action == "list":
                print(f"{'TERMINAL':<16} {'STATUS':<9} {'PARTNER':<36} "
                      "KEYS (initial key id:status:last counter)")
                for row in await list_terminals(conn):
                    keys = " ".join(row.keys) or "none yet: 'hdfpay terminals rotate ID' delivers one"
                    print(f"{row.terminal_id:<16} {row.status:<9} {row.partner_name:<36} {keys}")
                return
            if args.action in ("activate", "suspend", "revoke"):
                status = {"activate": "ACTIVE", "suspend": "SUSPENDED", "revoke": "REVOKED"}[args.action]
                await provisioning.set_terminal_status(conn, args.terminal_id, status,
                                                       actor=cli_actor())
                print(f"terminal {args.terminal_id}: {status}")
                return
            with contextlib.closing(open_hsm_from_env()) as hsm:
                if args.action == "add":
                    delivered = await provisioning.add_terminal(conn, hsm, args.terminal_id,
                                                                args.partner, actor=cli_actor())
                else:
                    delivered = await provisioning.rotate_terminal_key(conn, hsm, args.terminal_id,
                                                                       actor=cli_actor())
        _print_delivery(delivered)

    with cli_database(settings) as dsn:
        return _run(main())


def _print_delivery(delivered) -> None:
    print(f"terminal           {delivered.terminal_id}")
    print(f"initial key id     {delivered.initial_key_id.hex().upper()}")
    print(f"key block (TR-31)  {delivered.key_block}")
    print(f"transport key      KCV {delivered.kbpk.kcv}")
    if delivered.transport_key is not None:
        print(f"                   {delivered.transport_key.hex().upper()}")
        print("The transport key is shown this once: give it to the terminal's installer by a "
              "separate channel.\nThe terminal stays PENDING until 'hdfpay terminals activate'.")


def cmd_seed(args, settings: Settings) -> int:
    from ledger.demo_region import seed_demo_region

    async def main() -> None:
        async with connection(dsn) as conn:
            await check_schema(conn)
            year = args.school_year or await reload_school_year(conn)
            summary = await seed_demo_region(conn, beneficiaries=args.beneficiaries, school_year=year)
        if summary.already_seeded:
            print("the database already holds a region; nothing changed")
        print(f"{summary.beneficiaries} beneficiaries, {summary.cards} cards, {summary.partners} "
              f"partners, {summary.terminals} terminals, {format_euros(summary.funded_cents)} funded")

    with cli_database(settings) as dsn:
        return _run(main())


def cmd_reload(args, settings: Settings) -> int:
    amount_cents = parse_euros(args.amount)
    if amount_cents <= 0:
        raise UsageError("a reload amount must be positive")

    async def main() -> None:
        async with connection(role_dsn(dsn, roles.OPS)) as conn:
            await check_schema(conn)
            year = args.school_year or await reload_school_year(conn)
            async with conn.transaction():
                result = await reload_wallet(conn, args.dossier, year, amount_cents, args.reference)
                if not result.already_done:
                    await append_audit(conn, actor=cli_actor(), action="wallet.reload",
                                       subject=f"beneficiary:{args.dossier}",
                                       after={"school_year": year, "amount_cents": amount_cents,
                                              "reference": args.reference,
                                              "credited_cents": result.credited_cents,
                                              "fee_recovered_cents": result.fee_recovered_cents})
        if result.already_done:
            what = (f"the year's credit for {year}-{year + 1} was already made"
                    if args.reference is None else "already reloaded (same reference)")
            print(f"{what}: nothing credited; balance {format_euros(result.balance_cents)}")
        else:
            print(f"credited {format_euros(result.credited_cents)} for {year}-{year + 1}, "
                  f"fees recovered {format_euros(result.fee_recovered_cents)}, balance "
                  f"{format_euros(result.balance_cents)}")

    with cli_database(settings) as dsn:
        return _run(main())


def _override(settings: Settings, **changes) -> Settings:
    import dataclasses
    return dataclasses.replace(settings, **{k: v for k, v in changes.items() if v is not None})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hdfpay",
        description="Carte Génération #HDF transaction processor. With no DATABASE_URL, uses a "
                    "private PostgreSQL cluster (HDFPAY_DATA_DIR).")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="run the authorizer on a throwaway database with a scripted till session")
    p.add_argument("--serve", action="store_true",
                   help="then keep the servers up with a demo student's account, to click through"
                        " the students' space in a browser (Ctrl-C stops)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "serve", help="run the authorization server and the operator API",
        description="Two listeners, each with its own database pool: the terminal listener "
                    "(POST /v1/terminal, /healthz, /readyz, /metrics) on --host/--port, and the "
                    "operator API (/v1/ops/, OpenAPI at /v1/ops/openapi.json) on HDFPAY_OPS_HOST "
                    f"and HDFPAY_OPS_PORT (default 127.0.0.1:{DEFAULT_OPS_PORT}). TLS with "
                    "HDFPAY_TLS_CERT and HDFPAY_TLS_KEY; plain HTTP on loopback only. SIGTERM "
                    "drains: /readyz says no, requests in flight finish, then it stops.")
    p.add_argument("--host", help="terminal listener's address (default HDFPAY_HOST or 127.0.0.1)")
    p.add_argument("--port", type=whole_number,
                   help="terminal listener's port (default HDFPAY_PORT or 8080)")
    p.add_argument("--workers", type=whole_number,
                   help="this many server processes on the same ports, restarted if they die "
                        "(default HDFPAY_WORKERS or 1); worker i also serves its own /metrics on "
                        "127.0.0.1:HDFPAY_WORKER_METRICS_PORT+i (default 9180+i)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("db", help="the database: migrate, start/stop/status of the embedded "
                                  "cluster, its backups and point-in-time restore")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, text in (
            ("migrate", "apply what is missing of ledger/migrations and re-apply the SQL "
                        "functions of ledger/sql (DATABASE_URL or the embedded cluster)"),
            ("start", "start the embedded cluster (created on first use in HDFPAY_DATA_DIR) and "
                      "print its DATABASE_URL; it keeps running until 'db stop'"),
            ("stop", "stop the embedded cluster (fast shutdown: committed work is kept)"),
            ("status", "say whether the embedded cluster is running, and where it lives")):
        action_parser = actions.add_parser(action, help=text, description=text)
        if action != "migrate":
            action_parser.add_argument("--ha", action="store_true",
                                help="instead: etcd and two Patroni-managed PostgreSQL nodes on "
                                     "loopback, a primary and a synchronous standby "
                                     "(HDFPAY_HA_DIR; deploy/patroni/README.md)")
    add_backup_actions(actions)
    p.set_defaults(func=cmd_db, ha=False)

    p = sub.add_parser("seed", help="create the demo region (establishments, students, shops, terminals)")
    p.add_argument("--beneficiaries", type=whole_number, default=DEFAULT_SEED_BENEFICIARIES,
                   help=f"students to create (default {DEFAULT_SEED_BENEFICIARIES})")
    p.add_argument("--school-year", type=whole_number,
                   help="first year of the school year (default: current)")
    p.set_defaults(func=cmd_seed)

    p = sub.add_parser("reload", help="credit a beneficiary's wallet (pending fees recovered first)")
    p.add_argument("dossier", help="dossier number, e.g. HDF0000005")
    p.add_argument("amount", help="amount in euros, e.g. 100 or 12,50")
    p.add_argument("--school-year", type=whole_number,
                   help="first year of the school year (default: current)")
    p.add_argument("--reference", help="idempotency reference (default: one reload per student and year)")
    p.set_defaults(func=cmd_reload)

    p = sub.add_parser("keys", help="the HSM's keys: list them with their KCV, or make a new BDK "
                                    "(audited: needs the database)")
    p.add_argument("action", choices=["list", "new-bdk"])
    p.set_defaults(func=cmd_keys)

    p = sub.add_parser("terminals", help="provision terminals: add (TR-31 key block), activate, "
                                         "suspend, revoke, rotate their key, list")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("list", help="every terminal with its status, partner and keys",
                       description="Every terminal: status, partner, and each initial key as "
                                   "id:status:last counter ('none yet' until one is delivered).")
    for action, text in (
            ("add", "a PENDING terminal of a partner: a transport key (shown once) and its "
                    "AES-DUKPT initial key as a TR-31 key block"),
            ("activate", "let the terminal authorize (ACTIVE)"),
            ("suspend", "decline its purchases with 58 until activated again; it may still "
                        "reverse its own sales and close its batch"),
            ("revoke", "decline it for good (REVOKED is final)"),
            ("rotate", "a new initial key under the current BDK (the old one works until the "
                       "terminal's first message under the new one)")):
        q = actions.add_parser(action, help=text, description=text)
        q.add_argument("terminal_id", help="e.g. TERM-0001-3")
        if action == "add":
            q.add_argument("--partner", type=whole_number, required=True, help="partner id")
    p.set_defaults(func=cmd_terminals)

    # Run by `python -m loadtest` in a process of their own (main() hands them over): listed
    # here for --help only, so that the root never imports the benchmarks.
    for name, text in LOADTEST_COMMANDS.items():
        sub.add_parser(name, help=text, add_help=False).add_argument(
            "arguments", nargs=argparse.REMAINDER)

    add_terminal_commands(sub)
    for area in (cli_ledger, cli_operators, cli_school_year, cli_cards, cli_settlement, cli_rules,
                 cli_students):
        area.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in LOADTEST_COMMANDS:
        # The same process becomes the benchmark: signals and the exit code reach it directly.
        os.execv(sys.executable, [sys.executable, "-m", "loadtest", *argv])
    stop_on_sigterm()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env()
        return args.func(args, settings)
    except (ConfigError, EmbeddedDatabaseError, SchemaNotReady, MigrationError, UnknownBeneficiary,
            AmountError, UsageError, ProvisioningError, HsmError, ReloadRefused,
            AgentConfigError, SealedStateError, StoreLocked) as exc:
        print(f"hdfpay: error: {exc}", file=sys.stderr)
        return 2
    except (asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        print(f"hdfpay: error: database: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"hdfpay: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
