"""`hdfpay demo`: a whole region on a throwaway database, and a till session read as a cashier would.

Starts a private PostgreSQL cluster in a temporary directory (or a fresh `hdfpay_demo` database on
DATABASE_URL's server) and a software HSM whose keystore is encrypted under a random passphrase in
the same directory; migrates, seeds the demo region, provisions every terminal with its AES-DUKPT
key (TR-31 blocks), starts the authorizer on a free loopback port and plays a scripted session
through the real, MAC'd HTTP protocol. Everything is deleted at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import os
import signal
import tempfile
from pathlib import Path
from typing import Iterator

import asyncpg

from hdfpay.config import Settings
from ledger.rules import current_rules
from ledger import school_calendar
from ledger.database import connection, recreate_database
from backoffice.provisioning import new_bdk, provision_unkeyed_terminals
from hdfpay.server import running_server
from hsm.software_backend import SoftwareHsm
from ledger.clock import pin_clock
from ledger.wallets import card_balance_cents
from ledger.demo_region import PARTNERS, card_uid, seed_demo_region, terminal_id
from ledger.embedded import throwaway_cluster, throwaway_workdir
from ledger.invariants import ledger_violations
from ledger.migrate import migrate
from ledger.students import create_account, dossier_of_card
from terminal_protocol.amounts import format_euros
from terminal_protocol.cashier_display import cashier_lines, masked_uid
from terminal_protocol.client import TerminalClient
from terminal_protocol.ksn_counter import MemoryCounter
from terminal_protocol.terminal_keys import TerminalKeys
from terminal_protocol.messages import Response

DEMO_BENEFICIARIES = 1000
DEMO_DATABASE = "hdfpay_demo"
# Outside the wallet window, the demo (and the benchmarks) play the next school year's rentrée:
# this long after its wallets open, at this hour.
RENTREE_AFTER_WALLET_OPENS = dt.timedelta(days=62, hours=10)
# When the demo moves the clock past the wallet's closing, it goes this far past it.
AFTER_CLOSING = dt.timedelta(hours=9)


async def demo_business_time(conn: asyncpg.Connection) -> tuple[dt.datetime, int]:
    """The moment to pin and its school year: now if the wallet window is open, else the next
    school year's rentrée (the calendar is the ledger's: ledger.school_calendar)."""
    zone = await school_calendar.business_time_zone(conn)
    now = dt.datetime.now(zone).replace(microsecond=0)
    year = await school_calendar.school_year_of(conn, now)
    if await school_calendar.in_wallet_window(conn, now):
        return now, year
    opens = (await school_calendar.calendar(conn, year + 1)).wallet_opens_at
    return (opens + RENTREE_AFTER_WALLET_OPENS).astimezone(zone), year + 1


@contextlib.contextmanager
def demo_environment(database_url: str | None) -> Iterator[tuple[str, SoftwareHsm]]:
    """(DSN, HSM) in a temporary directory removed on exit."""
    with throwaway_workdir("demo") as workdir:
        hsm = SoftwareHsm(workdir / "keystore.json", passphrase=os.urandom(16).hex(), create=True)
        try:
            yield (database_url or throwaway_cluster(workdir).start()), hsm
        finally:
            hsm.close()


class Till:
    """Prints each step as the cashier sees it."""

    def __init__(self, client: TerminalClient, shop: str, out=print) -> None:
        self.client = client
        self.shop = shop
        self.out = out

    def header(self, text: str) -> None:
        self.out(f"\n— {text}")

    def show(self, action: str, response: Response) -> Response:
        self.out(f"  [{self.shop} · {self.client.terminal_id}] {action}")
        for line in cashier_lines(response):
            self.out(f"      {line}")
        return response

    async def sale(self, uid: bytes, amount_cents: int, partial_ok: bool = True, **kw) -> Response:
        response = await self.client.purchase(uid, amount_cents, partial_ok=partial_ok, **kw)
        return self.show(f"Vente {format_euros(amount_cents)} · carte {masked_uid(uid)}", response)


async def run_demo(settings: Settings, out=print, *, keep_serving: bool = False) -> int:
    """The scripted till session; with `keep_serving`, the servers stay up afterwards with a demo
    student's account, for a person to click through the students' space, until Ctrl-C."""
    out("Carte Génération #HDF — démonstration du serveur d'autorisation")
    with demo_environment(settings.database_url) as (base_dsn, hsm):
        # On someone else's server, a database of our own; our throwaway cluster is all ours.
        dsn = (await recreate_database(base_dsn, DEMO_DATABASE) if settings.database_url
               else base_dsn)
        async with connection(dsn) as conn:
            await migrate(conn)
            business_time, school_year = await demo_business_time(conn)
            await pin_clock(conn, business_time)
            summary = await seed_demo_region(conn, beneficiaries=DEMO_BENEFICIARIES,
                                             school_year=school_year)
            bdk = new_bdk(hsm)
            deliveries = await provision_unkeyed_terminals(conn, hsm)
            keys = {terminal: TerminalKeys.from_key_block(delivered.key_block, transport_key,
                                                          MemoryCounter(), delivered.initial_key_id)
                    for terminal, (delivered, transport_key) in deliveries.items()}
            out(f"Région de démonstration : {summary.beneficiaries} bénéficiaires, "
                f"{summary.partners} partenaires, {summary.terminals} terminaux, "
                f"{format_euros(summary.funded_cents)} chargés pour l'année scolaire "
                f"{school_year}-{school_year + 1}.")
            out(f"Horloge de démonstration : {business_time:%d/%m/%Y %H:%M} ({business_time.tzinfo})")
            out(f"Clés : BDK {bdk.alias} (KCV {bdk.kcv}) dans un HSM logiciel au trousseau chiffré ; "
                f"{len(keys)} terminaux ont reçu leur clé initiale AES-DUKPT en bloc TR-31.")
            server_settings = dataclasses.replace(settings, host="127.0.0.1", port=0,
                                                  terminal_authentication="dukpt")
            with tempfile.TemporaryDirectory(prefix="hdfpay-demo-photos-") as photos:
                server_settings = dataclasses.replace(server_settings, photo_dir=Path(photos))
                async with running_server(server_settings, dsn, hsm) as server:
                    out(f"Serveur d'autorisation : {server.url} (messages signés AES-CMAC, anti-rejeu)")
                    await _session(server.url, keys, conn, school_year, business_time, out)
                    violations = await ledger_violations(conn)
                    if keep_serving and not violations:
                        await _serve_students(conn, server, out)
    if violations:
        out(f"\nGRAND LIVRE DÉSÉQUILIBRÉ : {violations}")
        return 1
    out("\nGrand livre vérifié : débits = crédits, aucun solde négatif, chaque acceptation a son"
        " écriture.")
    return 0


async def _session(url: str, keys: dict[str, TerminalKeys], conn: asyncpg.Connection,
                   school_year: int, business_time: dt.datetime, out) -> None:
    shop = PARTNERS[0][0]

    def terminal(name: str) -> TerminalClient:
        return TerminalClient(url, name, keys[name])

    async with terminal(terminal_id(1, 1)) as client:
        till = Till(client, shop, out)

        till.header("Achats acceptés, et une nouvelle tentative réseau qui ne débite pas deux fois")
        student = card_uid(5)
        await till.sale(student, 23_90)
        request = client.purchase_request(student, 12_40)
        till.show(f"Vente {format_euros(12_40)} · carte {masked_uid(student)}",
                           await client.send(request))
        replay = await client.send(request)
        out(f"  (même message renvoyé après une coupure : réponse identique, code {replay.rc}, "
            f"solde {format_euros(replay.balance_cents or 0)} — aucun second débit)")

        till.header("Paiement partiel : le solde ne couvre pas tout")
        partial_card = card_uid(7)
        balance = await card_balance_cents(conn, partial_card, school_year)
        await till.sale(partial_card, balance + 20_00)

        till.header("Chaque motif de refus")
        over_limit = (await current_rules(conn)).max_purchase_amount_cents + 50_00
        await till.sale(card_uid(8), over_limit, partial_ok=False)         # 61 over the limit
        low = card_uid(7)                                                   # now at 0 €
        await till.sale(low, 5_00, partial_ok=False)                        # 51
        await till.sale(card_uid(1), 10_00)                                 # 41 lost
        await till.sale(card_uid(2), 10_00)                                 # 43 stolen
        await till.sale(card_uid(3), 10_00)                                 # 62 damaged
        await till.sale(card_uid(50), 10_00)                                # 57 no rights
        await till.sale(bytes.fromhex("04FFFFFFFFFF01"), 10_00)              # 14 unknown
        async with terminal(terminal_id(1, 2)) as revoked:
            await Till(revoked, shop, out).sale(card_uid(9), 10_00)          # 58 revoked terminal
        async with terminal(terminal_id(len(PARTNERS), 1)) as suspended:
            await Till(suspended, PARTNERS[-1][0], out).sale(card_uid(9), 10_00)  # 58 partner
        closes = (await school_calendar.calendar(conn, school_year)).wallet_closes_at
        after_closing = closes + AFTER_CLOSING
        await pin_clock(conn, after_closing)
        out(f"  (horloge avancée au {after_closing:%d/%m/%Y %H:%M} : le porte-monnaie est fermé "
            f"depuis le {closes:%d/%m/%Y à %H:%M})")
        await till.sale(card_uid(9), 10_00)                                 # 54
        await pin_clock(conn, business_time)
        out(f"  (horloge ramenée au {business_time:%d/%m/%Y %H:%M} : le porte-monnaie est de "
            "nouveau ouvert pour la suite)")

        till.header("Annulation de la dernière vente (le client renonce)")
        voided = await till.sale(card_uid(11), 31_50)
        till.show("Annulation de la vente", await client.reversal(voided.request_id))

        till.header("Remboursement d'un article rendu, sur présentation du ticket")
        sale = await till.sale(card_uid(12), 42_00)
        till.show(f"Remboursement {format_euros(15_00)} · ticket {sale.rrn}",
                  await client.refund(sale.rrn, 15_00, card_uid(12)))
        till.show(f"Remboursement {format_euros(30_00)} · ticket {sale.rrn} (dépasse le reste)",
                  await client.refund(sale.rrn, 30_00, card_uid(12)))


DEMO_STUDENT_PASSWORD = "demo-generation-hdf"


async def _serve_students(conn: asyncpg.Connection, server, out) -> None:
    """A demo student (the one of the refund above) with a known password, then wait."""
    dossier = await dossier_of_card(conn, card_uid(12))
    await create_account(conn, dossier, password=DEMO_STUDENT_PASSWORD)
    out(f"\nEspace des élèves : {server.portal_url}/ — identifiant {dossier}, mot de passe "
        f"{DEMO_STUDENT_PASSWORD}")
    out(f"  aussi : {server.portal_url}/creer-un-compte (première demande de carte) et "
        f"{server.portal_url}/ou-utiliser-ma-carte ; les e-mails restent en file d'attente "
        "(aucun serveur SMTP dans la démonstration).")
    out(f"API des opérateurs : {server.ops_url}/v1/ops/ — Ctrl-C pour arrêter.")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
