"""The open-loop rows of `hdfpay bench` (loadtest/open_loop.py's runs): latency from each
purchase's due time, how busy the machine was and what a purchase cost at that rate, and
PostgreSQL's housekeeping or the host's steal that fell into the run."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from loadtest.bench_plan import Bench

STEAL_NOTED_S = 0.05        # CPU seconds taken by the host during a run, beyond which it is named
OPEN_LOOP_ROW = "{:>8} {:>6} | {:>9} {:>8} {:>8} {:>9} {:>9} | {:>10} | {:>5} {:>7} | {}"


def report_open_loop(bench: Bench) -> None:
    """The open-loop run just made, under a header before the first."""
    run = bench.open_loop[-1]
    if len(bench.open_loop) == 1:
        print(f"\nopen loop over {run['terminals']} terminals, MAC'd, metrics on: purchases due "
              f"at a fixed rate, latency from each one's due time (max e2e {run['max_tps']:.0f} "
              f"tps)")
        print("(busy: the machine's CPU in use, all cores; CPU ms: load generator + server + "
              "PostgreSQL per purchase)")
        print(OPEN_LOOP_ROW.format("rate/s", "load", "tps", "p50 ms", "p99 ms", "p99.9 ms",
                                   "max ms", "queued p99", "busy", "CPU ms",
                                   "answers other than 00; PostgreSQL's housekeeping"))
    others = {k: v for k, v in run["rc"].items() if k != "00"}
    steal = run["cpu_s"].get("steal", 0.0)
    notes = ([f"{others}"] if others else []) + run.get("housekeeping", []) + \
        ([f"host took {steal:.2f} CPU s (steal)"] if steal >= STEAL_NOTED_S else []) + \
        (["OVERLOADED: stopped scheduling"] if run["overloaded"] else [])
    print(OPEN_LOOP_ROW.format(
        f"{run['rate']:.0f}", f"{run['fraction']:.0%}", f"{run['tps']:.0f}",
        f"{run['p50_ms']:.2f}", f"{run['p99_ms']:.2f}", f"{run['p999_ms']:.2f}",
        f"{run['max_ms']:.2f}", f"{run['queued_p99_ms']:.2f}", f"{run['busy_pct']:.0f}%",
        f"{run['cpu_ms_per_purchase']:.2f}", "; ".join(notes)), flush=True)


def open_loop_cpu(run: dict) -> dict:
    """How busy the machine was during an open-loop run (percent of all its cores' time, time
    stolen by the host counted busy) and the CPU milliseconds each purchase cost the three
    parties at that rate. Below the maximum a purchase costs each of them more than at it (the
    load generator too, whose work per purchase is the same): wake-ups, system calls and
    commits are shared among fewer purchases, and group commit's batches are smaller. So the
    machine is more than half as busy at half the maximum rate."""
    cpu = run["cpu_s"]
    used = cpu["client"] + cpu["server"] + cpu["postgres"]
    available = used + cpu["rest"] + cpu["idle"] + cpu.get("steal", 0.0)
    return {"busy_pct": round(100 * (1 - cpu["idle"] / available), 1) if available > 0 else 0.0,
            "cpu_ms_per_purchase": round(used * 1000 / run["answered"], 3)
            if run["answered"] else 0.0}
