"""The bank test under faults (issue 17 §3): `hdfpay chaos` on a short schedule, every fault kind
once (a worker killed, the primary paused, killed, crashed and restarted as the standby, etcd
restarted), and its verdict; and the checker shown to fail on a history that breaks a property
(a checker that cannot fail proves nothing).

Real etcd, Patroni, PostgreSQL and `hdfpay serve --workers 2`, started by the command itself in
a throwaway directory; the business clock pinned to the suite's school day.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from loadtest.bank_check import LedgerView, bank_problems
from loadtest.nemesis import FAULT_KINDS
from loadtest.till_journal import JournalState, SeenApproval, TillJournal, replay

from conftest import SCHOOL_DAY

# The whole command, cluster start and stop included: about 60 s on the 2-core machine.
CHAOS_TIMEOUT_S = 300
CHAOS_SEED = 17
TERMINAL = "BENCH-E2E-0001"


def _chaos(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hdfpay.cli", "chaos", *args],
                          capture_output=True, text=True, timeout=CHAOS_TIMEOUT_S,
                          stdin=subprocess.DEVNULL, env=dict(os.environ))


def test_the_bank_keeps_every_approval_through_every_fault(tmp_path):
    output = tmp_path / "chaos"
    done = _chaos("--seconds", "1", "--seed", str(CHAOS_SEED), "--terminals", "6",
                  "--cards", "200", "--business-time", SCHOOL_DAY.isoformat(),
                  "--output", str(output))
    print(done.stdout[-4000:])
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    results = json.loads((output / "results.json").read_text())
    assert results["passed"] and results["problems"] == []
    assert sorted(f["kind"] for f in results["faults"]) == sorted(FAULT_KINDS)
    assert all(f["error"] is None and f["recovered_s"] is not None for f in results["faults"])
    counts = results["counts"]
    assert counts["approvals_seen"] > 0 and counts["money_owed"] == 0
    assert counts["ledger_debits"] == (counts["approvals_seen"]
                                       + counts["ledger_debits_reversed_unseen"])
    assert counts["audit_acknowledged"] > 0
    summary = results["fault_summary"]
    assert summary["failovers"] >= 2           # killed, then crashed: each time the other node
    assert len(summary["without_primary_s"]) == summary["failovers"]
    assert summary["without_primary"]["max_s"] > 0
    assert all(c["exit"] == 0 for c in results["commands"].values())
    assert "checks=passed" in done.stdout and "owed=0" in done.stdout
    assert (output / "journal.jsonl").exists() and (output / "server.log").exists()


def _ledger(purchases: dict, balances: dict[int, int]) -> LedgerView:
    return LedgerView(purchases, balances, [])


def _row(rc: str, approved: int, reversed_cents: int = 0) -> dict:
    return {"response_code": rc, "amount_approved_cents": approved,
            "amount_reversed_cents": reversed_cents}


def _seen(*approvals: SeenApproval) -> JournalState:
    return JournalState(approvals={(a.terminal, a.request_id): a for a in approvals},
                        purchases=len(approvals))


def test_the_checker_passes_a_consistent_history():
    seen = _seen(SeenApproval(TERMINAL, "sale-0001", 5, 300))
    ledger = _ledger({(TERMINAL, "sale-0001"): _row("00", 300),
                      (TERMINAL, "lost-answer"): _row("00", 200, 200),     # reversed in full
                      (TERMINAL, "tombstone"): _row("25", 0)}, {5: 9_700})
    counts, problems = bank_problems(seen, ledger, {5: 10_000})
    assert problems == []
    assert counts["ledger_debits"] == 2 and counts["ledger_debits_reversed_unseen"] == 1


def test_the_checker_fails_when_an_approval_seen_is_missing_from_the_ledger():
    seen = _seen(SeenApproval(TERMINAL, "sale-0001", 5, 300),
                 SeenApproval(TERMINAL, "fabricated", 5, 100))
    ledger = _ledger({(TERMINAL, "sale-0001"): _row("00", 300)}, {5: 9_700})
    _, problems = bank_problems(seen, ledger, {5: 10_000})
    assert any(p.startswith("approvals seen but not in the ledger: BENCH-E2E-0001 fabricated")
               for p in problems), problems
    assert any(p.startswith("balances that differ") for p in problems), problems


def test_the_checker_fails_on_a_debit_nobody_saw_and_on_money_still_owed():
    seen = _seen()
    seen.owed[(TERMINAL, "no-answer")] = b"{}"
    ledger = _ledger({(TERMINAL, "no-answer"): _row("00", 150, 50)}, {7: 9_850})
    _, problems = bank_problems(seen, ledger, {7: 10_000})
    assert any(p.startswith("debits neither seen approved nor reversed") for p in problems)
    assert any(p.startswith("money still owed") for p in problems)


def test_the_journal_remembers_what_is_owed(tmp_path):
    journal = TillJournal(tmp_path / "journal.jsonl")
    journal.purchase(TERMINAL, "approved", 5, 300)
    journal.answer(TERMINAL, "approved", "00", 300)
    journal.purchase(TERMINAL, "left-unanswered", 6, 100)           # the driver died here
    journal.purchase(TERMINAL, "answered-91", 7, 100)
    journal.owe(TERMINAL, "answered-91", b'{"type":"reversal"}')
    journal.purchase(TERMINAL, "settled", 8, 100)
    journal.owe(TERMINAL, "settled", b'{"type":"reversal"}')
    journal.settled(TERMINAL, "settled", "25", 0)
    journal.close()
    with (tmp_path / "journal.jsonl").open("a") as cut:
        cut.write('{"e":"answer","t":"BENCH-E2E-0001","id":"left-unans')     # a torn last line
    state = replay(tmp_path / "journal.jsonl")
    assert list(state.approvals) == [(TERMINAL, "approved")]
    assert state.owed_by(TERMINAL) == {"left-unanswered": None,
                                       "answered-91": b'{"type":"reversal"}'}
    assert state.settled == {(TERMINAL, "settled"): "25"} and state.purchases == 4


def test_an_unknown_fault_kind_is_refused_before_anything_starts(tmp_path):
    done = _chaos("--faults", "kill_worker,flood", "--output", str(tmp_path / "x"))
    assert done.returncode == 2 and "--faults takes some of" in done.stderr
