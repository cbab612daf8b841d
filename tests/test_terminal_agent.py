"""The terminal agent end to end: a virtual card on a vpcd reader, read through the real pcscd,
a purchase signed with sealed future keys, the real server and PostgreSQL behind it."""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import sqlite3
import time
from dataclasses import replace

from ledger.demo_region import card_uid

from terminal_protocol.agent.runtime import running_agent

from agent_fixtures import AGENT_ENV, SUPERVISOR_PIN, TEST_TAP_TIMEOUT_MS, free_port
from conftest import ACTIVE_TERMINAL, CROWD_TERMINALS, balance_of, set_balance
from flaky_link import FlakyLink, server_port
from pcsc_fixtures import READER_0, READER_1, wait_reader_state

CARD = card_uid(11)
OTHER_CARD = card_uid(12)
LOST = card_uid(1)
LIFT_FIRST = "Retirez la carte puis présentez-la à nouveau"
POLL_S = 0.02   # how often a test looks at what the agent showed (bounded by the tap timeout)


async def _until(condition) -> None:
    """Poll what the agent showed, at most the agent's tap timeout."""
    deadline = time.monotonic() + TEST_TAP_TIMEOUT_MS / 1000
    while not condition():
        assert time.monotonic() < deadline, "the agent never showed it"
        await asyncio.sleep(POLL_S)


async def _purchases(conn, terminal: str = ACTIVE_TERMINAL):
    return await conn.fetch(
        "SELECT c.uid, a.amount_approved_cents, a.amount_reversed_cents, a.response_code"
        " FROM authorizations a LEFT JOIN cards c ON c.id = a.card_id"
        " WHERE a.terminal_id = $1 AND a.message_type = 'PURCHASE' ORDER BY a.id", terminal)


async def test_a_tap_is_an_approved_purchase(agent_for, virtual_card, conn):
    before = await balance_of(conn, CARD)
    async with agent_for(ACTIVE_TERMINAL) as agent:
        virtual_card(0).insert(CARD)      # after the agent's first look: a new tap
        outcome = await agent.sale(12_50)
    assert (outcome.status, outcome.rc, outcome.approved_cents) == ("approved", "00", 12_50)
    assert outcome.lines[0].startswith("ACCEPTÉ") and "12,50" in outcome.lines[0]
    assert outcome.balance_cents == before - 12_50 == await balance_of(conn, CARD)
    assert [(r["uid"], r["amount_approved_cents"]) for r in await _purchases(conn)] == [(CARD, 12_50)]


async def test_an_opposed_card_is_declined_in_french(agent_for, virtual_card, conn):
    async with agent_for(ACTIVE_TERMINAL) as agent:
        virtual_card(0).insert(LOST)
        outcome = await agent.sale(5_00)
    assert (outcome.status, outcome.rc, outcome.approved_cents) == ("declined", "41", 0)
    assert outcome.lines[0] == "REFUSÉ : Carte déclarée perdue (code 41)"
    assert outcome.lines[1].startswith("Carte 04••••••••0001 · ")   # masked, with date and time


async def test_short_funds_give_a_partial_approval_and_the_rest_to_collect(agent_for, virtual_card, conn):
    await set_balance(conn, CARD, 7_30)
    async with agent_for(ACTIVE_TERMINAL) as agent:
        virtual_card(0).insert(CARD)
        outcome = await agent.sale(20_00)
    assert (outcome.status, outcome.approved_cents, outcome.collect_cents) == ("partial", 7_30, 12_70)
    assert "Reste à encaisser par un autre moyen : 12,70\u00a0€" in outcome.lines
    assert await balance_of(conn, CARD) == 0


async def test_the_named_reader_is_the_one_read(agent_for, virtual_card, conn):
    async with agent_for(ACTIVE_TERMINAL, reader=READER_1) as agent:
        virtual_card(0).insert(OTHER_CARD)
        virtual_card(1).insert(CARD)
        outcome = await agent.sale(1_00)
    assert outcome.status == "approved"
    assert [r["uid"] for r in await _purchases(conn)] == [CARD]


async def test_a_card_lifted_mid_read_sends_nothing(agent_for, virtual_card, conn):
    card = virtual_card(0)
    card.vanish_on_get_uid = True
    async with agent_for(ACTIVE_TERMINAL) as agent:
        card.insert(CARD)
        outcome = await agent.sale(3_00)
    assert outcome.status == "card_error" and card.vanished.is_set()
    assert outcome.lines[0] == "LECTURE DE LA CARTE IMPOSSIBLE"
    assert await _purchases(conn) == []


def _tap_again(card) -> None:
    """Lift the card and place it again, once pcscd has seen it leave."""
    card.remove()
    wait_reader_state(READER_0, present=False)
    card.insert()


async def test_void_refund_totals_and_an_in_balance_close(agent_for, virtual_card, conn):
    before = await balance_of(conn, CARD)
    card = virtual_card(0)
    async with agent_for(ACTIVE_TERMINAL) as agent:
        card.insert(CARD)
        first = await agent.sale(10_00)
        _tap_again(card)
        second = await agent.sale(4_00)
        bad_reference = await agent.refund("12AB", 1_00, SUPERVISOR_PIN)
        voided = await agent.void_last()
        _tap_again(card)                        # the customer taps the card for the refund
        refunded = await agent.refund(first.rrn, 2_50, SUPERVISOR_PIN)
        nothing_to_void = await agent.void_last()                   # the last sale is voided
        totals = agent.totals()
        closed = await agent.close_batch(SUPERVISOR_PIN)
        after_close = agent.totals()
    assert (voided.status, voided.approved_cents) == ("approved", 4_00)
    assert voided.lines[0].startswith("ANNULATION ACCEPTÉE")
    assert (refunded.status, refunded.approved_cents) == ("approved", 2_50)
    assert refunded.lines[-1].startswith("Carte 04••••••••000B · ")
    assert nothing_to_void.status == "refused"
    assert bad_reference.lines == ("Référence invalide : les 12 chiffres du ticket",)
    assert totals.details["totals"] == {
        "purchases_count": 2, "purchases_cents": 14_00, "reversals_count": 1,
        "reversals_cents": 4_00, "refunds_count": 1, "refunds_cents": 2_50}
    assert "Net du jour : 7,50\u00a0€" in totals.lines
    assert (closed.status, closed.details["batch_number"]) == ("in_balance", 1)
    assert after_close.details["totals"]["purchases_count"] == 0
    assert second.approved_cents == 4_00
    assert await balance_of(conn, CARD) == before - 10_00 + 2_50


async def test_a_late_answer_is_reversed_not_kept(agent_config, pcscd, virtual_card, server, conn):
    """The server approves but its answer never arrives: the agent reverses the purchase."""
    link = await FlakyLink("127.0.0.1", server_port(server)).start()
    try:
        before = await balance_of(conn, CARD)
        config = agent_config(CROWD_TERMINALS[0], url=link.url)
        async with running_agent(config, environ=AGENT_ENV) as agent:
            virtual_card(0).insert(CARD)
            link.mode = "deaf"
            outcome = await agent.sale(9_00)
            assert outcome.status == "no_answer" and outcome.collect_cents == 9_00
            assert await balance_of(conn, CARD) == before - 9_00       # approved, answer lost
            link.mode = "forward"
            closed = await agent.close_batch(SUPERVISOR_PIN)                           # flushes the outbox
            assert agent.status()["pending"] == 0
        assert closed.status == "in_balance", closed.lines
        purchase, = await _purchases(conn, CROWD_TERMINALS[0])
        assert (purchase["amount_approved_cents"], purchase["amount_reversed_cents"]) == (9_00, 9_00)
        assert await balance_of(conn, CARD) == before
    finally:
        await link.close()


async def test_the_agent_reads_again_after_pcscd_restarts(agent_for, pcscd, virtual_card, conn):
    """pcscd counts insertions from zero again after a restart, so a card found on the reader
    then may be one that already paid: it must be lifted first, and then it pays."""
    async with agent_for(ACTIVE_TERMINAL) as agent:
        card = virtual_card(0)
        card.insert(CARD)
        assert (await agent.sale(1_00)).status == "approved"
        card.remove()
        wait_reader_state(READER_0, present=False)
        pcscd.restart()
        card.insert(CARD)                  # on the reader when the agent first looks again
        wait_reader_state(READER_0, present=True)
        shown: list[str] = []
        agent.on_screen = shown.append
        sale = asyncio.create_task(agent.sale(2_00))
        await _until(lambda: LIFT_FIRST in shown)
        assert shown == ["Présentez la carte", LIFT_FIRST] and not sale.done()
        await asyncio.to_thread(_tap_again, card)
        assert (await sale).status == "approved"
        assert b"hdfpay_agent_reader_restarts 1.0" in agent.metrics.text()
    assert [r["amount_approved_cents"] for r in await _purchases(conn)] == [1_00, 2_00]


async def test_a_close_without_answer_is_resent_before_anything_else(agent_config, pcscd,
                                                                     virtual_card, server, conn):
    """The server closed the batch but its answer was lost: the agent sends nothing else until
    the same close, resent, gets its answer; the batch then balances."""
    link = await FlakyLink("127.0.0.1", server_port(server)).start()
    try:
        config = agent_config(CROWD_TERMINALS[1], url=link.url)
        async with running_agent(config, environ=AGENT_ENV) as agent:
            virtual_card(0).insert(CARD)
            assert (await agent.sale(3_00)).status == "approved"
            link.mode = "deaf"
            lost = await agent.close_batch(SUPERVISOR_PIN)
            assert lost.lines[0] == "Réponse de clôture non reçue : relancez la clôture"
            link.mode = "forward"
            assert (await agent.void_last()).status == "refused"
            assert (await agent.sale(1_00)).status == "refused"
            closed = await agent.close_batch(SUPERVISOR_PIN)
            nothing_yet = agent.totals()
        assert (closed.status, closed.details["batch_number"]) == ("in_balance", 1)
        assert nothing_yet.details["totals"]["purchases_count"] == 0
        assert await conn.fetchval("SELECT count(*) FROM terminal_batches") == 1
    finally:
        await link.close()


async def test_a_till_retry_gets_the_first_sale_back(agent_for, virtual_card, conn):
    """A till that sends the same sale again (its own timeout, a double click) must not debit
    twice: the same till reference replays the first outcome, with no new tap."""
    async with agent_for(ACTIVE_TERMINAL) as agent:
        virtual_card(0).insert(CARD)
        first = await agent.sale(5_00, "TILL-42")
        again = await agent.sale(5_00, "TILL-42")
        other_amount = await agent.sale(6_00, "TILL-42")
    assert first.status == "approved"
    assert (again.status, again.rrn, again.approved_cents) == ("approved", first.rrn, 5_00)
    assert again.details == {"replayed": True} and again.lines[0] == first.lines[0]
    assert other_amount.status == "refused"
    assert [r["amount_approved_cents"] for r in await _purchases(conn)] == [5_00]


async def test_a_card_left_on_the_reader_is_not_charged_again_after_a_restart(agent_for,
                                                                              virtual_card, conn):
    """Sell, stop the agent with the card still on the reader, start it again and sell: the card
    must be lifted and presented again, and the cashier is told so."""
    card = virtual_card(0)
    async with agent_for(ACTIVE_TERMINAL) as agent:
        card.insert(CARD)
        assert (await agent.sale(10)).status == "approved"
    async with agent_for(ACTIVE_TERMINAL) as restarted:
        assert restarted.notice == LIFT_FIRST
        shown: list[str] = []
        restarted.on_screen = shown.append
        sale = asyncio.create_task(restarted.sale(20))
        await _until(lambda: LIFT_FIRST in shown)   # said once the agent looked at the reader
        assert shown == ["Présentez la carte", LIFT_FIRST]
        assert not sale.done() and [r["amount_approved_cents"] for r in await _purchases(conn)] == [10]
        await asyncio.to_thread(_tap_again, card)
        assert (await sale).status == "approved"
    assert [r["amount_approved_cents"] for r in await _purchases(conn)] == [10, 20]


async def test_the_screen_says_why_the_last_sale_cannot_be_voided(agent_config, pcscd,
                                                                    virtual_card, server, conn):
    """After a sale without answer (already reversed by the agent) or a declined sale, 'void'
    says which it was, instead of 'nothing to void'."""
    link = await FlakyLink("127.0.0.1", server_port(server)).start()
    try:
        config = agent_config(CROWD_TERMINALS[6], url=link.url)
        async with running_agent(config, environ=AGENT_ENV) as agent:
            card = virtual_card(0)
            card.insert(CARD)
            link.mode = "deaf"
            assert (await agent.sale(2_00)).status == "no_answer"
            link.mode = "forward"
            unanswered = await agent.void_last()
            card.remove()
            await asyncio.to_thread(wait_reader_state, READER_0, present=False)
            card.insert(LOST)
            declined = await agent.sale(4_00)
            refused_void = await agent.void_last()
        assert unanswered.lines[0] == ("La dernière vente (2,00\u00a0€) n'a pas eu de réponse : "
                                       "elle est déjà annulée")
        assert declined.rc == "41"
        assert refused_void.lines[0] == "La dernière vente (4,00\u00a0€) a été refusée : rien à annuler"
        assert refused_void.lines[1].startswith("Une vente plus ancienne se rembourse")
    finally:
        await link.close()


async def test_a_close_that_never_left_does_not_block_the_sales(agent_config, pcscd, virtual_card,
                                                                conn):
    """The connection was refused: the close never reached the server, so the next sale goes
    ahead (once the server is back) instead of 'Clôture en attente de réponse'."""
    unreachable = f"http://127.0.0.1:{free_port()}"
    config = agent_config(CROWD_TERMINALS[7], url=unreachable)
    async with running_agent(config, environ=AGENT_ENV) as agent:
        closed = await agent.close_batch(SUPERVISOR_PIN)
    assert closed.lines == ("Clôture non envoyée : serveur injoignable",
                            "Les ventes restent possibles ; relancez la clôture plus tard")
    async with running_agent(agent_config(CROWD_TERMINALS[7]), environ=AGENT_ENV) as agent:
        virtual_card(0).insert(CARD)
        sale = await agent.sale(1_50)
        assert sale.status == "approved", sale.lines
        assert (await agent.close_batch(SUPERVISOR_PIN)).status == "in_balance"


async def test_the_card_and_time_are_shown_and_a_cancel_debits_nothing(agent_for, virtual_card,
                                                                        conn):
    async with agent_for(ACTIVE_TERMINAL) as agent:
        shown: list[str] = []
        agent.on_screen = shown.append
        too_much = await agent.sale(300_01)             # over the till's own bound: no tap asked
        waiting = asyncio.create_task(agent.sale(3_00))
        await _until(lambda: shown)
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
    assert [r["amount_approved_cents"] for r in await _purchases(conn)] == [3_00]


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
        _tap_again(card)
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
            for r in await _purchases(conn, CROWD_TERMINALS[9])] == [(6_00, 6_00), (8_00, 0)]
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
        await asyncio.to_thread(_tap_again, card)
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
        _tap_again(card)
        kept = await agent.sale(7_00)
        _tap_again(card)
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
        _tap_again(card)
        sold = await agent.sale(1_00)
    assert sold.status == "approved" and not sold.details["printed"]
    assert sold.lines[-1] == "Ticket non imprimé : vérifiez l'imprimante puis réimprimez-le"


def _journal_receipts(config):
    with sqlite3.connect(config.journal_file) as db:
        return db.execute("SELECT receipt FROM messages WHERE receipt IS NOT NULL ORDER BY rowid").fetchall()
