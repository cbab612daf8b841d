"""The customer's ticket for a sale, a void or a refund: shop, terminal, date and time, masked card,
amount, RRN, authorization code, balance left. Plain text of RECEIPT_WIDTH_CHARS columns, kept in
the journal (reprint, the day's list) and printed by receipt_printer when the shop has a printer.
"""

from __future__ import annotations

import datetime as dt

from terminal_protocol.amounts import format_euros
from terminal_protocol.messages import Response
from terminal_protocol.response_codes import describe

RECEIPT_WIDTH_CHARS = 42        # 80 mm paper, the printer's font A
TITLES = {"purchase": "VENTE", "reversal": "ANNULATION DE VENTE", "refund": "REMBOURSEMENT"}
COPY_MARK = "*** DUPLICATA ***"


def _pair(label: str, value: str) -> str:
    return f"{label}{value:>{RECEIPT_WIDTH_CHARS - len(label)}}"


def _verdict(kind: str, answer: Response | None, amount_cents: int) -> list[str]:
    if answer is None:
        return ["PAS DE RÉPONSE DU SERVEUR", "Vente annulée : aucun débit"]
    if kind == "purchase" and answer.rc == "10":
        return [_pair("PAIEMENT PARTIEL", format_euros(answer.approved_cents)),
                _pair("Reste à payer autrement", format_euros(amount_cents - answer.approved_cents))]
    if answer.approved:
        word = {"purchase": "PAYÉ", "reversal": "RECRÉDITÉ", "refund": "REMBOURSÉ"}[kind]
        return [_pair(word, format_euros(answer.approved_cents))]
    return ["REFUSÉ", f"{describe(answer.rc).cashier_text} (code {answer.rc})"]


def receipt_text(*, shop: str, terminal_id: str, kind: str, at: dt.datetime, card: str | None,
                 amount_cents: int, answer: Response | None,
                 original_rrn: str | None = None) -> str:
    """The ticket; `at` in the shop's time, `card` already masked."""
    lines = ["Carte Génération #HDF".center(RECEIPT_WIDTH_CHARS),
             shop[:RECEIPT_WIDTH_CHARS].center(RECEIPT_WIDTH_CHARS),
             _pair("Terminal", terminal_id), _pair("Le", f"{at:%d/%m/%Y à %H:%M:%S}"),
             "", TITLES[kind]]
    if card:
        lines.append(_pair("Carte", card))
    lines.append(_pair("Montant", format_euros(amount_cents)))
    if original_rrn:
        lines.append(_pair("Ticket d'origine", original_rrn))
    lines += _verdict(kind, answer, amount_cents)
    if answer is not None and answer.rrn:
        lines.append(_pair("Référence", answer.rrn))
    if answer is not None and answer.auth_code:
        lines.append(_pair("Autorisation", answer.auth_code))
    if answer is not None and answer.balance_cents is not None:
        lines.append(_pair("Solde restant", format_euros(answer.balance_cents)))
    lines += ["", "Merci et à bientôt".center(RECEIPT_WIDTH_CHARS)]
    return "\n".join(lines) + "\n"


def as_copy(text: str) -> str:
    return COPY_MARK.center(RECEIPT_WIDTH_CHARS) + "\n" + text
