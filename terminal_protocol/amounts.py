"""Euro amounts as the cashier types and reads them, converted to and from integer cents."""

from __future__ import annotations

import re

_EUROS = re.compile(r"^\s*(\d{1,7})(?:[.,](\d{1,2}))?\s*(?:€|EUR)?\s*$", re.IGNORECASE)


class AmountError(ValueError):
    """The text is not an amount in euros (digits, then a comma or dot and at most 2 decimals).

    str() is for operators (English, like the rest of the CLI); `cashier_text` is what a cashier
    reads (French)."""

    def __init__(self, text: str) -> None:
        super().__init__(f"invalid amount {text!r}: euros with at most two decimals, e.g. 12,50")
        self.text = text

    @property
    def cashier_text(self) -> str:
        return f"Montant invalide : {self.text!r} (exemple : 12,50)"


def parse_euros(text: str) -> int:
    """'12,5' → 1250. No sign, no thousands separator, at most two decimals."""
    match = _EUROS.match(text)
    if not match:
        raise AmountError(text)
    euros, cents = match.group(1), (match.group(2) or "0").ljust(2, "0")
    return int(euros) * 100 + int(cents)


def format_euros(amount_cents: int) -> str:
    """1250 → '12,50 €' (French formatting, narrow no-break space before the sign)."""
    sign = "-" if amount_cents < 0 else ""
    euros, cents = divmod(abs(amount_cents), 100)
    return f"{sign}{euros:,}".replace(",", "\u202f") + f",{cents:02d}\u00a0€"
