"""The bench's own arithmetic (issue 16 §2, §3): the open-loop schedule and its latencies from
the due time, the approvals-only figures of a hot card, the minimal debit's SQL on a real ledger;
and the terminal's rule in the load generators (issue 17 §4): a purchase without a trustworthy
answer reversed until the reversal is answered, what is still owed at the end reported.
No speed is asserted here: `hdfpay bench` measures it."""

from __future__ import annotations

import asyncio
import gc
import os
import time
from types import SimpleNamespace

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from loadtest.bench_cpu import cpu_budget, postgres_cpu_s, postmaster_of
from loadtest.bench_limit import minimal_debit_script
from loadtest.bench_load import answers_summary, card_draw, percentile, pgbench_script, run_tool
from loadtest.load_process import HEALTH_PATH, collector_paused, open_connections
from hdfpay.heap import freeze_startup_heap
from ledger.housekeeping import NEW_WAL_SEGMENT, housekeeping_between, housekeeping_counts
from ledger.wal_reserve import ready_wal_segments, reserve_wal, wal_segment_bytes
from ledger.journal_footprint import journal_footprint
from loadtest.bench_report import _reversals_problems
from loadtest.open_loop_report import open_loop_cpu
from loadtest.open_loop import due_offsets_s, rates_at, run_open_loop
from loadtest.reversal_duty import REVERSAL_ID_SUFFIX, sell
from terminal_protocol.client import TerminalClient
from terminal_protocol.codec import decode_request
from terminal_protocol.messages import Response

from conftest import TEST_BENEFICIARIES, TEST_SCHOOL_YEAR

SERVICE_S = 0.05                      # the fake terminal's answer time in the latency test
GIVE_UP_AFTER_S = 0.3                 # a run's last bound, for a reversal never answered


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


def test_an_open_loop_run_says_how_busy_the_machine_was_and_what_a_purchase_cost():
    """10 s on 2 cores (20 core-seconds): 15 used by the three parties, 1 by others, 4 idle."""
    run = {"answered": 8_000,
           "cpu_s": {"client": 4.0, "server": 5.0, "postgres": 6.0, "rest": 1.0, "idle": 4.0}}
    assert open_loop_cpu(run) == {"busy_pct": 80.0, "cpu_ms_per_purchase": 1.875}
    stolen = {**run, "cpu_s": {**run["cpu_s"], "idle": 3.0, "steal": 1.0}}   # the host's, busy
    assert open_loop_cpu(stolen)["busy_pct"] == 85.0
    assert open_loop_cpu({**run, "answered": 0})["cpu_ms_per_purchase"] == 0.0


def test_housekeeping_between_names_what_ran():
    before = {"autovacuum transfers": 1, "autoanalyze transfers": 2, "checkpoint": 5}
    after = {"autovacuum transfers": 2, "autoanalyze transfers": 2, "checkpoint": 5,
             "autovacuum authorizations": 1}
    assert housekeeping_between(before, after) == ["autovacuum authorizations",
                                                   "autovacuum transfers"]
    assert housekeeping_between(after, after) == []


async def test_housekeeping_counts_see_a_checkpoint_and_every_journal_table(conn):
    before = await housekeeping_counts(conn)
    assert {"autovacuum authorizations", "autoanalyze transfers"} <= before.keys()
    await conn.execute("CHECKPOINT")
    async with asyncio.timeout(10):      # the checkpointer publishes its counters just after
        while "checkpoint" not in housekeeping_between(before, await housekeeping_counts(conn)):
            await asyncio.sleep(0.05)


def test_the_load_generator_does_not_collect_while_it_measures():
    """A full collection would stop its event loop mid-run (17-37 ms measured): the pause
    would be counted as the server's latency."""
    assert gc.isenabled()
    with collector_paused():
        assert not gc.isenabled() and gc.get_freeze_count() > 0
    assert gc.isenabled() and gc.get_freeze_count() == 0


def test_the_server_freezes_its_startup_heap():
    try:
        assert freeze_startup_heap() == gc.get_freeze_count() > 1_000
    finally:
        gc.unfreeze()


class _UnsureTerminal:
    """Answers every purchase 91 (or not at all), and its reversal only at the `answer_at`-th
    try (never with None): the same bytes must come each time."""

    def __init__(self, purchase_answers: bool = True, answer_at: int | None = 3) -> None:
        self.terminal_id = "BENCH-E2E-0001"
        self._builder = TerminalClient("http://unused", self.terminal_id)
        self.purchase_answers, self.answer_at = purchase_answers, answer_at
        self.reversals: list[bytes] = []

    async def purchase(self, uid, amount, request_id):
        if not self.purchase_answers:
            raise TimeoutError
        return Response(v=1, type="purchase", rc="91", request_id=request_id)

    def reversal_request(self, original, request_id):
        return self._builder.reversal_request(original, request_id=request_id)

    async def send_raw(self, body: bytes) -> bytes:
        self.reversals.append(body)
        if self.answer_at is None or len(self.reversals) < self.answer_at:
            raise TimeoutError
        request = decode_request(body)
        return (b'{"v":1,"type":"reversal","request_id":"%s","stan":%d,"rc":"25"}'
                % (request.request_id.encode(), request.stan))


@pytest.mark.parametrize("purchase_answers", [True, False], ids=["answered 91", "no answer"])
async def test_a_purchase_without_a_trustworthy_answer_is_reversed_until_answered(purchase_answers):
    terminal = _UnsureTerminal(purchase_answers)
    sale = await sell(terminal, b"\x04", 100, "e2e1-0001-0000000001")
    assert sale.outcome == ("91" if purchase_answers else "timeout")
    assert sale.reversal.rc == "25" and not sale.owed
    assert len(terminal.reversals) == 3 and len(set(terminal.reversals)) == 1    # same bytes
    reversal = decode_request(terminal.reversals[0])
    assert reversal.original_request_id == "e2e1-0001-0000000001"
    assert reversal.request_id == "e2e1-0001-0000000001" + REVERSAL_ID_SUFFIX


async def test_a_reversal_unanswered_at_the_last_bound_is_reported_owed():
    terminal = _UnsureTerminal(answer_at=None)
    sale = await sell(terminal, b"\x04", 100, "e2e1-0001-0000000001",
                      give_up_at=time.monotonic() + GIVE_UP_AFTER_S)
    assert sale.owed and sale.reversal is None and len(terminal.reversals) >= 2
    problems = _reversals_problems({"tag": "e2e1", "owed": 1, "reversals": {}}, 0)
    assert problems == ["e2e1: money still owed: 1 reversal(s) unanswered at the end of the run"]


async def test_the_open_loop_reverses_its_91s_and_counts_them():
    done = await run_open_loop([_UnsureTerminal(answer_at=1)],
                               lambda i: (b"\x04", 1, f"ol1-due-{i:010d}"), 100, 0.05, bound_s=10)
    assert done["codes"] == {"91": 5} and done["reversals"] == {"25": 5} and done["owed"] == 0
    assert _reversals_problems({"tag": "ol1", **done}, 5) == []


async def test_the_load_generator_opens_one_connection_per_terminal_before_it_measures():
    """The timed window must not pay the terminals' TCP handshakes: after open_connections, as
    many requests as terminals at once reuse the connections it opened."""
    peers: set = set()
    all_in = asyncio.Barrier(8)         # each answer waits for all 8: no connection is freed early

    async def healthz(request: web.Request) -> web.Response:
        peers.add(request.transport.get_extra_info("peername"))
        async with asyncio.timeout(10):
            await all_in.wait()
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get(HEALTH_PATH, healthz)
    async with TestServer(app) as server, \
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=8)) as session:
        url = str(server.make_url("")).rstrip("/")
        await open_connections(session, url, 8)
        assert len(peers) == 8
        opened = set(peers)
        async def get() -> None:
            async with session.get(url + HEALTH_PATH) as reply:
                await reply.read()
        await asyncio.gather(*(get() for _ in range(8)))
        assert peers == opened


async def test_wal_segments_are_made_ready_before_they_are_needed(conn):
    """After reserve_wal, writing that much WAL creates no segment (each new one would stop
    every commit for 105-169 ms): the files in pg_wal do not grow, the ready ones are used."""
    segment = await wal_segment_bytes(conn)
    ready = await reserve_wal(conn, 8 * segment)
    assert ready >= 8
    before = await housekeeping_counts(conn)
    for _ in range(ready - 1):
        await conn.execute("SELECT pg_logical_emit_message(false, 't', ''), pg_switch_wal()")
    assert await ready_wal_segments(conn) <= 1
    assert NEW_WAL_SEGMENT not in " ".join(housekeeping_between(before,
                                                              await housekeeping_counts(conn)))
    for _ in range(3):                  # past the ready ones: new segments, and they are named
        await conn.execute("SELECT pg_logical_emit_message(false, 't', ''), pg_switch_wal()")
    assert NEW_WAL_SEGMENT in " ".join(housekeeping_between(before,
                                                          await housekeeping_counts(conn)))
