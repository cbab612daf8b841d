"""The bulk reload: every beneficiary with rights credited once per school year with their
programme's amount, pending fees recovered first, in chunks that commit on their own so that a
crashed run resumes and never credits twice."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest

from ledger.bulk_reload import (BULK_RELOAD_LOCK_KEY, BulkReloadRefused, latest_run, run_bulk_reload)
from ledger.reload import reload_wallet
from ledger.school_calendar import reload_school_year
from ledger.clock import pin_clock
from ledger.programmes import ProgrammeError, list_amounts, set_amount

from conftest import TEST_SCHOOL_YEAR, paris

NEXT = TEST_SCHOOL_YEAR + 1
BOOKS_CENTS = 120_00
EQUIPMENT_CENTS = 180_00
ACTOR = "cli:test"
CHUNK_ROWS = 64
LOCK_WAIT_POLLS = 2_000
COMMAND_TIMEOUT_S = 120


async def _amounts(conn, year: int = NEXT) -> None:
    await set_amount(conn, school_year=year, programme="BOOKS", amount_cents=BOOKS_CENTS, actor=ACTOR)
    await set_amount(conn, school_year=year, programme="EQUIPMENT", amount_cents=EQUIPMENT_CENTS,
                     actor=ACTOR)


async def _renew_next_year(conn, where: str = "true") -> int:
    """Rights for NEXT (no wallets yet): as the establishments renew them."""
    return int((await conn.execute(
        f"INSERT INTO rights (beneficiary_id, school_year, renewed_by) SELECT id, $1, 'test'"
        f" FROM beneficiaries b WHERE {where}", NEXT)).split()[-1])


async def _expected(conn, year: int) -> dict[int, int]:
    """Beneficiary id → the programme amount their rights give."""
    rows = await conn.fetch(
        "SELECT r.beneficiary_id, p.amount_cents FROM rights r JOIN reload_programmes p"
        " ON p.school_year = r.school_year AND p.programme = r.programme WHERE r.school_year = $1", year)
    return {r["beneficiary_id"]: r["amount_cents"] for r in rows}


async def _bulk_credits(conn, year: int) -> dict[int, int]:
    rows = await conn.fetch(
        "SELECT w.beneficiary_id, t.amount_cents FROM transfers t JOIN wallets w"
        " ON w.account_id = t.credit_account_id WHERE t.code = 'RELOAD' AND t.reference LIKE $1",
        f"bulk:{year}:%")
    credits: dict[int, int] = {}
    for r in rows:
        assert r["beneficiary_id"] not in credits, "credited twice"
        credits[r["beneficiary_id"]] = r["amount_cents"]
    return credits


async def _balance(conn, beneficiary_id: int, year: int) -> int | None:
    return await conn.fetchval(
        "SELECT a.credits_posted - a.debits_posted FROM wallets w JOIN accounts a ON a.id = w.account_id"
        " WHERE w.beneficiary_id = $1 AND w.school_year = $2", beneficiary_id, year)


async def test_every_beneficiary_with_rights_gets_their_programme_amount_in_new_wallets(conn):
    await _amounts(conn)
    renewed = await _renew_next_year(conn, "id % 7 <> 0")
    seen = []
    run = await run_bulk_reload(conn, NEXT, actor=ACTOR, chunk_rows=CHUNK_ROWS,
                                progress=lambda r: seen.append(r.beneficiaries_seen))
    expected = await _expected(conn, NEXT)
    assert len(expected) == renewed and set(expected.values()) == {BOOKS_CENTS, EQUIPMENT_CENTS}
    assert await _bulk_credits(conn, NEXT) == expected
    assert (run.finished, run.wallets_credited, run.wallets_opened) == (True, renewed, renewed)
    assert run.credited_cents == sum(expected.values()) and run.fee_recovered_cents == 0
    assert run.chunks_done == -(-renewed // CHUNK_ROWS)
    assert seen == sorted(seen) and seen[-1] == renewed == run.beneficiaries_total
    # Lycée students get books, vocational students and apprentices equipment.
    kinds = dict(await conn.fetch(
        "SELECT e.kind, min(p.amount_cents) FROM rights r JOIN beneficiaries b ON b.id = r.beneficiary_id"
        " JOIN establishments e ON e.id = b.establishment_id JOIN reload_programmes p"
        " ON p.school_year = r.school_year AND p.programme = r.programme WHERE r.school_year = $1"
        " GROUP BY e.kind", NEXT))
    assert kinds == {"LYCEE": BOOKS_CENTS, "LP": EQUIPMENT_CENTS, "CFA": EQUIPMENT_CENTS}
    for beneficiary_id, cents in list(expected.items())[:20]:
        assert await _balance(conn, beneficiary_id, NEXT) == cents
    actions = [r["action"] for r in await conn.fetch(
        "SELECT action FROM audit_log WHERE action LIKE 'reload.bulk%' ORDER BY id")]
    assert actions == ["reload.bulk_start", "reload.bulk_finish"]


async def test_the_seeds_year_credit_is_not_made_again(conn):
    """The current year: the seed made each student's year's credit, as `hdfpay reload` does;
    the bulk reload sees them all and credits none a second time."""
    await _amounts(conn, TEST_SCHOOL_YEAR)
    before = dict(await conn.fetch(
        "SELECT w.beneficiary_id, a.credits_posted - a.debits_posted FROM wallets w"
        " JOIN accounts a ON a.id = w.account_id WHERE w.school_year = $1", TEST_SCHOOL_YEAR))
    run = await run_bulk_reload(conn, TEST_SCHOOL_YEAR, actor=ACTOR, chunk_rows=CHUNK_ROWS)
    assert (run.wallets_opened, run.wallets_credited, run.credited_cents) == (0, 0, 0)
    assert run.beneficiaries_seen == len(await _expected(conn, TEST_SCHOOL_YEAR)) == len(before)
    for beneficiary_id, balance in before.items():
        assert await _balance(conn, beneficiary_id, TEST_SCHOOL_YEAR) == balance


async def test_existing_wallets_are_topped_up(conn):
    """A wallet that exists without the year's credit (a correction opened it) gets the
    programme amount on top."""
    await _amounts(conn)
    await _renew_next_year(conn, "id IN (5, 6)")
    corrected = await reload_wallet(conn, "HDF0000005", NEXT, 7_00, reference="correction-1")
    assert corrected.credited_cents == 7_00
    run = await run_bulk_reload(conn, NEXT, actor=ACTOR, chunk_rows=CHUNK_ROWS)
    expected = await _expected(conn, NEXT)
    assert (run.wallets_opened, run.wallets_credited) == (1, 2)
    assert await _balance(conn, 5, NEXT) == 7_00 + expected[5]
    assert await _balance(conn, 6, NEXT) == expected[6]


async def test_running_twice_credits_once_and_a_later_run_credits_only_new_renewals(conn):
    await _amounts(conn)
    await _renew_next_year(conn, "id <= 200")
    first = await run_bulk_reload(conn, NEXT, actor=ACTOR, chunk_rows=CHUNK_ROWS)
    second = await run_bulk_reload(conn, NEXT, actor=ACTOR, chunk_rows=CHUNK_ROWS)
    assert second.id != first.id and second.finished
    assert (second.wallets_credited, second.credited_cents, second.beneficiaries_seen) == (0, 0, 200)
    assert len(await _bulk_credits(conn, NEXT)) == 200
    await _renew_next_year(conn, "id IN (201, 250)")
    third = await run_bulk_reload(conn, NEXT, actor=ACTOR, chunk_rows=CHUNK_ROWS)
    assert third.wallets_credited == 2
    assert await _bulk_credits(conn, NEXT) == await _expected(conn, NEXT)


async def test_pending_fees_are_recovered_first_oldest_first(conn):
    await _amounts(conn)
    await _renew_next_year(conn, "id IN (1, 2, 3)")
    # Beneficiary 1 (lycée: books): two fees that the reload covers. Beneficiary 2 (lycée):
    # a fee larger than the reload: all of it goes to the fee, the rest stays pending.
    await conn.execute(
        "INSERT INTO pending_fees (beneficiary_id, amount_cents, reason, created_at) VALUES"
        " (1, 500, 'replacement', '2026-10-02'), (1, 300, 'replacement', '2026-10-01'),"
        " (2, 50000, 'test: larger than a reload', '2026-10-01')")
    run = await run_bulk_reload(conn, NEXT, actor=ACTOR)
    programme = dict(await conn.fetch("SELECT beneficiary_id, programme FROM rights WHERE school_year = $1", NEXT))
    amount = {1: BOOKS_CENTS if programme[1] == "BOOKS" else EQUIPMENT_CENTS,
              2: BOOKS_CENTS if programme[2] == "BOOKS" else EQUIPMENT_CENTS}
    assert await _balance(conn, 1, NEXT) == amount[1] - 8_00
    assert await _balance(conn, 2, NEXT) == 0
    assert await _balance(conn, 3, NEXT) > 0
    fees = await conn.fetch("SELECT beneficiary_id, amount_cents, recovered_cents FROM pending_fees"
                            " ORDER BY beneficiary_id, created_at")
    assert [tuple(f) for f in fees] == [(1, 3_00, 3_00), (1, 5_00, 5_00), (2, 500_00, amount[2])]
    assert run.fee_recovered_cents == 8_00 + amount[2]
    taken = await conn.fetch("SELECT amount_cents FROM transfers WHERE code = 'REPLACEMENT_FEE'"
                             " ORDER BY id")
    assert [t["amount_cents"] for t in taken] == [3_00, 5_00, amount[2]]
    # What is still pending comes out of the next credit.
    again = await conn.fetchrow("SELECT * FROM reload_wallet(2, $1, 1000000, 'top-up')", NEXT)
    assert again["fee_recovered_cents"] == 500_00 - amount[2]


async def test_stopped_after_some_chunks_it_resumes_where_it_stopped(conn):
    await _amounts(conn)
    await _renew_next_year(conn)
    partial = await run_bulk_reload(conn, NEXT, actor=ACTOR, chunk_rows=CHUNK_ROWS, max_chunks=2)
    assert not partial.finished and partial.chunks_done == 2
    assert len(await _bulk_credits(conn, NEXT)) == 2 * CHUNK_ROWS
    resumed = await run_bulk_reload(conn, NEXT, actor=ACTOR, chunk_rows=CHUNK_ROWS)
    assert resumed.id == partial.id and resumed.finished
    assert resumed.wallets_credited == 300 == resumed.beneficiaries_seen
    assert await _bulk_credits(conn, NEXT) == await _expected(conn, NEXT)
    actions = [r["action"] for r in await conn.fetch(
        "SELECT action FROM audit_log WHERE action LIKE 'reload.bulk%' ORDER BY id")]
    assert actions == ["reload.bulk_start", "reload.bulk_resume", "reload.bulk_finish"]


async def test_a_run_killed_inside_a_chunk_loses_only_that_chunk(conn, dsn):
    """The runner's connection is terminated while its third chunk waits on a lock: the chunk
    rolls back, the two before stay, and the resumed run credits everyone exactly once."""
    await _amounts(conn)
    await _renew_next_year(conn)
    third_chunk_member = await conn.fetchval(
        "SELECT beneficiary_id FROM rights WHERE school_year = $1 ORDER BY beneficiary_id"
        " OFFSET $2 LIMIT 1", NEXT, 2 * CHUNK_ROWS + 5)
    blocker = await asyncpg.connect(dsn)
    runner = await asyncpg.connect(dsn)
    try:
        async with blocker.transaction():
            await blocker.execute("SELECT 1 FROM beneficiaries WHERE id = $1 FOR UPDATE", third_chunk_member)
            task = asyncio.create_task(run_bulk_reload(runner, NEXT, actor=ACTOR, chunk_rows=CHUNK_ROWS))
            runner_pid = runner.get_server_pid()
            for _ in range(LOCK_WAIT_POLLS):
                if await conn.fetchval("SELECT $1 = ANY (pg_blocking_pids($2))",
                                       blocker.get_server_pid(), runner_pid):
                    break
                await asyncio.sleep(0.005)
            else:
                pytest.fail("the runner never reached the locked beneficiary")
            assert await conn.fetchval("SELECT pg_terminate_backend($1)", runner_pid)
            with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, ConnectionError)):
                await task
        assert len(await _bulk_credits(conn, NEXT)) == 2 * CHUNK_ROWS
        stopped = await latest_run(conn, NEXT)
        assert not stopped.finished and stopped.chunks_done == 2
    finally:
        await blocker.close()
        await runner.close()
    resumed = await run_bulk_reload(conn, NEXT, actor=ACTOR, chunk_rows=CHUNK_ROWS)
    assert resumed.id == stopped.id and resumed.finished
    assert await _bulk_credits(conn, NEXT) == await _expected(conn, NEXT)


async def test_a_second_process_is_refused_while_one_runs(conn, dsn):
    await _amounts(conn)
    other = await asyncpg.connect(dsn)
    try:
        assert await other.fetchval("SELECT pg_try_advisory_lock($1::integer, $2::integer)",
                                    BULK_RELOAD_LOCK_KEY, NEXT)
        with pytest.raises(BulkReloadRefused, match="running in another session"):
            await run_bulk_reload(conn, NEXT, actor=ACTOR)
    finally:
        await other.close()
    assert (await run_bulk_reload(conn, NEXT, actor=ACTOR)).finished


async def test_a_programme_without_an_amount_refuses_the_run(conn):
    await set_amount(conn, school_year=NEXT, programme="BOOKS", amount_cents=BOOKS_CENTS, actor=ACTOR)
    await _renew_next_year(conn)
    with pytest.raises(BulkReloadRefused, match=r"EQUIPMENT \(\d+ beneficiaries\)"):
        await run_bulk_reload(conn, NEXT, actor=ACTOR)
    assert await latest_run(conn, NEXT) is None
    assert await _bulk_credits(conn, NEXT) == {}


async def test_a_closed_school_year_cannot_be_reloaded(conn):
    await _amounts(conn, TEST_SCHOOL_YEAR)
    await pin_clock(conn, paris(NEXT, 5, 1, 0, 0, 0))
    with pytest.raises(BulkReloadRefused, match="closed on 1 May"):
        await run_bulk_reload(conn, TEST_SCHOOL_YEAR, actor=ACTOR)
    await pin_clock(conn, paris(NEXT, 4, 30, 23, 59, 59))
    assert (await run_bulk_reload(conn, TEST_SCHOOL_YEAR, actor=ACTOR, max_chunks=1)).chunks_done == 1
    # The run stopped on 30 April cannot go on in May either.
    await pin_clock(conn, paris(NEXT, 5, 1, 0, 0, 0))
    with pytest.raises(BulkReloadRefused, match="closed on 1 May"):
        await run_bulk_reload(conn, TEST_SCHOOL_YEAR, actor=ACTOR)


async def test_the_default_school_year_is_the_next_one_in_may_and_june(conn):
    assert await reload_school_year(conn) == TEST_SCHOOL_YEAR
    await pin_clock(conn, paris(NEXT, 5, 1, 0, 0, 0))
    assert await reload_school_year(conn) == NEXT


async def test_programme_amounts_are_set_audited_and_checked(conn):
    await _amounts(conn)
    await set_amount(conn, school_year=NEXT, programme="BOOKS", amount_cents=130_00, actor=ACTOR)
    assert [(a.programme, a.amount_cents) for a in await list_amounts(conn, NEXT)] == [
        ("BOOKS", 130_00), ("EQUIPMENT", EQUIPMENT_CENTS)]
    last = await conn.fetchrow("SELECT actor, subject, before, after FROM audit_log ORDER BY id DESC LIMIT 1")
    assert (last["actor"], last["subject"]) == (ACTOR, f"programme:{NEXT}:BOOKS")
    assert (last["before"], last["after"]) == ('{"amount_cents": 12000}', '{"amount_cents": 13000}')
    for programme, cents in [("books", 1_00), ("B", 1_00), ("BOOKS", 0), ("BOOKS", 1_000_01)]:
        with pytest.raises(ProgrammeError):
            await set_amount(conn, school_year=NEXT, programme=programme, amount_cents=cents, actor=ACTOR)


async def test_a_run_keeps_the_amounts_it_started_with(conn):
    await _amounts(conn)
    await _renew_next_year(conn)
    await run_bulk_reload(conn, NEXT, actor=ACTOR, chunk_rows=CHUNK_ROWS, max_chunks=1)
    await set_amount(conn, school_year=NEXT, programme="BOOKS", amount_cents=1_00, actor=ACTOR)
    await run_bulk_reload(conn, NEXT, actor=ACTOR, chunk_rows=CHUNK_ROWS)
    assert set((await _bulk_credits(conn, NEXT)).values()) == {BOOKS_CENTS, EQUIPMENT_CENTS}


def _hdfpay(dsn: str, *args: str):
    return subprocess.run([sys.executable, "-m", "hdfpay.cli", *args], capture_output=True,
                          text=True, timeout=COMMAND_TIMEOUT_S, stdin=subprocess.DEVNULL,
                          env={**os.environ, "DATABASE_URL": dsn})


async def test_the_cli_sets_amounts_runs_with_a_progress_bar_and_resumes(conn, dsn):
    await _renew_next_year(conn)
    year = ["--school-year", str(NEXT)]
    refused = _hdfpay(dsn, "bulk-reload", *year)
    assert refused.returncode == 2 and "hdfpay programmes set" in refused.stderr
    assert _hdfpay(dsn, "programmes", "set", str(NEXT), "books", "120").returncode == 0
    assert _hdfpay(dsn, "programmes", "set", str(NEXT), "EQUIPMENT", "180,00").returncode == 0
    listed = _hdfpay(dsn, "programmes", "list", *year)
    assert "BOOKS" in listed.stdout and "EQUIPMENT" in listed.stdout and "180,00" in listed.stdout
    stopped = _hdfpay(dsn, "bulk-reload", *year, "--chunk-rows", "100", "--max-chunks", "1")
    assert stopped.returncode == 3 and "resume with" in stopped.stdout
    finished = _hdfpay(dsn, "bulk-reload", *year, "--chunk-rows", "100")
    assert finished.returncode == 0, finished.stderr
    bars = [line for line in finished.stderr.splitlines() if line.startswith("[")]
    assert bars[-1].startswith("[" + "#" * 30 + "] 100% 300/300 beneficiaries")
    assert "finished" in finished.stdout and "300 credited" in finished.stdout
    status = _hdfpay(dsn, "bulk-reload", *year, "--status")
    assert status.returncode == 0 and "finished" in status.stdout
    assert await _bulk_credits(conn, NEXT) == await _expected(conn, NEXT)
    bad = _hdfpay(dsn, "programmes", "set", str(NEXT), "BOOKS", "douze")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_the_benchmark_runs_and_checks_itself(pg_cluster, tmp_path):
    """A small run of loadtest.bench_bulk_reload on the test cluster (its own database)."""
    output = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "loadtest.bench_bulk_reload", "--beneficiaries", "3000",
         "--chunk-rows", "1000", "--output", str(output)],
        capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, stdin=subprocess.DEVNULL,
        cwd=Path(__file__).resolve().parent.parent,
        env={**os.environ, "DATABASE_URL": pg_cluster.dsn_for("postgres")})
    assert result.returncode == 0, result.stderr
    figures = json.loads(output.read_text())
    assert figures["problems"] == []
    assert (figures["wallets_credited"], figures["second_run_credited"]) == (3000, 0)
    assert figures["fee_recovered_cents"] == 30 * 5_00
    assert figures["wallets_opened"] == 2700
    assert figures["baseline_insert_s"] > 0 and figures["wallets_per_s"] > 0
    assert result.stdout.splitlines()[-1].startswith("wallets=3000 seconds=")
