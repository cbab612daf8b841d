"""Reversals (void the last sale) and refunds (a returned item, by the ticket's reference)."""

from __future__ import annotations

from terminal_protocol.cashier_display import cashier_lines
from ledger.cards import replace_card
from ledger.clock import pin_clock
from ledger.demo_region import card_uid, terminal_id

from conftest import CROWD_TERMINALS, balance_of, paris, set_balance

CARD = card_uid(5)


async def test_reversal_restores_the_wallet_once(client, conn):
    before = await balance_of(conn, CARD)
    sale = client.purchase_request(CARD, 20_00)
    assert (await client.send(sale)).rc == "00"
    reversal = await client.reversal(sale.request_id)
    assert (reversal.rc, reversal.approved_cents, reversal.balance_cents) == ("00", 20_00, before)
    again = await client.reversal(sale.request_id)            # another reversal id: nothing left
    assert (again.rc, again.approved_cents) == ("00", 0)
    assert await balance_of(conn, CARD) == before


async def test_a_reversal_retry_replays_its_answer(client, conn):
    sale = client.purchase_request(CARD, 4_00)
    await client.send(sale)
    reversal = client.reversal_request(sale.request_id)
    first = await client.send(reversal)
    second = await client.send(reversal)
    assert first == second and first.approved_cents == 4_00
    changed = client.reversal_request(sale.request_id, request_id=reversal.request_id)
    assert (await client.send(changed)).rc == "94"          # same id, other STAN


async def test_reversal_of_an_unknown_original_declines_the_late_original(client, conn):
    before = await balance_of(conn, CARD)
    late = client.purchase_request(CARD, 8_00)
    reversal = await client.reversal(late.request_id)
    assert reversal.rc == "25"
    original = await client.send(late)
    assert (original.rc, original.approved_cents) == ("94", 0)
    assert await balance_of(conn, CARD) == before


async def test_reversal_of_a_partial_approval_restores_the_partial_amount(client, conn):
    await set_balance(conn, CARD, 6_00)
    sale = client.purchase_request(CARD, 10_00, partial_ok=True)
    assert (await client.send(sale)).approved_cents == 6_00
    assert (await client.reversal(sale.request_id)).approved_cents == 6_00
    assert await balance_of(conn, CARD) == 6_00


async def test_reversal_of_a_declined_purchase_moves_nothing(client, conn):
    sale = client.purchase_request(card_uid(1), 5_00)             # lost card: 41
    assert (await client.send(sale)).rc == "41"
    reversal = await client.reversal(sale.request_id)
    assert (reversal.rc, reversal.approved_cents) == ("00", 0)


async def test_another_terminal_cannot_reverse_a_sale(terminal, client, conn):
    sale = client.purchase_request(CARD, 5_00)
    await client.send(sale)
    async with terminal(terminal_id(2, 1)) as other:
        assert (await other.reversal(sale.request_id)).rc == "25"
    assert await conn.fetchval("SELECT amount_reversed_cents FROM authorizations WHERE request_id = $1",
                               sale.request_id) == 0


async def test_refunds_are_capped_by_the_purchase(client, conn):
    before = await balance_of(conn, CARD)
    sale = await client.purchase(CARD, 30_00)
    first = await client.refund(sale.rrn, 12_00, CARD)
    assert (first.rc, first.approved_cents, first.balance_cents) == ("00", 12_00, before - 18_00)
    too_much = await client.refund(sale.rrn, 18_01, CARD)
    assert (too_much.rc, too_much.approved_cents, too_much.refundable_cents) == ("13", 0, 18_00)
    assert cashier_lines(too_much)[:2] == [
        "REFUSÉ : Montant supérieur au reste remboursable de la vente (code 13)",
        "Remboursable au plus : 18,00\u00a0€"]
    rest = await client.refund(sale.rrn, 18_00, CARD)
    assert rest.rc == "00"
    nothing_left = await client.refund(sale.rrn, 1, CARD)
    assert (nothing_left.rc, nothing_left.refundable_cents, nothing_left.detail) == ("13", 0, "refunded")
    assert cashier_lines(nothing_left)[0] == "REFUSÉ : Vente déjà remboursée en totalité (code 13)"
    assert await balance_of(conn, CARD) == before


async def test_refund_after_a_reversal_is_refused(client, conn):
    sale = client.purchase_request(CARD, 10_00)
    response = await client.send(sale)
    await client.reversal(sale.request_id)
    refused = await client.refund(response.rrn, 1_00, CARD)
    assert (refused.rc, refused.refundable_cents, refused.detail) == ("13", 0, "voided")
    assert cashier_lines(refused)[0] == "REFUSÉ : Vente annulée : rien à rembourser (code 13)"


async def test_refund_only_at_the_partner_of_the_sale(terminal, client, conn):
    sale = await client.purchase(CARD, 10_00)
    async with terminal(terminal_id(2, 1)) as other_partner:
        assert (await other_partner.refund(sale.rrn, 1_00, CARD)).rc == "25"
    assert (await client.refund("999999999999", 1_00, CARD)).rc == "25"


async def test_refund_at_another_terminal_of_the_same_partner(terminal, conn):
    async with terminal(terminal_id(2, 1)) as till, terminal(CROWD_TERMINALS[0]) as other_till:
        sale = await till.purchase(CARD, 10_00)
        assert (await other_till.refund(sale.rrn, 4_00, CARD)).rc == "00"


async def test_refund_once_the_wallet_window_is_over(client, conn):
    sale = await client.purchase(CARD, 10_00)
    await pin_clock(conn, paris(2027, 5, 1, 0, 0, 0))
    assert (await client.refund(sale.rrn, 5_00, CARD)).rc == "54"
    await pin_clock(conn, paris(2027, 4, 30, 23, 59, 59))
    assert (await client.refund(sale.rrn, 5_00, CARD)).rc == "00"


async def test_a_suspended_terminal_may_still_reverse_but_not_sell(client, conn):
    """A purchase whose answer was lost just before the shop was suspended must still be
    reversible: the reversal only gives the student's money back."""
    before = await balance_of(conn, CARD)
    sale = client.purchase_request(CARD, 6_00)
    assert (await client.send(sale)).rc == "00"
    await conn.execute("UPDATE terminals SET status = 'SUSPENDED' WHERE id = $1", client.terminal_id)
    assert (await client.purchase(CARD, 1_00)).rc == "58"
    reversal = await client.reversal(sale.request_id)
    assert (reversal.rc, reversal.approved_cents) == ("00", 6_00)
    assert await balance_of(conn, CARD) == before
    await conn.execute("UPDATE terminals SET status = 'REVOKED' WHERE id = $1", client.terminal_id)
    assert (await client.reversal(sale.request_id)).rc == "58"


async def test_a_refund_goes_back_only_to_a_card_of_the_student_who_paid(client, conn):
    """The customer taps the card at the refund: another student's card is refused (25
    other_card), an unknown card 14; the card that replaced the one that paid is accepted."""
    sale = await client.purchase(CARD, 10_00)
    other_student = await client.refund(sale.rrn, 4_00, card_uid(6))
    assert (other_student.rc, other_student.detail, other_student.approved_cents) == (
        "25", "other_card", 0)
    assert cashier_lines(other_student)[0] == (
        "REFUSÉ : Cette carte n'a pas payé cette vente : présentez la carte de l'achat (code 25)")
    unknown = await client.refund(sale.rrn, 4_00, "0A0B0C0D")
    assert (unknown.rc, unknown.approved_cents) == ("14", 0)
    old_card_id = await conn.fetchval("SELECT id FROM cards WHERE uid = $1", CARD)
    await replace_card(conn, old_card_id, bytes.fromhex("04A1B2C3D4E5F6"), actor="test",
                       reason="lost")
    before = await balance_of(conn, CARD)
    replaced = await client.refund(sale.rrn, 4_00, "04A1B2C3D4E5F6")
    assert (replaced.rc, replaced.approved_cents, replaced.balance_cents) == ("00", 4_00, before + 4_00)
