"""ISO 8583 response codes used by the protocol, with the short French text the cashier reads."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ResponseCode:
    code: str
    meaning: str
    cashier_text: str
    approved: bool = False


_CODES = [
    ResponseCode("00", "approved", "Paiement accepté", approved=True),
    ResponseCode("10", "partial approval", "Paiement partiel accepté", approved=True),
    ResponseCode("13", "invalid amount (refund above what is left of the sale)",
                 "Montant supérieur au reste remboursable de la vente"),
    ResponseCode("14", "unknown card", "Carte inconnue"),
    ResponseCode("25", "original not found", "Transaction d'origine introuvable"),
    ResponseCode("30", "format error", "Message invalide"),
    ResponseCode("41", "lost card", "Carte déclarée perdue"),
    ResponseCode("43", "stolen card", "Carte déclarée volée"),
    ResponseCode("51", "insufficient funds", "Solde insuffisant"),
    ResponseCode("54", "outside the wallet window", "Porte-monnaie hors période de validité"),
    ResponseCode("57", "rights not renewed for this school year",
                 "Droits non renouvelés pour cette année scolaire"),
    ResponseCode("58", "terminal or partner not allowed", "Terminal ou partenaire non autorisé"),
    ResponseCode("61", "over a limit", "Montant supérieur à la limite autorisée"),
    ResponseCode("62", "card blocked (damaged or replaced)", "Carte bloquée"),
    ResponseCode("63", "security violation", "Erreur de sécurité"),
    ResponseCode("91", "system unavailable", "Service indisponible, réessayez"),
    ResponseCode("94", "duplicate", "Transaction en double"),
    ResponseCode("95", "batch out of balance", "Clôture avec écart"),
    ResponseCode("96", "system malfunction", "Erreur système, réessayez"),
]

RESPONSE_CODES: dict[str, ResponseCode] = {c.code: c for c in _CODES}
# The codes that moved money for a purchase: full and partial approval.
APPROVED_CODES = tuple(c.code for c in _CODES if c.approved)


def describe(code: str) -> ResponseCode:
    """The code's entry; an unknown code reads as a malfunction rather than failing the till."""
    return RESPONSE_CODES.get(code) or ResponseCode(code, "unknown response code", f"Refus (code {code})")
