"""The rows behind payout files: partners' bank details, a run's lines with their payees, and the
files kept once made (immutable, like the run they pay)."""

from __future__ import annotations

import asyncpg


async def lock_payee(conn: asyncpg.Connection, partner_id: int) -> asyncpg.Record | None:
    """payee_name, iban, bic of the partner, its row locked; None when there is no such partner."""
    return await conn.fetchrow(
        "SELECT payee_name, iban, bic FROM partners WHERE id = $1 FOR UPDATE", partner_id)


async def set_payee(conn: asyncpg.Connection, partner_id: int, name: str, iban: str,
                    bic: str) -> None:
    await conn.execute("UPDATE partners SET payee_name = $2, iban = $3, bic = $4 WHERE id = $1",
                       partner_id, name, iban, bic)


async def kept_files(conn: asyncpg.Connection, run_id: int) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM payout_files WHERE run_id = $1", run_id)


async def files_exist(conn: asyncpg.Connection, run_id: int) -> bool:
    return await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM payout_files WHERE run_id = $1)", run_id)


async def lock_run(conn: asyncpg.Connection, run_id: int) -> None:
    """One maker of a run's files at a time."""
    await conn.execute("SELECT 1 FROM settlement_runs WHERE id = $1 FOR UPDATE", run_id)


async def lines_with_payees(conn: asyncpg.Connection, run_id: int) -> list[asyncpg.Record]:
    """The run's lines, each with its partner's name and bank details, by partner and day."""
    return await conn.fetch(
        "SELECT l.*, p.name AS partner_name, p.payee_name, p.iban, p.bic FROM settlement_lines l"
        " JOIN partners p ON p.id = l.partner_id WHERE l.run_id = $1"
        " ORDER BY l.partner_id, l.business_day", run_id)


async def keep_files(conn: asyncpg.Connection, run_id: int, *, message_id: str, payments: int,
                     ctrl_sum_cents: int, debtor_iban: str, csv: bytes, pain001: bytes | None,
                     actor: str) -> None:
    await conn.execute(
        "INSERT INTO payout_files (run_id, message_id, payments, ctrl_sum_cents, debtor_iban, csv,"
        " pain001, created_by, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, business_now())",
        run_id, message_id, payments, ctrl_sum_cents, debtor_iban, csv, pain001, actor)
