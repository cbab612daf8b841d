"""The terminal agent end to end: a virtual card on a vpcd reader, read through the real pcscd,
a purchase signed with sealed future keys, the real server and PostgreSQL behind it."""

from __future__ import annotations

import asyncio

from ledger.demo_region import card_uid

from terminal_protocol.agent.runtime import running_agent

from agent_fixtures import AGENT_ENV, SUPERVISOR_PIN, free_port, purchases_of, tap_again, until_shown
from conftest import ACTIVE_TERMINAL, CROWD_TERMINALS, balance_of, set_balance
from flaky_link import FlakyLink, server_port
from pcsc_fixtures import READER_0, READER_1, wait_reader_state

CARD = card_uid(11)
OTHER_CARD = card_uid(12)
LOST = card_uid(1)
LIFT_FIRST = "Retirez la carte puis présentez-la à nouveau"


async def test_a_tap_is_an_approved_purchase(agent_for, virtual_card, conn):
    before = await balance_of(conn, CARD)
    async with agent_for(ACTIVE_TERMINAL) as agent:
        virtual_card(0).insert(CARD)      # after the agent's first look: a new tap
        outcome = await agent.sale(12_50)
    assert (outcome.status, outcome.rc, outcome.approved_cents) == ("approved", "00", 12_50)
    assert outcome.lines[0].startswith("ACCEPTÉ") and "12,50" in outcome.lines[0]
    assert outcome.balance_cents == before - 12_50 == await balance_of(conn, CARD)
    assert [(r["uid"], r["amount_approved_cents"]) for r in await purchases_of(conn)] == [(CARD, 12_50)]


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
    assert [r["uid"] for r in await purchases_of(conn)] == [CARD]


async def test_a_card_lifted_mid_read_sends_nothing(agent_for, virtual_card, conn):
    card = virtual_card(0)
    card.vanish_on_get_uid = True
    async with agent_for(ACTIVE_TERMINAL) as agent:
        card.insert(CARD)
        outcome = await agent.sale(3_00)
    assert outcome.status == "card_error" and card.vanished.is_set()
    assert outcome.lines[0] == "LECTURE DE LA CARTE IMPOSSIBLE"
    assert await purchases_of(conn) == []


async def test_void_refund_totals_and_an_in_balance_close(agent_for, virtual_card, conn):
    before = await balance_of(conn, CARD)
    card = virtual_card(0)
    async with agent_for(ACTIVE_TERMINAL) as agent:
        card.insert(CARD)
        first = await agent.sale(10_00)
        tap_again(card)
        second = await agent.sale(4_00)
        bad_reference = await agent.refund("12AB", 1_00, SUPERVISOR_PIN)
        voided = await agent.void_last()
        tap_again(card)                        # the customer taps the card for the refund
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
        purchase, = await purchases_of(conn, CROWD_TERMINALS[0])
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
        await until_shown(lambda: LIFT_FIRST in shown)
        assert shown == ["Présentez la carte", LIFT_FIRST] and not sale.done()
        await asyncio.to_thread(tap_again, card)
        assert (await sale).status == "approved"
        assert b"hdfpay_agent_reader_restarts 1.0" in agent.metrics.text()
    assert [r["amount_approved_cents"] for r in await purchases_of(conn)] == [1_00, 2_00]


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
    assert [r["amount_approved_cents"] for r in await purchases_of(conn)] == [5_00]


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
        await until_shown(lambda: LIFT_FIRST in shown)   # said once the agent looked at the reader
        assert shown == ["Présentez la carte", LIFT_FIRST]
        assert not sale.done() and [r["amount_approved_cents"] for r in await purchases_of(conn)] == [10]
        await asyncio.to_thread(tap_again, card)
        assert (await sale).status == "approved"
    assert [r["amount_approved_cents"] for r in await purchases_of(conn)] == [10, 20]


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
