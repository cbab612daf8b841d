"""The terminal agent end to end, the cashier's side: what the screen shows and a cancel, the
supervisor's PIN, a refund to the card tapped, the tickets. A virtual card on a vpcd reader, read
through the real pcscd, the real server and PostgreSQL behind it."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import sqlite3
from dataclasses import replace

from ledger.demo_region import card_uid

from terminal_protocol.agent.runtime import running_agent

from agent_fixtures import AGENT_ENV, SUPERVISOR_PIN, purchases_of, tap_again, until_shown
from conftest import ACTIVE_TERMINAL, CROWD_TERMINALS, balance_of
from pcsc_fixtures import READER_0, wait_reader_state

CARD = card_uid(11)
OTHER_CARD = card_uid(12)


async def test_the_card_and_time_are_shown_and_a_cancel_debits_nothing(agent_for, virtual_card,
                                                                        conn):
    async with agent_for(ACTIVE_TERMINAL) as agent:
        shown: list[str] = []
        agent.on_screen = shown.append
        too_much = await agent.sale(300_01)             # over the till's own bound: no tap asked
        waiting = asyncio.create_task(agent.sale(3_00))
        await until_shown(lambda: shown)
        agent.cancel_tap()
        cancelled = await waiting
        shown_before_the_tap = list(shown)
        virtual_card(0).insert(CARD)
        sold = await agent.sale(3_00)
    assert too_much.status == "refused" and shown_before_the_tap == ["Présentez la carte"]
    assert (cancelled.status, cancelled.lines) == ("cancelled", ("VENTE ABANDONNÉE",
                                                                "3,00\u00a0€ : aucun débit"))
    assert sold.status == "approved"
    assert re.fullmatch(r"Carte 04•+000B · \d\d/\d\d/\d{4} \d\d:\d\d", sold.lines[-1]), sold.lines
    assert [r["amount_approved_cents"] for r in await purchases_of(conn)] == [3_00]


class _Clock:
    """The agent's wall clock, moved by the test (the void's one minute without the PIN)."""

    def __init__(self) -> None:
        self.shift = dt.timedelta(0)

    def __call__(self) -> dt.datetime:
        return dt.datetime.now(dt.timezone.utc) + self.shift


async def test_the_supervisor_pin_guards_refunds_late_voids_and_the_close(agent_config, pcscd,
                                                                        virtual_card, conn):
    """A void in the sale's first minute needs only the cashier's confirmation; later, and for a
    refund and the close, the supervisor's PIN. Wrong PINs lock it, across a restart too."""
    config, clock, card = agent_config(CROWD_TERMINALS[9]), _Clock(), virtual_card(0)
    before = await balance_of(conn, CARD)
    async with running_agent(config, environ=AGENT_ENV, now=clock) as agent:
        card.insert(CARD)
        sale = await agent.sale(6_00)
        fresh = agent.void_preview()
        clock.shift = dt.timedelta(seconds=61)
        late = agent.void_preview()
        without_pin = await agent.void_last()
        wrong = await agent.void_last("0000")
        voided = await agent.void_last(SUPERVISOR_PIN)
        tap_again(card)
        kept = await agent.sale(8_00)
        refund_without_pin = await agent.refund(kept.rrn, 1_00)
        close_without_pin = await agent.close_batch()
        tries = [await agent.refund(kept.rrn, 1_00, pin) for pin in ("1111", "2222", "3333")]
    async with running_agent(config, environ=AGENT_ENV) as agent:
        still_locked = await agent.refund(kept.rrn, 1_00, SUPERVISOR_PIN)
    assert (fresh.status, fresh.details["needs_pin"]) == ("confirm", False)
    assert fresh.lines[0] == "Annuler la vente de 6,00\u00a0€ ?"
    assert fresh.lines[1].startswith("Carte 04••••••••000B · ") and sale.rrn in fresh.lines[1]
    assert late.details["needs_pin"] and late.lines[-1].startswith("Code superviseur demandé")
    assert without_pin.lines == ("CODE SUPERVISEUR REQUIS",
                                 "Annulation d'une vente de plus d'une minute : appelez le responsable")
    assert (wrong.status, wrong.lines[0], wrong.details) == (
        "pin_refused", "CODE SUPERVISEUR ERRONÉ", {"attempts_left": 2})
    assert voided.status == "approved" and voided.lines[0].startswith("ANNULATION ACCEPTÉE")
    assert refund_without_pin.status == close_without_pin.status == "pin_required"
    assert [t.status for t in tries] == ["pin_refused"] * 3
    assert tries[2].lines == ("CODE SUPERVISEUR BLOQUÉ", "Trop d'essais : réessayez dans 5 min")
    assert still_locked.lines[0] == "CODE SUPERVISEUR BLOQUÉ"
    assert [(r["amount_approved_cents"], r["amount_reversed_cents"])
            for r in await purchases_of(conn, CROWD_TERMINALS[9])] == [(6_00, 6_00), (8_00, 0)]
    assert await conn.fetchval("SELECT count(*) FROM authorizations WHERE terminal_id = $1"
                               " AND message_type IN ('REFUND', 'BATCH_CLOSE')", CROWD_TERMINALS[9]) == 0
    assert await balance_of(conn, CARD) == before - 8_00


async def test_a_refund_goes_to_the_card_tapped_and_its_uid_is_not_kept(agent_config, pcscd,
                                                                       virtual_card, conn):
    """The refund asks for the card: another student's card is refused; the card that paid gets
    the money, and the journal keeps no whole UID once the server answered."""
    config, card = agent_config(CROWD_TERMINALS[10]), virtual_card(0)
    async with running_agent(config, environ=AGENT_ENV) as agent:
        shown: list[str] = []
        agent.on_screen = shown.append
        card.insert(CARD)
        sale = await agent.sale(9_00)
        card.remove()
        await asyncio.to_thread(wait_reader_state, READER_0, present=False)
        card.insert(OTHER_CARD)
        other = await agent.refund(sale.rrn, 3_00, SUPERVISOR_PIN)
        card.remove()
        await asyncio.to_thread(wait_reader_state, READER_0, present=False)
        card.insert(CARD)
        before = await balance_of(conn, CARD)
        refunded = await agent.refund(sale.rrn, 3_00, SUPERVISOR_PIN)
        await asyncio.to_thread(tap_again, card)
        too_much = await agent.refund(sale.rrn, 7_00, SUPERVISOR_PIN)
    assert too_much.lines[:2] == ("REFUSÉ : Montant supérieur au reste remboursable de la vente"
                                  " (code 13)", "Remboursable au plus : 6,00\u00a0€")
    assert "Présentez la carte à rembourser (celle de l'achat)" in shown
    assert (other.status, other.rc) == ("declined", "25")
    assert other.lines[0] == ("REFUSÉ : Cette carte n'a pas payé cette vente : présentez la carte"
                              " de l'achat (code 25)")
    assert (refunded.status, refunded.approved_cents) == ("approved", 3_00)
    assert await balance_of(conn, CARD) == before + 3_00
    journal = config.journal_file.read_bytes() + b"".join(
        p.read_bytes() for p in config.state_dir.glob("journal.sqlite-*"))
    for uid in (CARD, OTHER_CARD):
        assert uid.hex().upper().encode() not in journal


async def test_each_sale_void_and_refund_prints_a_ticket_kept_in_the_journal(
        agent_config, pcscd, virtual_card, tmp_path, conn):
    """Tickets go to the ESC/POS printer (its device file is a plain file here) and stay in the
    journal; the last one reprints as a copy; the day's list shows each RRN; a printer that
    fails never fails the sale."""
    printer = tmp_path / "lp0"
    config = replace(agent_config(CROWD_TERMINALS[11]), receipt_printer=str(printer),
                     shop_name="Librairie du Beffroi")
    card = virtual_card(0)
    async with running_agent(config, environ=AGENT_ENV) as agent:
        card.insert(CARD)
        sale = await agent.sale(12_50)
        sale_ticket = printer.read_bytes()
        voided = await agent.void_last()
        void_ticket = printer.read_bytes()
        tap_again(card)
        kept = await agent.sale(7_00)
        tap_again(card)
        refunded = await agent.refund(kept.rrn, 2_00, SUPERVISOR_PIN)
        copy = await agent.reprint_last()
        copy_ticket = printer.read_bytes()
        day = agent.transactions()
    assert sale.details["printed"] and voided.details["printed"] and refunded.details["printed"]
    text = sale.details["receipt"]
    assert "Librairie du Beffroi" in text and CROWD_TERMINALS[11] in text
    for expected in ("VENTE", "Carte", "04••••••••000B", "12,50\u00a0€", sale.rrn, "Solde restant"):
        assert expected in text, (expected, text)
    assert all(len(line) <= 42 for line in text.splitlines())
    assert sale_ticket.startswith(b"\x1bt") and sale_ticket.endswith(b"\x1dV\x00")   # ESC/POS, cut
    assert b"VENTE" in sale_ticket and sale.rrn.encode() in sale_ticket
    assert b"ANNULATION DE VENTE" in void_ticket and sale.rrn.encode() in void_ticket
    assert "REMBOURSEMENT" in refunded.details["receipt"] and kept.rrn in refunded.details["receipt"]
    assert copy.lines[0].strip() == "*** DUPLICATA ***" and b"DUPLICATA" in copy_ticket
    assert b"REMBOURSEMENT" in copy_ticket
    rows = day.details["items"]
    assert [(r["kind"], r["amount_cents"], r["state"]) for r in rows] == [
        ("refund", 2_00, "acceptée"), ("purchase", 7_00, "acceptée"),
        ("reversal", 12_50, "acceptée"), ("purchase", 12_50, "annulée")]
    assert sale.rrn in day.lines[3] and kept.rrn in day.lines[1]
    receipts = [r[0] for r in await asyncio.to_thread(_journal_receipts, config)]
    assert len(receipts) == 4 and receipts[0] == text

    broken = replace(config, receipt_printer=str(tmp_path / "no-such-dir" / "lp0"))
    async with running_agent(broken, environ=AGENT_ENV) as agent:
        tap_again(card)
        sold = await agent.sale(1_00)
    assert sold.status == "approved" and not sold.details["printed"]
    assert sold.lines[-1] == "Ticket non imprimé : vérifiez l'imprimante puis réimprimez-le"


def _journal_receipts(config):
    with sqlite3.connect(config.journal_file) as db:
        return db.execute("SELECT receipt FROM messages WHERE receipt IS NOT NULL ORDER BY rowid").fetchall()
