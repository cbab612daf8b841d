"""Reload amounts by programme and school year (table reload_programmes, migrations/0004_school_year.sql).

Amounts are data the region decides each year (books for lycée students, equipment for
vocational ones), so they live in the database, set by an operator and audited, not in code.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import asyncpg

from ledger.audit import append_audit

PROGRAMME_PATTERN = re.compile(r"^[A-Z][A-Z0-9_]{1,31}$")
MAX_PROGRAMME_AMOUNT_CENTS = 1_000_00      # also a CHECK on the table


class ProgrammeError(ValueError):
    """A programme code or amount the region's rules do not allow."""


@dataclass(frozen=True)
class ProgrammeAmount:
    school_year: int
    programme: str
    amount_cents: int


def check_programme(programme: str) -> str:
    if not PROGRAMME_PATTERN.match(programme):
        raise ProgrammeError(f"{programme!r} is not a programme code (capitals, digits, '_', "
                             f"2 to 32 characters, e.g. BOOKS or EQUIPMENT)")
    return programme


async def list_amounts(conn: asyncpg.Connection, school_year: int | None = None) -> list[ProgrammeAmount]:
    rows = await conn.fetch(
        "SELECT school_year, programme, amount_cents FROM reload_programmes"
        " WHERE $1::integer IS NULL OR school_year = $1 ORDER BY school_year, programme",
        school_year)
    return [ProgrammeAmount(**dict(r)) for r in rows]


async def set_amount(conn: asyncpg.Connection, *, school_year: int, programme: str,
                     amount_cents: int, actor: str) -> ProgrammeAmount:
    """Create or change one amount, audited with its previous value. A bulk reload already
    started keeps the amounts it started with."""
    check_programme(programme)
    if not 1 <= amount_cents <= MAX_PROGRAMME_AMOUNT_CENTS:
        raise ProgrammeError(f"an amount is between 0.01 and {MAX_PROGRAMME_AMOUNT_CENTS // 100} euros")
    async with conn.transaction():
        before = await conn.fetchval(
            "SELECT amount_cents FROM reload_programmes WHERE school_year = $1 AND programme = $2"
            " FOR UPDATE", school_year, programme)
        await conn.execute(
            "INSERT INTO reload_programmes (school_year, programme, amount_cents) VALUES ($1, $2, $3)"
            " ON CONFLICT (school_year, programme) DO UPDATE SET amount_cents = excluded.amount_cents",
            school_year, programme, amount_cents)
        await append_audit(conn, actor=actor, action="reload_programme.set",
                           subject=f"programme:{school_year}:{programme}",
                           before=None if before is None else {"amount_cents": before},
                           after={"amount_cents": amount_cents})
    return ProgrammeAmount(school_year, programme, amount_cents)


async def missing_amounts(conn: asyncpg.Connection, school_year: int) -> list[tuple[str, int]]:
    """Programmes of the year's rights that have no amount, with how many beneficiaries each."""
    rows = await conn.fetch(
        "SELECT r.programme, count(*) AS beneficiaries FROM rights r"
        " WHERE r.school_year = $1 AND NOT EXISTS (SELECT 1 FROM reload_programmes p"
        "   WHERE p.school_year = r.school_year AND p.programme = r.programme)"
        " GROUP BY r.programme ORDER BY r.programme", school_year)
    return [(r["programme"], r["beneficiaries"]) for r in rows]
