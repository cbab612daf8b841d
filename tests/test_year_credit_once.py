"""The year's programme credit is made once per beneficiary and school year, whichever path comes
first: the manual reload without an explicit reference ('one reload per student and year') or
the bulk reload. A manual reload with an explicit reference is a deliberate extra credit (a
correction): it neither blocks the bulk reload nor is blocked by it (reload_wallet.sql, bulk_reload_chunk.sql)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import asyncpg
import pytest

from ledger.bulk_reload import start_or_resume, run_bulk_reload
from ledger.programmes import set_amount
from ledger.reload import ReloadRefused, reload_wallet

from conftest import TEST_SCHOOL_YEAR

NEXT = TEST_SCHOOL_YEAR + 1
BOOKS_CENTS = 120_00
EQUIPMENT_CENTS = 180_00
ACTOR = "cli:test"
LOCK_WAIT_POLLS = 2_000
COMMAND_TIMEOUT_S = 120


@pytest.fixture
async def renewed(conn) -> list[tuple[int, str, int]]:
    """Every beneficiary renewed for NEXT (no wallets yet) with the programme amounts set:
    (id, dossier number, the programme amount) of the first three."""
    await set_amount(conn, school_year=NEXT, programme="BOOKS", amount_cents=BOOKS_CENTS, actor=ACTOR)
    await set_amount(conn, school_year=NEXT, programme="EQUIPMENT", amount_cents=EQUIPMENT_CENTS,
                     actor=ACTOR)
    await conn.execute("INSERT INTO rights (beneficiary_id, school_year, renewed_by)"
                       " SELECT id, $1, 'test' FROM beneficiaries", NEXT)
    rows = await conn.fetch(
        "SELECT b.id, b.dossier_number, p.amount_cents FROM beneficiaries b JOIN rights r"
        " ON r.beneficiary_id = b.id AND r.school_year = $1 JOIN reload_programmes p"
        " ON p.school_year = r.school_year AND p.programme = r.programme ORDER BY b.id LIMIT 3", NEXT)
    return [(r["id"], r["dossier_number"], r["amount_cents"]) for r in rows]


async def _credits(conn, beneficiary_id: int, year: int = NEXT) -> list[tuple[str, int]]:
    """The RELOAD transfers into the beneficiary's wallet for the year: (reference, cents)."""
    rows = await conn.fetch(
        "SELECT t.reference, t.amount_cents FROM transfers t JOIN wallets w ON w.account_id ="
        " t.credit_account_id WHERE t.code = 'RELOAD' AND w.beneficiary_id = $1 AND w.school_year = $2"
        " ORDER BY t.id", beneficiary_id, year)
    return [(r["reference"], r["amount_cents"]) for r in rows]


async def _balance(conn, beneficiary_id: int, year: int = NEXT) -> int | None:
    return await conn.fetchval(
        "SELECT a.credits_posted - a.debits_posted FROM wallets w JOIN accounts a ON a.id = w.account_id"
        " WHERE w.beneficiary_id = $1 AND w.school_year = $2", beneficiary_id, year)


def _bulk_reference(beneficiary_id: int, year: int = NEXT) -> str:
    return f"bulk:{year}:{beneficiary_id:012d}"


async def test_a_manual_year_credit_first_then_the_bulk_reload_skips_that_student(conn, renewed):
    (first, dossier, amount), (second, _, second_amount), _ = renewed
    manual = await reload_wallet(conn, dossier, NEXT, amount)
    assert (manual.credited_cents, manual.already_done) == (amount, False)
    run = await run_bulk_reload(conn, NEXT, actor=ACTOR, chunk_rows=64)
    everyone = await conn.fetchval("SELECT count(*) FROM rights WHERE school_year = $1", NEXT)
    assert run.finished and run.beneficiaries_seen == everyone
    assert run.wallets_credited == everyone - 1
    assert run.wallets_opened == everyone - 1                       # the manual reload opened one
    assert await _credits(conn, first) == [(f"reload:{NEXT}:{dossier}", amount)]
    assert await _balance(conn, first) == amount
    assert await _credits(conn, second) == [(_bulk_reference(second), second_amount)]
    # The default manual reload stays idempotent: the same again is already done, not refused.
    again = await reload_wallet(conn, dossier, NEXT, amount)
    assert (again.already_done, again.credited_cents, again.balance_cents) == (True, 0, amount)
    # A later bulk run still skips them.
    later = await run_bulk_reload(conn, NEXT, actor=ACTOR)
    assert later.wallets_credited == 0 and await _balance(conn, first) == amount


async def test_the_bulk_reload_first_then_the_default_manual_reload_is_refused(conn, renewed):
    (first, dossier, amount), _, _ = renewed
    await run_bulk_reload(conn, NEXT, actor=ACTOR)
    assert await _balance(conn, first) == amount
    transfers = await conn.fetchval("SELECT count(*) FROM transfers")
    with pytest.raises(ReloadRefused, match=(rf"{dossier} already received its {NEXT}-{NEXT + 1}"
                                             rf" credit from the bulk reload \({amount // 100}\.00 EUR")):
        await reload_wallet(conn, dossier, NEXT, amount)
    with pytest.raises(ReloadRefused, match="explicit reference"):
        await reload_wallet(conn, dossier, NEXT, 10_00)            # whatever the amount
    # Straight to the ledger, with the reference spelt out or NULL (which means it): refused too.
    for reference in (f"reload:{NEXT}:{dossier}", None):
        with pytest.raises(asyncpg.UniqueViolationError, match="bulk reload"):
            await conn.execute("SELECT reload_wallet($1, $2, $3, $4)", first, NEXT, amount, reference)
    assert await conn.fetchval("SELECT count(*) FROM transfers") == transfers
    assert await _balance(conn, first) == amount


async def test_an_explicit_reference_is_a_correction_either_way(conn, renewed):
    (first, dossier, amount), (second, dossier_2, amount_2), _ = renewed
    # Before the bulk reload: a correction does not make the year's credit.
    early = await reload_wallet(conn, dossier, NEXT, 15_00, reference="correction-1")
    assert early.credited_cents == 15_00
    await run_bulk_reload(conn, NEXT, actor=ACTOR)
    assert await _credits(conn, first) == [("correction-1", 15_00), (_bulk_reference(first), amount)]
    assert await _balance(conn, first) == 15_00 + amount
    # After it: a correction is not refused.
    late = await reload_wallet(conn, dossier_2, NEXT, 7_50, reference="correction-2")
    assert (late.credited_cents, late.balance_cents) == (7_50, amount_2 + 7_50)
    assert await _credits(conn, second) == [(_bulk_reference(second), amount_2),
                                            ("correction-2", 7_50)]


async def test_an_explicit_reference_cannot_borrow_a_year_credit_name(conn, renewed):
    (first, dossier, amount), (second, dossier_2, amount_2), _ = renewed
    for borrowed in (f"reload:{NEXT}:{dossier_2}", f"reload:{NEXT + 1}:{dossier}",
                     _bulk_reference(first), "bulk:anything"):
        with pytest.raises(ReloadRefused, match="reserved"):
            await reload_wallet(conn, dossier, NEXT, 10_00, reference=borrowed)
    # Its own year's credit, spelt out, is the default reload.
    spelt = await reload_wallet(conn, dossier, NEXT, amount, reference=f"reload:{NEXT}:{dossier}")
    assert spelt.credited_cents == amount
    assert (await reload_wallet(conn, dossier, NEXT, amount)).already_done
    await run_bulk_reload(conn, NEXT, actor=ACTOR)
    assert await _credits(conn, first) == [(f"reload:{NEXT}:{dossier}", amount)]
    assert await _credits(conn, second) == [(_bulk_reference(second), amount_2)]


async def test_other_years_are_independent(conn, renewed):
    """The bulk credit of NEXT does not block the default reload of another year, nor does the
    current year's credit (the seed made it, as a default reload) make the bulk of NEXT skip
    the student."""
    (first, dossier, amount), _, _ = renewed
    with pytest.raises(ReloadRefused):          # the current year's credit is made already
        await reload_wallet(conn, dossier, TEST_SCHOOL_YEAR, 5_00)
    await run_bulk_reload(conn, NEXT, actor=ACTOR)
    assert await _credits(conn, first) == [(_bulk_reference(first), amount)]
    following = await reload_wallet(conn, dossier, NEXT + 1, 5_00)
    assert following.credited_cents == 5_00


async def _wait_blocked(conn, blocker: asyncpg.Connection, waiter_pid: int) -> None:
    for _ in range(LOCK_WAIT_POLLS):
        if await conn.fetchval("SELECT $1 = ANY (pg_blocking_pids($2))",
                               blocker.get_server_pid(), waiter_pid):
            return
        await asyncio.sleep(0.005)
    pytest.fail("the second session never waited for the first one's lock")


async def test_a_manual_credit_committed_while_a_bulk_chunk_waits_is_seen(conn, dsn, renewed):
    """The chunk drew its to-do list before the manual reload committed, then waited for the
    student's lock: once it has it, it sees the manual credit and skips the student."""
    (first, dossier, amount), _, _ = renewed
    manual, runner = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
    try:
        async with manual.transaction():
            await reload_wallet(manual, dossier, NEXT, amount)
            task = asyncio.create_task(run_bulk_reload(runner, NEXT, actor=ACTOR))
            await _wait_blocked(conn, manual, runner.get_server_pid())
        run = await asyncio.wait_for(task, COMMAND_TIMEOUT_S)
    finally:
        await manual.close()
        await runner.close()
    everyone = await conn.fetchval("SELECT count(*) FROM rights WHERE school_year = $1", NEXT)
    assert run.finished and run.wallets_credited == everyone - 1
    assert await _credits(conn, first) == [(f"reload:{NEXT}:{dossier}", amount)]
    assert await _balance(conn, first) == amount


async def test_a_repeated_run_does_not_lock_a_student_credited_by_hand(conn, dsn, renewed):
    """As for those the bulk credited itself, a later run leaves them alone: it does not even
    wait for their lock."""
    (first, dossier, amount), _, _ = renewed
    await reload_wallet(conn, dossier, NEXT, amount)
    await run_bulk_reload(conn, NEXT, actor=ACTOR)
    blocker, runner = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
    try:
        await runner.execute("SET lock_timeout = '2s'")
        async with blocker.transaction():
            await blocker.execute("SELECT 1 FROM beneficiaries WHERE id = $1 FOR UPDATE", first)
            again = await run_bulk_reload(runner, NEXT, actor=ACTOR)
        assert again.finished and again.wallets_credited == 0
    finally:
        await blocker.close()
        await runner.close()


async def test_a_manual_reload_waiting_for_a_bulk_chunk_is_refused_once_it_commits(conn, dsn, renewed):
    (first, dossier, amount), _, _ = renewed
    run, _ = await start_or_resume(conn, NEXT, ACTOR)
    chunk, manual = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
    try:
        async with chunk.transaction():
            done = await chunk.fetchrow("SELECT * FROM bulk_reload_chunk($1, 100000, $2)", run.id, ACTOR)
            assert done["wallets_credited"] > 0
            task = asyncio.create_task(reload_wallet(manual, dossier, NEXT, amount))
            await _wait_blocked(conn, chunk, manual.get_server_pid())
        with pytest.raises(ReloadRefused, match="bulk reload"):
            await asyncio.wait_for(task, COMMAND_TIMEOUT_S)
    finally:
        await chunk.close()
        await manual.close()
    assert await _credits(conn, first) == [(_bulk_reference(first), amount)]


def _hdfpay(dsn: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hdfpay.cli", *args], capture_output=True,
                          text=True, timeout=COMMAND_TIMEOUT_S, stdin=subprocess.DEVNULL,
                          env={**os.environ, "DATABASE_URL": dsn})


async def test_the_reload_command_says_why_it_refuses(conn, dsn, renewed):
    (first, dossier, amount), _, _ = renewed
    await run_bulk_reload(conn, NEXT, actor=ACTOR)
    refused = _hdfpay(dsn, "reload", dossier, "120", "--school-year", str(NEXT))
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert "already received its" in refused.stderr and "from the bulk reload" in refused.stderr
    corrected = _hdfpay(dsn, "reload", dossier, "5", "--school-year", str(NEXT),
                        "--reference", "correction-cli")
    assert corrected.returncode == 0, corrected.stderr
    assert await _balance(conn, first) == amount + 5_00
