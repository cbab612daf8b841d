"""Crediting a wallet for a school year (pending replacement fees are recovered first)."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg


class UnknownBeneficiary(LookupError):
    pass


class ReloadRefused(ValueError):
    """The ledger refused the reload (closed school year, amount, reference used elsewhere, the
    year's credit already made by the bulk reload)."""


@dataclass(frozen=True)
class ReloadResult:
    credited_cents: int
    fee_recovered_cents: int
    balance_cents: int
    already_done: bool


async def reload_wallet(conn: asyncpg.Connection, dossier_number: str, school_year: int,
                        amount_cents: int, reference: str | None = None) -> ReloadResult:
    """Credit once per reference.

    Without a reference, this is the year's credit ('reload:<year>:<dossier>',
    sql/functions/manual_year_credit_reference.sql): one per beneficiary and school year,
    whichever of this and the bulk reload comes first. It is refused (ReloadRefused) when the
    bulk reload already credited the beneficiary for that year, and the bulk reload skips a
    beneficiary who already had it. An explicit reference is a deliberate extra credit (a
    correction): it neither blocks the bulk reload nor is blocked by it."""
    beneficiary_id = await conn.fetchval(
        "SELECT id FROM beneficiaries WHERE dossier_number = $1", dossier_number)
    if beneficiary_id is None:
        raise UnknownBeneficiary(f"no beneficiary with dossier number {dossier_number}")
    try:
        # reference None: the ledger names the year's credit itself.
        row = await conn.fetchrow("SELECT * FROM reload_wallet($1, $2, $3, $4)",
                                  beneficiary_id, school_year, amount_cents, reference or None)
    except (asyncpg.CheckViolationError, asyncpg.UniqueViolationError) as exc:
        raise ReloadRefused(exc.args[0] if exc.args else str(exc)) from None
    return ReloadResult(**dict(row))
