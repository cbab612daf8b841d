"""The ticket's text on its own: every line fits the paper, and each outcome reads right."""

from __future__ import annotations

import datetime as dt

from terminal_protocol.agent.receipts import RECEIPT_WIDTH_CHARS, as_copy, receipt_text
from terminal_protocol.messages import Response

AT = dt.datetime(2026, 12, 4, 14, 2, 9)


def _ticket(kind: str, answer: Response | None, amount_cents: int = 40_00, **extra) -> list[str]:
    text = receipt_text(shop="Librairie du Beffroi, Grand-Place, Arras — rayon scolaire",
                        terminal_id="P0001-T01", kind=kind, at=AT, card="04••••••••000B",
                        amount_cents=amount_cents, answer=answer, **extra)
    lines = text.splitlines()
    assert all(len(line) <= RECEIPT_WIDTH_CHARS for line in lines), lines
    return lines


def test_a_partial_sale_says_what_is_left_to_pay():
    lines = _ticket("purchase", Response(v=1, type="purchase", rc="10", approved_cents=25_00,
                                         requested_cents=40_00, balance_cents=0, rrn="633800000001"))
    assert lines[lines.index("VENTE") + 3].startswith("PAIEMENT PARTIEL")
    assert lines[lines.index("VENTE") + 4].split() == ["Reste", "à", "payer", "autrement", "15,00", "€"]


def test_a_declined_sale_and_a_sale_without_answer():
    declined = _ticket("purchase", Response(v=1, type="purchase", rc="51", rrn="633800000002"))
    assert "REFUSÉ" in declined and "Solde insuffisant (code 51)" in declined
    assert not any(line.startswith("Solde restant") for line in declined)
    lost = _ticket("purchase", None)
    assert "PAS DE RÉPONSE DU SERVEUR" in lost and "Vente annulée : aucun débit" in lost


def test_a_refund_names_the_original_ticket_and_a_copy_is_marked():
    lines = _ticket("refund", Response(v=1, type="refund", rc="00", approved_cents=5_00,
                                       balance_cents=30_00, rrn="633800000009"),
                    amount_cents=5_00, original_rrn="633800000001")
    assert "REMBOURSEMENT" in lines
    assert any(line.startswith("Ticket d'origine") and line.endswith("633800000001") for line in lines)
    copy = as_copy("\n".join(lines)).splitlines()
    assert copy[0].strip() == "*** DUPLICATA ***" and copy[1:] == lines
