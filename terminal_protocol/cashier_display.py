"""What the cashier reads for an answer, in French."""

from __future__ import annotations

from terminal_protocol.amounts import format_euros
from terminal_protocol.messages import Response
from terminal_protocol.response_codes import describe


def masked_uid(uid: bytes | str) -> str:
    """A card UID as screens and logs may show it: first byte and last two, never whole."""
    text = uid.hex().upper() if isinstance(uid, bytes) else uid.upper()
    return text[:2] + "•" * (len(text) - 6) + text[-4:]


def _refund_refusal(response: Response) -> str:
    if response.detail == "voided":
        return "Vente annulée : rien à rembourser"
    if response.detail == "refunded":
        return "Vente déjà remboursée en totalité"
    if response.detail == "other_card":
        return "Cette carte n'a pas payé cette vente : présentez la carte de l'achat"
    return describe(response.rc).cashier_text


def cashier_lines(response: Response) -> list[str]:
    """Two or three short lines: the verdict, then what to do or the new balance."""
    code = describe(response.rc)
    lines: list[str] = []
    if response.type == "purchase" and response.rc == "00":
        lines.append(f"ACCEPTÉ  {format_euros(response.approved_cents)}")
    elif response.type == "purchase" and response.rc == "10":
        rest = (response.requested_cents or 0) - response.approved_cents
        lines.append(f"ACCEPTÉ PARTIELLEMENT  {format_euros(response.approved_cents)}"
                     f" sur {format_euros(response.requested_cents or 0)}")
        lines.append(f"Reste à encaisser par un autre moyen : {format_euros(rest)}")
    elif response.type == "reversal" and response.rc == "00":
        lines.append(f"ANNULATION ACCEPTÉE  {format_euros(response.approved_cents)} recrédités")
    elif response.type == "refund" and response.rc == "00":
        lines.append(f"REMBOURSEMENT ACCEPTÉ  {format_euros(response.approved_cents)}")
    elif response.type == "refund" and response.detail == "other_card":
        lines.append(f"REFUSÉ : {_refund_refusal(response)} (code {response.rc})")
    elif response.type == "refund" and response.rc == "13":
        lines.append(f"REFUSÉ : {_refund_refusal(response)} (code 13)")
        if response.refundable_cents:
            lines.append(f"Remboursable au plus : {format_euros(response.refundable_cents)}")
    else:
        lines.append(f"REFUSÉ : {code.cashier_text} (code {response.rc})")
    if response.balance_cents is not None:
        lines.append(f"Nouveau solde de la carte : {format_euros(response.balance_cents)}")
    if response.rrn and code.approved:
        lines.append(f"Référence : {response.rrn}" + (f"  autorisation {response.auth_code}"
                                                       if response.auth_code else ""))
    return lines
