"""`hdfpay`: the one command line for the authorizer, its database and its tools."""

from __future__ import annotations

import argparse
import contextlib
import sys

import asyncpg
import uvloop

from authorizer import cli_cards, cli_operators, cli_school_year, cli_settlement
from authorizer.cli_support import cli_actor
from authorizer.config import ConfigError, Settings
from authorizer.database import SchemaNotReady, check_schema, connection, database_dsn
from authorizer.provisioning import ProvisioningError
from hsm.config import open_hsm_from_env
from hsm.interface import HsmError
from ledger.embedded import EmbeddedDatabaseError, EmbeddedPostgres, default_data_dir
from ledger.audit import append_audit
from ledger.migrate import MigrationError, migrate
from ledger.reload import ReloadRefused, UnknownBeneficiary, reload_wallet
from terminal_protocol.amounts import AmountError, format_euros, parse_euros
from terminal_protocol.agent.agent_config import AgentConfigError
from terminal_protocol.agent.cli import add_terminal_commands
from terminal_protocol.agent.local_store import StoreLocked
from terminal_protocol.agent.sealed_state import SealedStateError

DEFAULT_SEED_BENEFICIARIES = 1000
# The school year a reload or a seed is for: the current one, or in May and June (its wallet
# closed, rights renewal open from 20 June) the next one.
RELOAD_SCHOOL_YEAR_SQL = "SELECT reload_school_year()"


class UsageError(RuntimeError):
    pass


def _run(coro) -> int:
    return uvloop.run(coro) or 0


def cmd_demo(args, settings: Settings) -> int:
    from authorizer.demo import run_demo
    return _run(run_demo(settings))


def cmd_serve(args, settings: Settings) -> int:
    from authorizer.json_logs import configure_json_logging
    from authorizer.server import serve_forever
    configure_json_logging()
    settings = _override(settings, host=args.host, port=args.port)
    settings.check_transport()
    hsm = open_hsm_from_env() if settings.terminal_authentication == "dukpt" else None

    async def main() -> None:
        async with connection(dsn) as conn:
            await check_schema(conn)
        await serve_forever(settings, dsn, hsm)

    try:
        with database_dsn(settings.database_url) as dsn:
            return _run(main())
    finally:
        if hsm is not None:
            hsm.close()


def cmd_keys(args, settings: Settings) -> int:
    import os
    from authorizer.provisioning import new_bdk
    from hsm.config import BACKEND_VARIABLE, KEYSTORE_VARIABLE, SOFTWARE
    keystore = os.environ.get(KEYSTORE_VARIABLE)
    create = (args.action == "new-bdk" and os.environ.get(BACKEND_VARIABLE, SOFTWARE) == SOFTWARE
              and bool(keystore) and not os.path.exists(keystore))
    if create:
        print(f"creating the encrypted keystore {keystore}")
    with contextlib.closing(open_hsm_from_env(create=create)) as hsm:
        if args.action == "new-bdk":
            print(f"new BDK {new_bdk(hsm)}: new terminals and rotations now use it")
        for key in sorted(hsm.list_keys(), key=lambda k: (k.usage.value, k.created_at)):
            print(f"{key.usage.value}  {key.alias:<32} KCV {key.kcv}  created {key.created_at:%Y-%m-%d %H:%M}")
    return 0


def cmd_terminals(args, settings: Settings) -> int:
    from authorizer import provisioning

    async def main() -> None:
        async with connection(dsn) as conn:
            await check_schema(conn)
            if args.action == "list":
                for row in await conn.fetch(
                        "SELECT t.id, t.status, p.name, string_agg(encode(k.initial_key_id, 'hex')"
                        " || ':' || k.status || ':' || k.last_counter, ' ') AS keys FROM terminals t"
                        " JOIN partners p ON p.id = t.partner_id LEFT JOIN terminal_keys k"
                        " ON k.terminal_id = t.id GROUP BY 1, 2, 3 ORDER BY 1"):
                    print(f"{row['id']:<16} {row['status']:<9} {row['name']:<36} {row['keys'] or '-'}")
                return
            if args.action in ("activate", "suspend", "revoke"):
                status = {"activate": "ACTIVE", "suspend": "SUSPENDED", "revoke": "REVOKED"}[args.action]
                await provisioning.set_terminal_status(conn, args.terminal_id, status,
                                                       actor=cli_actor())
                print(f"terminal {args.terminal_id}: {status}")
                return
            with contextlib.closing(open_hsm_from_env()) as hsm:
                if args.action == "add":
                    if args.partner is None:
                        raise UsageError("'terminals add' needs --partner")
                    delivered = await provisioning.add_terminal(conn, hsm, args.terminal_id,
                                                                args.partner, actor=cli_actor())
                else:
                    delivered = await provisioning.rotate_terminal_key(conn, hsm, args.terminal_id,
                                                                       actor=cli_actor())
        _print_delivery(delivered)

    with database_dsn(settings.database_url) as dsn:
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


def cmd_db(args, settings: Settings) -> int:
    if args.action == "migrate":
        async def main() -> None:
            async with connection(dsn) as conn:
                applied = await migrate(conn)
            print(f"applied {', '.join(applied)}" if applied else "database already up to date")
        with database_dsn(settings.database_url) as dsn:
            return _run(main())
    if settings.database_url:
        raise UsageError("DATABASE_URL is set: that server is not managed by hdfpay "
                         f"('hdfpay db {args.action}' manages only the embedded cluster)")
    cluster = EmbeddedPostgres(default_data_dir())
    if args.action == "start":
        dsn = cluster.start()
        print(f"embedded PostgreSQL running in {cluster.data_dir}\nDATABASE_URL={dsn}")
    elif args.action == "stop":
        print("stopped" if cluster.stop() else f"not running ({cluster.data_dir})")
    else:
        state = "running" if cluster.is_running() else "stopped"
        print(f"embedded PostgreSQL in {cluster.data_dir}: {state}")
    return 0


def cmd_seed(args, settings: Settings) -> int:
    from ledger.demo_region import seed_demo_region

    async def main() -> None:
        async with connection(dsn) as conn:
            await check_schema(conn)
            year = args.school_year or await conn.fetchval(RELOAD_SCHOOL_YEAR_SQL)
            summary = await seed_demo_region(conn, beneficiaries=args.beneficiaries, school_year=year)
        if summary.already_seeded:
            print("the database already holds a region; nothing changed")
        print(f"{summary.beneficiaries} beneficiaries, {summary.cards} cards, {summary.partners} "
              f"partners, {summary.terminals} terminals, {format_euros(summary.funded_cents)} funded")

    with database_dsn(settings.database_url) as dsn:
        return _run(main())


def cmd_reload(args, settings: Settings) -> int:
    amount_cents = parse_euros(args.amount)
    if amount_cents <= 0:
        raise AmountError("a reload amount must be positive")

    async def main() -> None:
        async with connection(dsn) as conn:
            await check_schema(conn)
            year = args.school_year or await conn.fetchval(RELOAD_SCHOOL_YEAR_SQL)
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
            print(f"already reloaded (same reference): nothing credited; balance "
                  f"{format_euros(result.balance_cents)}")
        else:
            print(f"credited {format_euros(result.credited_cents)} for {year}-{year + 1}, "
                  f"fees recovered {format_euros(result.fee_recovered_cents)}, balance "
                  f"{format_euros(result.balance_cents)}")

    with database_dsn(settings.database_url) as dsn:
        return _run(main())


def cmd_check(args, settings: Settings) -> int:
    from ledger.invariants import ledger_violations

    async def main() -> int:
        async with connection(dsn) as conn:
            violations = await ledger_violations(conn)
        for rule, detail in violations:
            print(f"VIOLATION {rule}: {detail}")
        print("ledger balanced" if not violations else f"{len(violations)} violation(s)")
        return 1 if violations else 0

    with database_dsn(settings.database_url) as dsn:
        return _run(main())


def cmd_bench(args, settings: Settings) -> int:
    from authorizer.bench import BenchOptions, run_bench
    options = BenchOptions(cards=args.cards, seconds=args.seconds,
                           concurrency=args.concurrency, output=args.output)
    return run_bench(options, settings)


def cmd_loadtest(args, settings: Settings) -> int:
    from authorizer.loadtest import LoadtestOptions, run_loadtest
    return run_loadtest(LoadtestOptions(scenario=args.scenario, users=args.users,
                                        seconds=args.seconds, cards=args.cards,
                                        output=args.output, think_ms=args.think_ms), settings)


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
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("serve", help="run the authorization server")
    p.add_argument("--host", help="listen address (default HDFPAY_HOST or 127.0.0.1)")
    p.add_argument("--port", type=int, help="listen port (default HDFPAY_PORT or 8080)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("db", help="the database: migrate, or start/stop/status of the embedded cluster")
    p.add_argument("action", choices=["migrate", "start", "stop", "status"])
    p.set_defaults(func=cmd_db)

    p = sub.add_parser("seed", help="create the demo region (establishments, students, shops, terminals)")
    p.add_argument("--beneficiaries", type=int, default=DEFAULT_SEED_BENEFICIARIES)
    p.add_argument("--school-year", type=int, help="first year of the school year (default: current)")
    p.set_defaults(func=cmd_seed)

    p = sub.add_parser("reload", help="credit a beneficiary's wallet (pending fees recovered first)")
    p.add_argument("dossier", help="dossier number, e.g. HDF0000005")
    p.add_argument("amount", help="amount in euros, e.g. 100 or 12,50")
    p.add_argument("--school-year", type=int, help="first year of the school year (default: current)")
    p.add_argument("--reference", help="idempotency reference (default: one reload per student and year)")
    p.set_defaults(func=cmd_reload)

    p = sub.add_parser("keys", help="the HSM's keys: list them with their KCV, or make a new BDK")
    p.add_argument("action", choices=["list", "new-bdk"])
    p.set_defaults(func=cmd_keys)

    p = sub.add_parser("terminals", help="provision terminals: add (TR-31 key block), activate, "
                                         "suspend, revoke, rotate their key, list")
    p.add_argument("action", choices=["list", "add", "activate", "suspend", "revoke", "rotate"])
    p.add_argument("terminal_id", nargs="?", help="e.g. TERM-0001-3")
    p.add_argument("--partner", type=int, help="partner id (for add)")
    p.set_defaults(func=cmd_terminals)

    p = sub.add_parser("check", help="verify the ledger's invariants (debits = credits, no negative wallet)")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("bench", help="end-to-end authorization benchmark beside pgbench")
    p.add_argument("--cards", type=int, default=100_000, help="cards to seed (default 100000)")
    p.add_argument("--seconds", type=int, default=10, help="duration of each measured run (whole seconds)")
    p.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")],
                   default=[1, 16, 64], help="comma-separated client concurrencies (default 1,16,64)")
    p.add_argument("--output", default="bench-results.json", help="JSON results file")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("loadtest", help="a locust scenario (peak, hot-card, reversal-storm, "
                                        "decline-mix) on a throwaway database, then the ledger checked")
    p.add_argument("scenario", choices=["peak", "hot-card", "reversal-storm", "decline-mix"])
    p.add_argument("--users", type=int, default=10, help="locust users, one terminal each (default 10)")
    p.add_argument("--seconds", type=int, default=30, help="run time (default 30)")
    p.add_argument("--cards", type=int, default=100_000, help="cards to seed (default 100000)")
    p.add_argument("--think-ms", type=int, default=0,
                   help="a cashier's mean pause between sales (default 0: back to back)")
    p.add_argument("--output", default="loadtest-results",
                   help="directory for locust's CSV and HTML report (default ./loadtest-results)")
    p.set_defaults(func=cmd_loadtest)

    add_terminal_commands(sub)
    for area in (cli_operators, cli_school_year, cli_cards, cli_settlement):
        area.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "action", None) not in (None, "list", "migrate", "start", "stop", "status",
                                             "new-bdk") and hasattr(args, "terminal_id") \
            and not args.terminal_id:
        parser.error(f"'terminals {args.action}' needs a terminal id")
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
