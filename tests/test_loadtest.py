"""`hdfpay loadtest`: locust users speaking the real, MAC'd protocol against a real server, then the
ledger checked — short headless runs as a user runs them, and the pieces they rest on.

locust is never imported here: importing it monkey-patches the whole process for gevent, which
would break the asyncio tests of the same session. The scenarios run in their own processes.
"""

from __future__ import annotations

import csv
import json
import os
import random
import subprocess
import sys
from pathlib import Path

from loadtest.approvals_journal import AnswersJournal, read_owed
from loadtest.locust_checks import read_journal
from loadtest.bench_keys import BenchKeys
from hdfpay.config import Settings
from loadtest.locust_runner import (LOCUSTFILE_DIR, SCENARIOS, LoadRun, LoadtestOptions,
                                 locust_environment, option_problem, reconcile)
from ledger.demo_region import card_uid

sys.path.insert(0, str(LOCUSTFILE_DIR))  # the locust side's plain modules (not locust itself)
from card_mix import decline_cases, MAX_SEEDED_BALANCE_CENTS  # noqa: E402
from load_config import load_config_from  # noqa: E402

# A short run: setup (cluster, seed, keys, server) is most of it.
RUN_SECONDS = 5
RUN_CARDS = 500
RUN_TIMEOUT_S = 120
DRAWS_PER_CASE = 200


def loadtest(scenario: str, users: int, output: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hdfpay.cli", "loadtest", scenario, "--users", str(users),
         "--seconds", str(RUN_SECONDS), "--cards", str(RUN_CARDS), "--output", str(output)],
        capture_output=True, text=True, timeout=RUN_TIMEOUT_S, stdin=subprocess.DEVNULL,
        env={**os.environ, "HDFPAY_LOADTEST_RANDOM_SEED": "test"})


def assert_run_passed(result: subprocess.CompletedProcess, output: Path) -> None:
    assert result.returncode == 0, result.stdout + result.stderr
    assert (output / "locust_stats.csv").stat().st_size > 0
    assert (output / "report.html").stat().st_size > 0
    assert "no request failed" in result.stdout
    assert "ledger balanced" in result.stdout
    assert "no wallet negative" in result.stdout
    assert "approvals reconciled" in result.stdout
    summary = json.loads((output / "summary.json").read_text())
    assert summary["requests"] > 0 and summary["failures"] == 0 and summary["problems"] == []


def test_decline_mix_answers_every_reason_and_the_ledger_agrees(tmp_path):
    result = loadtest("decline-mix", 4, tmp_path)
    assert_run_passed(result, tmp_path)
    assert "every decline reason seen" in result.stdout


def test_hot_card_is_never_overspent(tmp_path):
    result = loadtest("hot-card", 8, tmp_path)
    assert_run_passed(result, tmp_path)
    assert "no overspend" in result.stdout


def test_students_browse_their_space_beside_the_tills(tmp_path):
    """The students' pages under load beside the terminals: each has its own latency row, and
    none failed (a login that does not reach Ma carte, a page without its content, fail)."""
    result = loadtest("students", 8, tmp_path)
    assert_run_passed(result, tmp_path)
    rows = {row["Name"]: row for row in csv.DictReader((tmp_path / "locust_stats.csv").open())}
    for page in ("portal POST /connexion (argon2id)", "portal GET /ma-carte"):
        assert int(rows[page]["Request Count"]) > 0 and rows[page]["Failure Count"] == "0"
    assert int(rows["purchase"]["Request Count"]) > 0


def test_the_users_read_what_the_command_provisions(tmp_path):
    """The variables `hdfpay loadtest` sets are the ones loadtest/load_config.py reads."""
    terminals = ["BENCH-E2E-0001", "BENCH-E2E-0002"]
    key_file = tmp_path / "terminal-keys.json"
    key_file.write_text(json.dumps({t: {} for t in terminals}))
    run = LoadRun(LoadtestOptions("peak", users=2, seconds=1, cards=1234, think_ms=50),
                  Settings.from_env(), "postgresql://unused", tmp_path, tmp_path,
                  keys=BenchKeys(tmp_path / "keystore.json", "x", key_file, "bdk", terminals,
                                 [], [], 0.0),
                  categories={terminals[0]: "BOOKSHOP", terminals[1]: "EQUIPMENT"},
                  max_purchase_cents=250_00)
    config = load_config_from(locust_environment(run, tmp_path / "journal"))
    assert [(s.terminal_id, s.category) for s in config.terminals] == [
        ("BENCH-E2E-0001", "BOOKSHOP"), ("BENCH-E2E-0002", "EQUIPMENT")]
    assert (config.key_file, config.journal_dir) == (key_file, tmp_path / "journal")
    assert (config.cards, config.max_purchase_cents, config.think_ms) == (1234, 250_00, 50)


def test_every_scenario_has_its_locustfile_and_bad_options_are_refused():
    settings = Settings.from_env()
    for scenario, locustfile in SCENARIOS.items():
        assert (LOCUSTFILE_DIR / locustfile).is_file()
        assert option_problem(LoadtestOptions(scenario, users=2, seconds=1), settings) is None
    assert "--users" in option_problem(LoadtestOptions("peak", users=0, seconds=1), settings)
    assert "--cards" in option_problem(LoadtestOptions("peak", 1, 1, cards=10), settings)
    assert "unknown scenario" in option_problem(LoadtestOptions("rush", 1, 1), settings)


def test_decline_cases_follow_the_demo_numbering():
    rng, cards, limit = random.Random(7), 1000, 300_00
    numbers = {}
    for case in decline_cases(cards, limit):
        draws = [case.draw(rng, cards, limit) for _ in range(DRAWS_PER_CASE)]
        numbers[case.reason] = [int.from_bytes(uid[1:], "big") for uid, _ in draws]
        if case.reason == "unknown card":
            assert all(len(uid) == 4 and uid[0] == 0x08 for uid, _ in draws)
        elif case.reason == "over the limit":
            assert all(amount > limit for _, amount in draws)
        elif case.reason == "insufficient funds":
            assert not case.partial_ok
            assert all(MAX_SEEDED_BALANCE_CENTS < amount <= limit for _, amount in draws)
        else:
            assert all(uid == card_uid(n) and 1 <= n <= cards
                       for (uid, _), n in zip(draws, numbers[case.reason]))
    assert {n % 97 for n in numbers["lost card"]} == {1}
    assert {n % 97 for n in numbers["stolen card"]} == {2}
    assert {n % 97 for n in numbers["damaged card"]} == {3}
    assert all(n % 50 == 0 and n % 97 not in (1, 2, 3) for n in numbers["no rights"])
    assert all(n % 50 and n % 97 not in (1, 2, 3) for n in numbers["approvable"])


def row(terminal: str, request_id: str, message_type: str, rc: str, approved: int,
        reversed_cents: int = 0) -> dict:
    return {"terminal_id": terminal, "request_id": request_id, "message_type": message_type,
            "response_code": rc, "amount_approved_cents": approved,
            "amount_reversed_cents": reversed_cents}


def answer(message_type: str, rc: str, approved: int) -> dict:
    return {"type": message_type, "rc": rc, "approved_cents": approved}


def test_reconciliation_accepts_only_the_approvals_the_terminals_saw():
    ledger = [row("T1", "a", "PURCHASE", "00", 500), row("T1", "b", "REVERSAL", "00", 500),
              row("T1", "c", "PURCHASE", "51", 0),
              row("T2", "lost", "PURCHASE", "00", 700, reversed_cents=700)]
    answers = {("T1", "a"): answer("purchase", "00", 500),
               ("T1", "b"): answer("reversal", "00", 500),
               ("T1", "c"): answer("purchase", "51", 0)}
    line, problems = reconcile(answers, ledger)
    assert problems == [] and "2 approvals seen" in line and "1 whose answer was lost" in line

    # An approval the terminal saw but the ledger lacks, or holds with another amount.
    _, problems = reconcile({**answers, ("T1", "d"): answer("purchase", "00", 100)}, ledger)
    assert problems == ["T1 d: approved purchase not in the ledger"]
    _, problems = reconcile({**answers, ("T1", "a"): answer("purchase", "00", 400)}, ledger)
    assert problems and "saw 00 400" in problems[0]
    # Money moved that no terminal saw approved, and was not voided.
    _, problems = reconcile(answers, ledger + [row("T2", "e", "PURCHASE", "00", 300)])
    assert problems == ["T2 e: PURCHASE moved 300 cents, no terminal saw it approved"]


def test_a_void_left_unanswered_is_reported_owed_not_forgotten(tmp_path):
    journal = AnswersJournal(tmp_path)
    journal.owe("T1", "void-1", "reversal")
    journal.record("T1", "void-1", "reversal", "91", 0)        # retried until answered
    journal.record("T1", "void-1", "reversal", "00", 500)
    journal.settled("T1", "void-1")
    journal.owe("T1", "void-2", "reversal")                    # the user was stopped here
    journal.close()
    assert read_owed(tmp_path) == [("T1", "void-2", "reversal")]
    assert read_journal(tmp_path) == {("T1", "void-1"): {"terminal": "T1", "request_id": "void-1",
                                                         "type": "reversal", "rc": "00",
                                                         "approved_cents": 500}}
