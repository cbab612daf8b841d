"""What `hdfpay chaos` prints and writes: the terminals' counts, the faults by kind, the time
without a primary at each failover (p50, max), the checks, and the JSON results."""

from __future__ import annotations

import json
import os
import platform
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from loadtest.bench_load import percentile
from terminal_protocol.amounts import format_euros

if TYPE_CHECKING:
    from loadtest.chaos_plan import ChaosRun


def spread(values: list[float]) -> dict:
    """p50 (nearest rank: a value that was observed) and max, in seconds."""
    ordered = sorted(values)
    return {"p50_s": round(percentile(ordered, 0.5), 3),
            "max_s": round(ordered[-1], 3) if ordered else 0.0}


def fault_summary(faults: list) -> dict:
    """By kind: how many, how long without an approval, how long until recovered; failovers."""
    kinds: dict[str, dict] = {}
    for kind in sorted({f.kind for f in faults}):
        of_kind = [f for f in faults if f.kind == kind and not f.error]
        kinds[kind] = {"count": sum(1 for f in faults if f.kind == kind),
                       "failed": sum(1 for f in faults if f.kind == kind and f.error),
                       "failovers": sum(1 for f in of_kind if f.failover),
                       "no_approval": spread([f.no_approval_s for f in of_kind]),
                       "recovered": spread([f.recovered_s for f in of_kind])}
    failovers = [f for f in faults if f.failover and not f.error]
    return {"by_kind": kinds, "failovers": len(failovers),
            "without_primary_s": [f.no_approval_s for f in failovers],
            "without_primary": spread([f.no_approval_s for f in failovers]),
            "new_leader": spread([f.new_leader_s for f in failovers
                                  if f.new_leader_s is not None])}


def print_report(run: ChaosRun) -> None:
    tally, counts, faults = run.tally, run.counts, fault_summary(run.faults)
    answers = ", ".join(f"{rc} × {n}" for rc, n in sorted(tally.purchases.items()))
    print(f"\n{run.options.terminals} terminals sold for {run.selling_s:.1f} s, then settled "
          f"their reversals in {run.settle_s:.1f} s")
    print(f"purchases: {counts.get('purchases_sent', 0)} sent; answers {answers or 'none'}")
    print(f"approvals seen: {counts.get('approvals_seen', 0)} "
          f"({format_euros(counts.get('approved_cents_seen', 0))}); ledger debits: "
          f"{counts.get('ledger_debits', 0)}, of which {counts.get('ledger_debits_reversed_unseen', 0)}"
          f" reversed in full after their answer was lost")
    reversals = ", ".join(f"{rc} × {n}" for rc, n in sorted(tally.reversals.items()))
    print(f"reversals settled: {counts.get('reversals_settled', 0)} ({reversals or 'none'}); "
          f"money still owed: {counts.get('money_owed', 0)}")
    print(f"audited operator actions: {counts.get('audit_acknowledged', 0)} acknowledged, all in "
          f"the trail unless listed below; {counts.get('audit_unknown', 0)} unacknowledged")
    for kind, k in faults["by_kind"].items():
        failed = f" ({k['failed']} FAILED)" if k["failed"] else ""
        print(f"fault {kind} × {k['count']}{failed}: "
              f"no approval p50 {k['no_approval']['p50_s']:.2f} s, max "
              f"{k['no_approval']['max_s']:.2f} s; recovered p50 {k['recovered']['p50_s']:.2f} s, "
              f"max {k['recovered']['max_s']:.2f} s; failovers {k['failovers']}")
    gaps = ", ".join(f"{g:.2f}" for g in faults["without_primary_s"])
    print(f"failovers: {faults['failovers']}; time without a primary: {gaps or '-'} s "
          f"(p50 {faults['without_primary']['p50_s']:.2f} s, max "
          f"{faults['without_primary']['max_s']:.2f} s); Patroni's new leader after p50 "
          f"{faults['new_leader']['p50_s']:.2f} s, max {faults['new_leader']['max_s']:.2f} s")
    print(f"primary: {run.leaders[0]} at the start, {run.leaders[1]} at the end")
    for name, (code, tail) in run.commands.items():
        print(f"hdfpay {name}: exit {code}: {tail}")
    for problem in run.problems:
        print(f"PROBLEM {problem}")
    print(final_line(run, faults))


def final_line(run: ChaosRun, faults: dict) -> str:
    kinds = Counter(f.kind for f in run.faults)
    return (f"chaos seconds={run.options.seconds} terminals={run.options.terminals} "
            f"faults={sum(kinds.values())} failovers={faults['failovers']} "
            f"approvals={run.counts.get('approvals_seen', 0)} "
            f"gap_p50_s={faults['without_primary']['p50_s']:.2f} "
            f"gap_max_s={faults['without_primary']['max_s']:.2f} "
            f"owed={run.counts.get('money_owed', 0)} "
            f"checks={'passed' if not run.problems else 'FAILED'}")


def write_results(run: ChaosRun, path: Path) -> None:
    options = {**asdict(run.options), "faults": list(run.options.faults),
               "business_time": run.bank.business_time.isoformat()}
    document = {
        "machine": {"nproc": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
        "options": options, "selling_s": round(run.selling_s, 3),
        "settle_s": round(run.settle_s, 3),
        "purchase_answers": dict(sorted(run.tally.purchases.items())),
        "reversal_answers": dict(sorted(run.tally.reversals.items())),
        "counts": run.counts, "faults": [f.as_dict() for f in run.faults],
        "fault_summary": fault_summary(run.faults), "leaders": list(run.leaders),
        "commands": {name: {"exit": code, "tail": tail}
                     for name, (code, tail) in run.commands.items()},
        "odd_answers": run.tally.odd, "problems": run.problems,
        "passed": not run.problems}
    path.write_text(json.dumps(document, indent=2) + "\n")
    print(f"results written to {path}")
