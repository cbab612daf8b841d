"""What the agent tells the cashier, in French, beyond a server's answer (cashier_display)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from dataclasses import dataclass, field

from terminal_protocol.amounts import format_euros
from terminal_protocol.cashier_display import cashier_lines
from terminal_protocol.messages import BatchTotals, Response
from terminal_protocol.response_codes import APPROVED_CODES

PRESENT_CARD = "Présentez la carte"
SENDING = "Envoi au serveur"          # the card is read: the message is on its way
PRESENT_CARD_FOR_REFUND = "Présentez la carte à rembourser (celle de l'achat)"
RRN = re.compile(r"[0-9]{12}")          # the ticket's reference, as PROTOCOL.md defines it
VOID_NEEDS_PIN = "Annulation d'une vente de plus d'une minute"
REFUND_NEEDS_PIN = "Remboursement"
CLOSE_NEEDS_PIN = "Clôture du lot"
NOT_PRINTED = "Ticket non imprimé : vérifiez l'imprimante puis réimprimez-le"
_KIND_LABELS = {"purchase": "VENTE", "reversal": "ANNUL.", "refund": "REMB."}
# A card that already paid is still on the reader (after a sale, or after a restart).
LIFT_CARD_FIRST = "Retirez la carte puis présentez-la à nouveau"

# Field names of the batch totals, as the cashier reads them.
_TOTAL_LABELS = {
    "purchases_count": "ventes (nombre)", "purchases_cents": "ventes (montant)",
    "reversals_count": "annulations (nombre)", "reversals_cents": "annulations (montant)",
    "refunds_count": "remboursements (nombre)", "refunds_cents": "remboursements (montant)",
}


@dataclass(frozen=True)
class Outcome:
    """The end of one cashier operation: what to show, and the figures a till program needs.

    status: approved, partial, declined, no_answer, queued, refused (nothing sent), card_error,
    cancelled, in_balance, out_of_balance, totals; pin_required, pin_refused (nothing sent: the
    supervisor's PIN is missing or wrong); confirm (a preview, for the cashier to confirm)."""

    status: str
    lines: tuple[str, ...]
    rc: str | None = None
    requested_cents: int = 0
    approved_cents: int = 0
    collect_cents: int = 0          # still to collect from the customer by another means
    balance_cents: int | None = None
    rrn: str | None = None
    request_id: str | None = None
    details: dict = field(default_factory=dict)


def answered(response: Response, requested_cents: int) -> Outcome:
    status = ("partial" if response.rc == "10" else "approved") if response.rc in APPROVED_CODES \
        else "declined"
    collect = requested_cents - response.approved_cents if response.type == "purchase" else 0
    return Outcome(status, tuple(cashier_lines(response)), response.rc, requested_cents,
                   response.approved_cents, collect, response.balance_cents, response.rrn,
                   response.request_id)


def sale_without_answer(amount_cents: int, request_id: str) -> Outcome:
    return Outcome("no_answer", (
        "PAS DE RÉPONSE DU SERVEUR : vente annulée",
        "Ne remettez pas la marchandise. L'annulation est enregistrée et sera transmise.",
        f"Montant à encaisser par un autre moyen : {format_euros(amount_cents)}",
    ), requested_cents=amount_cents, collect_cents=amount_cents, request_id=request_id)


def replayed_sale(row, amount_cents: int) -> Outcome:
    """The outcome a sale already had, for a till that asks again with the same reference."""
    if amount_cents != row["amount_cents"]:
        return refused("Référence de caisse déjà utilisée pour un autre montant")
    if row["answered_at"] is None:        # the server's answer never came: it was reversed
        outcome = sale_without_answer(row["amount_cents"], row["request_id"])
    else:
        outcome = answered(Response(v=1, type="purchase", rc=row["rc"], request_id=row["request_id"],
                                    requested_cents=row["amount_cents"],
                                    approved_cents=row["approved_cents"],
                                    balance_cents=row["balance_cents"], rrn=row["rrn"]),
                           row["amount_cents"])
    return dataclasses.replace(outcome, details={**outcome.details, "replayed": True})


def queued(kind: str, amount_cents: int, request_id: str) -> Outcome:
    what = "Annulation" if kind == "reversal" else "Remboursement"
    return Outcome("queued", (
        f"{what.upper()} ENREGISTRÉ{'E' if kind == 'reversal' else ''} : {format_euros(amount_cents)}",
        "Le serveur ne répond pas : l'opération sera transmise dès que possible.",
    ), requested_cents=amount_cents, request_id=request_id)


def interrupted_sale(amount_cents: int) -> str:
    """A sale on the wire when the terminal stopped (crash, power cut): it is reversed."""
    return (f"VENTE INTERROMPUE ({format_euros(amount_cents)}) par l'arrêt du terminal : annulée, "
            "aucun débit ne reste. Encaissez-la par un autre moyen ou refaites la vente.")


def cancelled(amount_cents: int) -> Outcome:
    """The cashier cancelled the wait for the card (Échap, or the till's /v1/cancel)."""
    return Outcome("cancelled", ("VENTE ABANDONNÉE", f"{format_euros(amount_cents)} : aucun débit"),
                   requested_cents=amount_cents)


def with_card_and_time(outcome: Outcome, masked_card: str, at: dt.datetime) -> Outcome:
    """The line a ticket and the screen keep of a sale: which card, when (the shop's time)."""
    return dataclasses.replace(
        outcome, lines=outcome.lines + (f"Carte {masked_card} · {at:%d/%m/%Y %H:%M}",),
        details={**outcome.details, "card": masked_card})


def not_voidable(sale, voided: bool) -> Outcome:
    """Why the last sale cannot be voided; only the very last sale can be."""
    amount = format_euros(sale["amount_cents"] or 0)
    if voided and sale["answered_at"] is None:
        why = f"La dernière vente ({amount}) n'a pas eu de réponse : elle est déjà annulée"
    elif voided:
        why = f"La dernière vente ({amount}) est déjà annulée"
    else:
        why = f"La dernière vente ({amount}) a été refusée : rien à annuler"
    return refused(why, "Une vente plus ancienne se rembourse avec la référence de son ticket")


def confirm_void(sale, needs_pin: bool) -> Outcome:
    at = dt.datetime.fromisoformat(sale["answered_at"]).astimezone()
    return Outcome("confirm", (
        f"Annuler la vente de {format_euros(sale['approved_cents'])} ?",
        f"Carte {sale['card']} · {at:%d/%m/%Y %H:%M} · référence {sale['rrn']}",
    ) + (("Code superviseur demandé : la vente a plus d'une minute",) if needs_pin else ()),
        approved_cents=sale["approved_cents"], rrn=sale["rrn"], request_id=sale["request_id"],
        details={"needs_pin": needs_pin})


def confirm_close(batch: BatchTotals) -> Outcome:
    shown = totals(batch, 0)
    return Outcome("confirm", ("Clôturer le lot du jour ?",) + shown.lines
                   + ("Code superviseur demandé",),
                   approved_cents=shown.approved_cents, details={"needs_pin": True})


def pin_required(operation: str) -> Outcome:
    return Outcome("pin_required", ("CODE SUPERVISEUR REQUIS", f"{operation} : appelez le responsable"))


def pin_refused(check) -> Outcome:
    """check: supervisor_pin.PinCheck, not ok."""
    if check.reason == "locked":
        minutes = -(-check.locked_s // 60)
        return Outcome("pin_refused", ("CODE SUPERVISEUR BLOQUÉ",
                                       f"Trop d'essais : réessayez dans {minutes} min"),
                       details={"locked_s": check.locked_s})
    return Outcome("pin_refused", ("CODE SUPERVISEUR ERRONÉ",
                                   f"Encore {check.attempts_left} essai(s) avant blocage"),
                   details={"attempts_left": check.attempts_left})


def _operation_state(row) -> str:
    if row["state"] in ("queued", "unanswered") or (row["state"] == "sending"):
        return "sans réponse, annulée" if row["kind"] == "purchase" else "en attente d'envoi"
    if row["state"] == "reversed":
        return "annulée"
    if row["rc"] == "10":
        return f"partielle ({format_euros(row['approved_cents'])})"
    return "acceptée" if row["rc"] in APPROVED_CODES else f"refusée ({row['rc']})"


def transactions(rows) -> Outcome:
    """The day's list, one line per operation: time, what, amount, card, RRN, outcome."""
    if not rows:
        return Outcome("transactions", ("Aucune opération dans ce lot",), details={"items": []})
    lines, items = [], []
    for row in rows:
        at = dt.datetime.fromisoformat(row["created_at"]).astimezone()
        state = _operation_state(row)
        lines.append(f"{at:%H:%M}  {_KIND_LABELS[row['kind']]:<6} "
                     f"{format_euros(row['shown_cents'] or 0):>10}  {row['shown_card'] or '':<16}"
                     f"  {row['rrn'] or '-':<12}  {state}"
                     + (f" · vente {row['sale_rrn']}" if row["sale_rrn"] else ""))
        items.append({"at": at.isoformat(), "kind": row["kind"], "amount_cents": row["shown_cents"],
                      "card": row["shown_card"], "rrn": row["rrn"], "sale_rrn": row["sale_rrn"],
                      "state": state})
    return Outcome("transactions", tuple(lines), details={"items": items})


def refused(*lines: str) -> Outcome:
    return Outcome("refused", tuple(lines))


def card_error(message_fr: str) -> Outcome:
    return Outcome("card_error", ("LECTURE DE LA CARTE IMPOSSIBLE", message_fr))


def totals(batch: BatchTotals, pending: int, overdue: int = 0) -> Outcome:
    net = batch.purchases_cents - batch.reversals_cents - batch.refunds_cents
    lines = [
        f"Ventes : {batch.purchases_count}  {format_euros(batch.purchases_cents)}",
        f"Annulations : {batch.reversals_count}  {format_euros(batch.reversals_cents)}",
        f"Remboursements : {batch.refunds_count}  {format_euros(batch.refunds_cents)}",
        f"Net du jour : {format_euros(net)}",
    ]
    if pending:
        lines.append(f"{pending} opération(s) en attente d'envoi au serveur")
    if overdue:
        lines.append(f"{overdue} en attente depuis plus d'une heure : appelez l'assistance de la Région")
    return Outcome("totals", tuple(lines), approved_cents=net,
                   details={"totals": _as_dict(batch), "pending": pending, "overdue": overdue})


def batch_closed(response: Response, sent: BatchTotals) -> Outcome:
    if response.rc == "00":
        return Outcome("in_balance", (f"CLÔTURE N° {response.batch_number} : totaux concordants",),
                       "00", details={"batch_number": response.batch_number, "totals": _as_dict(sent)})
    if response.rc != "95":
        return Outcome("declined", tuple(cashier_lines(response)), response.rc)
    lines = [f"CLÔTURE N° {response.batch_number} : ÉCART avec le serveur",
             "Le lot est clos ; signalez l'écart à la Région :"]
    for difference in response.differences:
        label = _TOTAL_LABELS.get(difference.field, difference.field)
        money = difference.field.endswith("_cents")
        show = (lambda v: format_euros(v or 0)) if money else (lambda v: str(v))
        lines.append(f"  {label} : terminal {show(difference.terminal)}, serveur {show(difference.ledger)}")
    return Outcome("out_of_balance", tuple(lines), "95", details={
        "batch_number": response.batch_number, "totals": _as_dict(sent),
        "differences": [{"field": d.field, "terminal": d.terminal, "ledger": d.ledger}
                        for d in response.differences]})


def _as_dict(batch: BatchTotals) -> dict[str, int]:
    return {name: getattr(batch, name) for name in batch.__struct_fields__}
