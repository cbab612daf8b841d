"""The bench's own arithmetic (issue 16 §2, §3): the open-loop schedule and its latencies from
the due time, the approvals-only figures of a hot card, the minimal debit's SQL on a real ledger.
No speed is asserted here: `hdfpay bench` measures it."""

from __future__ import annotations

import asyncio
import os
from types import SimpleNamespace

import pytest

from loadtest.bench_cpu import cpu_budget, postgres_cpu_s, postmaster_of
from loadtest.bench_limit import minimal_debit_script
from loadtest.bench_load import answers_summary, card_draw, percentile, pgbench_script, run_tool
from ledger.journal_footprint import journal_footprint
from loadtest.open_loop import due_offsets_s, rates_at, run_open_loop

from conftest import TEST_BENEFICIARIES, TEST_SCHOOL_YEAR

SERVICE_S = 0.05                      # the fake terminal's answer time in the latency test


def test_the_cpu_budget_shows_where_each_authorization_spends_its_time():
    """Per authorization, each part's CPU milliseconds, and the throughput the cores allow."""
    e2e = {"answered": 1000, "cpu_s": {"client": 0.3, "server": 0.4, "postgres": 0.3}}
    pgb = {"transactions": 2000, "cpu_s": {"client": 0.1, "postgres": 1.5}}
    budget = cpu_budget(e2e, pgb, cores=2)
    assert budget["e2e_ms"] == {"client": 0.3, "server": 0.4, "postgres": 0.3}
    assert budget["pgbench_ms"] == {"client": 0.05, "postgres": 0.75}
    assert budget["e2e_ceiling_tps"] == 2000                             # 2 cores / 1.0 ms
    assert budget["e2e_ceiling_without_load_generator_tps"] == round(2000 / 0.7)
    assert budget["pgbench_ceiling_tps"] == 2500                         # 2 cores / 0.8 ms
    assert cpu_budget({"answered": 0, "cpu_s": e2e["cpu_s"]}, pgb, 2)["e2e_ceiling_tps"] == 0


def test_requests_are_due_at_fixed_times():
    assert due_offsets_s(3, 1) == [0, 1 / 3, 2 / 3]
    due = due_offsets_s(100, 2)
    assert len(due) == 200 and due[0] == 0 and due[-1] < 2
    assert all(abs(b - a - 0.01) < 1e-9 for a, b in zip(due, due[1:]))
    assert len(due_offsets_s(10, 0.1)) == 1 and len(due_offsets_s(7.5, 2)) == 15
    for rate, seconds in ((0, 1), (10, 0), (-1, 1)):
        with pytest.raises(ValueError):
            due_offsets_s(rate, seconds)


def test_open_loop_rates_are_fractions_of_the_maximum():
    assert rates_at((0.25, 0.5, 0.75), 1322) == [330.5, 661.0, 991.5]
    assert rates_at((0.25,), 2) == [1.0]                   # never below one a second


class _SlowTerminal:
    """Answers every purchase after SERVICE_S, approved."""

    async def purchase(self, uid, amount, request_id):
        await asyncio.sleep(SERVICE_S)
        return SimpleNamespace(rc="00")


async def test_open_loop_latency_counts_from_the_due_time_not_the_send_time():
    """Ten purchases due 10 ms apart through one terminal answering in 50 ms: the tenth waited
    for the nine before it. Timed from its send, each would look like 50 ms (coordinated
    omission); from its due time the last took about 9 × 40 + 50 = 410 ms."""
    done = await run_open_loop([_SlowTerminal()], lambda i: (b"\x04", 1, f"t-{i:08d}"),
                               100, 0.1, bound_s=10)
    latencies = sorted(ms for _, ms in done["latencies"])
    assert done["scheduled"] == 10 and len(latencies) == 10 and not done["overloaded"]
    assert latencies[0] >= SERVICE_S * 1000 * 0.9
    assert latencies[-1] >= 9 * 40 + SERVICE_S * 1000 * 0.9
    assert max(done["queued_ms"]) >= 9 * 40 * 0.9


def test_a_hot_cards_figures_are_the_approvals_with_91_counted_apart():
    answered = [("00", 10.0)] * 98 + [("91", 0.2)] * 100 + [("00", 50.0), ("00", 90.0)]
    summary = answers_summary(answered, {"00": 100, "91": 100}, 2.0)
    assert (summary["answered"], summary["approved"], summary["card_busy"]) == (200, 100, 100)
    assert (summary["tps"], summary["approved_tps"]) == (100.0, 50.0)
    assert summary["approved_p50_ms"] == 10.0 and summary["approved_p99_ms"] == 50.0
    assert summary["p50_ms"] == 0.2                         # all answers: the 91s flatter it


def test_percentiles_are_observed_values():
    values = [float(v) for v in range(1, 1001)]
    assert (percentile(values, 0.5), percentile(values, 0.99), percentile(values, 0.999)) == \
        (500.0, 990.0, 999.0)
    assert percentile([], 0.999) == 0.0


def test_the_limit_draws_the_cards_the_function_run_draws():
    limit = minimal_debit_script("lim1", 1000, 2026, 7)
    function = pgbench_script("pgb1", 1000, None, ["T-1"])
    for line in card_draw(1000, None):
        assert line in limit and line in function
    assert limit.count(";") == 1 and "credits_posted - a.debits_posted >= :amount" in limit


def test_postgres_cpu_is_only_measured_for_a_local_postgres():
    assert postmaster_of(os.getpid()) is None              # our parent is not a postmaster
    assert postmaster_of(2 ** 22 + 1) is None               # no such process
    assert postgres_cpu_s(None) == (0.0, frozenset())


async def test_the_minimal_debit_debits_a_wallet_and_journals_it(pg_cluster, dsn, conn):
    """pgbench runs the script on the seeded ledger: one PURCHASE transfer per transaction, the
    wallets posted accordingly (the fixture checks the ledger balances afterwards)."""
    merchant = await conn.fetchval("SELECT merchant_account_id FROM partners ORDER BY id LIMIT 1")
    script = pg_cluster.data_dir.parent / f"limit-{os.getpid()}.sql"
    script.write_text(minimal_debit_script("lim1", TEST_BENEFICIARIES, TEST_SCHOOL_YEAR, merchant))
    try:
        run_tool([str(pg_cluster.tool("pgbench")), "-n", "-t", "20", "-D", "cnt=0",
                  "-f", str(script), dsn], 60)
    finally:
        script.unlink()
    debits = await conn.fetch("SELECT amount_cents FROM transfers WHERE code = 'PURCHASE'"
                              " AND reference LIKE 'lim1-%' AND credit_account_id = $1", merchant)
    assert len(debits) == 20


async def test_the_journal_footprint_counts_rows_and_bytes_per_message(conn):
    """The sizing figure for partitioning the journal: exact rows, bytes with the indexes."""
    before = await journal_footprint(conn)
    await conn.execute(
        "INSERT INTO authorizations (terminal_id, request_id, message_type, request_hash,"
        " response_code, created_at, response)"
        " SELECT t.id, 'footprint-' || g, 'PURCHASE', NULL, '25', now(), '{}'"
        " FROM (SELECT id FROM terminals ORDER BY id LIMIT 1) t, generate_series(1, 500) g")
    after = await journal_footprint(conn)
    assert after["tables"]["authorizations"]["n"] == before["tables"]["authorizations"]["n"] + 500
    assert after["tables"]["transfers"]["n"] == before["tables"]["transfers"]["n"]
    assert after["bytes"] > before["bytes"] and after["bytes_per_message"] > 0
    assert after["bytes"] == sum(t["bytes"] for t in after["tables"].values())
