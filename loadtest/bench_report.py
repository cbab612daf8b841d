"""What `hdfpay bench` prints and writes: the table, the cost of MACs and of the server's metrics,
the checks afterwards (ledger balanced, every purchase the tools made in the database and no other,
no message refused with 63) and the JSON results."""

from __future__ import annotations

import dataclasses
import os
import platform
import subprocess
from collections import Counter, defaultdict
from typing import TYPE_CHECKING

from loadtest.bench_cpu import cpu_budget, cpu_ms_per
from loadtest.bench_keys import counter_start
from loadtest.bench_load import APPROVED_CODES, PGBENCH_QUERY_MODE
from loadtest.bench_plan import HALF_LOAD_FRACTION
from loadtest.reversal_duty import REVERSAL_ID_SUFFIX
from ledger.database import connection
from ledger.invariants import ledger_violations
from ledger.journal_footprint import journal_footprint

if TYPE_CHECKING:
    from loadtest.bench_plan import Bench, Run

LABEL_WIDTH = 15                      # "1000 no metrics", the widest label
TABLE_ROW = "{:>%d} | {:>9} {:>8} {:>8} | {:>12} {:>8} {:>8} | {:>12}" % LABEL_WIDTH
KSN_REFUSED = "63"                    # replay protection refused the message: a bench bug
FORGED = "error:ForgedResponse"       # the server's answer did not carry a valid MAC
# Answered without a row of their own: a refusal of the KSN; the card gate's "card busy",
# transient errors and malfunctions, which the load generator reverses (their purchase rows, if
# any, and the reversals' tombstones are counted apart, as reversed).
UNSTORED_CODES = (KSN_REFUSED, "91", "96")


def _reversals_problems(run: dict, reversed_in_ledger: int) -> list[str]:
    """Every purchase the load generator had to reverse was reversed (each reversal answered,
    none owed at the end), and the ledger holds as many reversed purchases."""
    problems = []
    if run["owed"]:
        problems.append(f"{run['tag']}: money still owed: {run['owed']} reversal(s) unanswered "
                        f"at the end of the run")
    settled = sum(run["reversals"].values())
    if settled != reversed_in_ledger:
        problems.append(f"{run['tag']}: {settled} reversals answered ({run['reversals']}), the "
                        f"database holds {reversed_in_ledger} reversed purchases")
    return problems


def _stored(codes: dict) -> dict:
    """The response codes a tool saw that the database must hold as many rows of."""
    return {k: v for k, v in codes.items() if k[:1].isdigit() and k not in UNSTORED_CODES}


def report_run(bench: Bench, index: int, run: Run, e2e: dict, pgb: dict) -> None:
    """A table row, then where the CPU went (what limits a 2-core machine) and odd answers."""
    ratio = e2e["tps"] / pgb["tps"] if pgb["tps"] else 0.0
    bench.runs.append({"index": index, "concurrency": run.concurrency, "hot": run.hot,
                       "mac": run.mac, "metrics": run.metrics, "group_commit": run.group_commit,
                       "e2e": e2e, "pgbench": pgb, "ratio": round(ratio, 3)})
    label = (f"{run.concurrency}{' hot' if run.hot else ''}{'' if run.mac else ' no MAC'}"
             f"{'' if run.metrics else ' no metrics'}{'' if run.group_commit else ' single'}")
    print(TABLE_ROW.format(
        label, f"{e2e['tps']:.0f}", f"{e2e['p50_ms']:.2f}", f"{e2e['p99_ms']:.2f}",
        f"{pgb['tps']:.0f}", f"{pgb['p50_ms']:.2f}", f"{pgb['p99_ms']:.2f}", f"{ratio:.2f}"))
    cpu = [", ".join(f"{k} {v:.1f}" for k, v in result["cpu_s"].items()) for result in (e2e, pgb)]
    others = {k: v for k, v in e2e["rc"].items() if k != "00"}
    reversed_line = (f"; reversed until answered: {e2e['reversals']}, owed {e2e['owed']}"
                     if e2e.get("reversals") or e2e.get("owed") else "")
    print(f"{'':>{LABEL_WIDTH}}   CPU s: e2e {cpu[0]} | pgbench {cpu[1]}"
          + (f" | e2e answers other than 00: {others}{reversed_line}" if others else ""),
          flush=True)
    if run.hot:
        # The card gate answers 91 at once beyond MAX_IN_FLIGHT_PER_CARD purchases of a card:
        # the hot figure is the approvals' (what a cashier waits for), the 91s counted apart.
        print(f"{'':>{LABEL_WIDTH}}   hot cards, approvals only: {e2e['approved_tps']:.0f} tps, "
              f"p50 {e2e['approved_p50_ms']:.2f} ms, p99 {e2e['approved_p99_ms']:.2f} ms; "
              f"91 card busy: {e2e['card_busy']} "
              f"({e2e['card_busy'] / max(e2e['answered'], 1):.1%} of answers)", flush=True)


def report_limit(bench: Bench, limit: dict) -> None:
    """The minimal debit beside the run just reported, and PostgreSQL's CPU per transaction of
    the three: how far the real function and the whole path are from what the machine can do."""
    run = bench.runs[-1]
    run["limit"] = limit
    e2e, pgb = run["e2e"], run["pgbench"]
    run["fn_limit_ratio"] = round(pgb["tps"] / limit["tps"], 3) if limit["tps"] else 0.0
    run["pg_cpu_ms"] = {"e2e": cpu_ms_per(e2e, "answered"),
                        "pgbench": cpu_ms_per(pgb, "transactions"),
                        "limit": cpu_ms_per(limit, "transactions")}
    cpu = run["pg_cpu_ms"]
    print(TABLE_ROW.format(f"{run['concurrency']} limit", "", "", "", f"{limit['tps']:.0f}",
                           f"{limit['p50_ms']:.2f}", f"{limit['p99_ms']:.2f}",
                           f"fn/lim {run['fn_limit_ratio']:.2f}"))
    print(f"{'':>{LABEL_WIDTH}}   PostgreSQL CPU ms per transaction: e2e {cpu['e2e']:.3f} | "
          f"authorize_purchase() {cpu['pgbench']:.3f} | minimal debit {cpu['limit']:.3f}"
          + (" (PostgreSQL is not local: not measured)" if bench.postmaster is None else ""),
          flush=True)
    budget = run["cpu_budget"] = cpu_budget(e2e, pgb)
    e_ms, p_ms = budget["e2e_ms"], budget["pgbench_ms"]
    print(f"{'':>{LABEL_WIDTH}}   CPU ms per authorization: e2e load generator "
          f"{e_ms['client']:.3f} + server {e_ms['server']:.3f} + PostgreSQL {e_ms['postgres']:.3f}"
          f" | pgbench {p_ms['client']:.3f} + PostgreSQL {p_ms['postgres']:.3f}; "
          f"{budget['cores']} cores allow e2e {budget['e2e_ceiling_tps']:.0f} tps "
          f"({budget['e2e_ceiling_without_load_generator_tps']:.0f} with the terminals elsewhere)"
          f", pgbench {budget['pgbench_ceiling_tps']:.0f}", flush=True)


def top_run(bench: Bench) -> dict:
    """The reference: the uniform run at the highest concurrency, MACs and metrics on."""
    return next(r for r in bench.runs if r["mac"] and r["metrics"] and r["group_commit"]
                and not r["hot"] and r["concurrency"] == max(bench.options.concurrency))


def _per_request_ms(result: dict, cpu: float) -> float:
    return round(cpu * 1000 / result["answered"], 3) if result.get("answered") else 0.0


def _cost_pct(on: dict, off: dict) -> float:
    """How much slower `on` ran than `off`, in percent of `off`'s tps."""
    return round((1 - on["tps"] / off["tps"]) * 100, 1) if off["tps"] else 0.0


def _cost_row(label: str, on: dict, off: dict) -> None:
    """A table row: on minus off, tps in percent, latencies in milliseconds."""
    (e_on, p_on), (e_off, p_off) = (on["e2e"], on["pgbench"]), (off["e2e"], off["pgbench"])
    print(TABLE_ROW.format(
        label, f"{-_cost_pct(e_on, e_off):+.1f}%", f"{e_on['p50_ms'] - e_off['p50_ms']:+.2f}",
        f"{e_on['p99_ms'] - e_off['p99_ms']:+.2f}", f"{-_cost_pct(p_on, p_off):+.1f}%",
        f"{p_on['p50_ms'] - p_off['p50_ms']:+.2f}", f"{p_on['p99_ms'] - p_off['p99_ms']:+.2f}", ""))


def report_mac_cost(bench: Bench) -> None:
    """MACs on against MACs off at the highest concurrency: a table row (on minus off), where
    the CPU went per request, and bench.mac_cost for the JSON and the last lines."""
    on, off = top_run(bench), next(r for r in bench.runs if not r["mac"])
    e_on, e_off, p_on, p_off = on["e2e"], off["e2e"], on["pgbench"], off["pgbench"]
    cost = bench.mac_cost = {
        "concurrency": on["concurrency"], "mac_on_tps": e_on["tps"], "mac_off_tps": e_off["tps"],
        "mac_cost_pct": _cost_pct(e_on, e_off),
        "mac_on_p50_ms": e_on["p50_ms"], "mac_off_p50_ms": e_off["p50_ms"],
        "mac_on_p99_ms": e_on["p99_ms"], "mac_off_p99_ms": e_off["p99_ms"],
        "server_cpu_ms_per_request_on": _per_request_ms(e_on, e_on["cpu_s"]["server"]),
        "server_cpu_ms_per_request_off": _per_request_ms(e_off, e_off["cpu_s"]["server"]),
        "client_cpu_ms_per_request_on": _per_request_ms(e_on, e_on["client_cpu_s"]),
        "client_cpu_ms_per_request_off": _per_request_ms(e_off, e_off["client_cpu_s"]),
        "pgbench_ksn_on_tps": p_on["tps"], "pgbench_ksn_off_tps": p_off["tps"],
        "pgbench_ksn_cost_pct": _cost_pct(p_on, p_off)}
    _cost_row("MAC cost", on, off)
    print(f"{'':>{LABEL_WIDTH}}   MACs on minus off at {on['concurrency']} clients (pgbench: "
          f"the KSN check alone); CPU ms per request: server "
          f"{cost['server_cpu_ms_per_request_on']:.3f} on, "
          f"{cost['server_cpu_ms_per_request_off']:.3f} off | load generator "
          f"{cost['client_cpu_ms_per_request_on']:.3f} on, "
          f"{cost['client_cpu_ms_per_request_off']:.3f} off", flush=True)


def report_metrics_cost(bench: Bench) -> None:
    """Metrics on against off (MACs on both) at the highest concurrency: a table row (on minus
    off), the server's CPU per request, and bench.metrics_cost for the JSON and the last lines.
    pgbench does the same work in both runs: its difference is the drift between two runs."""
    on, off = top_run(bench), next(r for r in bench.runs if not r["metrics"])
    e_on, e_off, p_on, p_off = on["e2e"], off["e2e"], on["pgbench"], off["pgbench"]
    cost = bench.metrics_cost = {
        "concurrency": on["concurrency"], "metrics_on_tps": e_on["tps"],
        "metrics_off_tps": e_off["tps"], "metrics_cost_pct": _cost_pct(e_on, e_off),
        "metrics_on_p50_ms": e_on["p50_ms"], "metrics_off_p50_ms": e_off["p50_ms"],
        "metrics_on_p99_ms": e_on["p99_ms"], "metrics_off_p99_ms": e_off["p99_ms"],
        "server_cpu_ms_per_request_on": _per_request_ms(e_on, e_on["cpu_s"]["server"]),
        "server_cpu_ms_per_request_off": _per_request_ms(e_off, e_off["cpu_s"]["server"]),
        "pgbench_beside_on_tps": p_on["tps"], "pgbench_beside_off_tps": p_off["tps"],
        "pgbench_drift_pct": _cost_pct(p_on, p_off)}
    _cost_row("metrics cost", on, off)
    print(f"{'':>{LABEL_WIDTH}}   metrics on minus off at {on['concurrency']} clients (pgbench: "
          f"same work, i.e. run-to-run drift); server CPU ms per request "
          f"{cost['server_cpu_ms_per_request_on']:.3f} on, "
          f"{cost['server_cpu_ms_per_request_off']:.3f} off", flush=True)


def report_group_commit_gain(bench: Bench, run: Run) -> None:
    """Group commit on against one commit per message (MACs and metrics on), same clients and
    cards, same run: a table row (on minus off) and bench.group_commit_gain."""
    hot = run.hot

    def pick(grouped: bool) -> dict:
        return next(r for r in bench.runs if r["group_commit"] == grouped and r["hot"] == hot
                    and r["mac"] and r["metrics"] and r["concurrency"] == run.concurrency)
    on, off = pick(True), pick(False)
    key = "approved_" if hot else ""
    e_on, e_off = on["e2e"], off["e2e"]
    bench.group_commit_gain["hot" if hot else "uniform"] = {
        "concurrency": on["concurrency"], "on_tps": e_on[f"{key}tps"],
        "off_tps": e_off[f"{key}tps"], "on_p99_ms": e_on[f"{key}p99_ms"],
        "off_p99_ms": e_off[f"{key}p99_ms"],
        "pg_cpu_s_on": e_on["cpu_s"].get("postgres", 0.0),
        "pg_cpu_s_off": e_off["cpu_s"].get("postgres", 0.0),
        "pg_cpu_ms_per_request_on": _per_request_ms(e_on, e_on["cpu_s"].get("postgres", 0.0)),
        "pg_cpu_ms_per_request_off": _per_request_ms(e_off, e_off["cpu_s"].get("postgres", 0.0))}
    _cost_row("group commit" + (" hot" if hot else ""), on, off)
    gain = bench.group_commit_gain["hot" if hot else "uniform"]
    print(f"{'':>{LABEL_WIDTH}}   group commit on minus one commit per message at "
          f"{on['concurrency']} clients{' (hot cards, approvals)' if hot else ''}: "
          f"{gain['on_tps']:.0f} vs {gain['off_tps']:.0f} tps, p99 {gain['on_p99_ms']:.2f} vs "
          f"{gain['off_p99_ms']:.2f} ms; PostgreSQL CPU ms per request "
          f"{gain['pg_cpu_ms_per_request_on']:.3f} vs {gain['pg_cpu_ms_per_request_off']:.3f}",
          flush=True)


def final_lines(bench: Bench) -> None:
    """The MAC, metrics and group-commit figures, then last the uniform run at the highest concurrency with MACs
    and metrics on."""
    cost = bench.mac_cost
    print(f"mac_on_tps={cost['mac_on_tps']:.0f} mac_off_tps={cost['mac_off_tps']:.0f} "
          f"mac_cost_pct={cost['mac_cost_pct']:.1f}")
    cost = bench.metrics_cost
    print(f"metrics_on_tps={cost['metrics_on_tps']:.0f} "
          f"metrics_off_tps={cost['metrics_off_tps']:.0f} "
          f"metrics_cost_pct={cost['metrics_cost_pct']:.1f}")
    uniform, hot_gain = (bench.group_commit_gain.get(k, {}) for k in ("uniform", "hot"))
    print(f"group_commit_on_tps={uniform.get('on_tps', 0):.0f} "
          f"group_commit_off_tps={uniform.get('off_tps', 0):.0f} "
          f"group_commit_on_p99_ms={uniform.get('on_p99_ms', 0):.2f} "
          f"group_commit_off_p99_ms={uniform.get('off_p99_ms', 0):.2f} "
          f"hot_on_p99_ms={hot_gain.get('on_p99_ms', 0):.2f} "
          f"hot_off_p99_ms={hot_gain.get('off_p99_ms', 0):.2f} "
          f"pg_cpu_ms_on={uniform.get('pg_cpu_ms_per_request_on', 0):.3f} "
          f"pg_cpu_ms_off={uniform.get('pg_cpu_ms_per_request_off', 0):.3f}")
    final = top_run(bench)
    e2e, pgb = final["e2e"], final["pgbench"]
    half = next((r for r in bench.open_loop if r["fraction"] == HALF_LOAD_FRACTION), None)
    hot = next((r["e2e"] for r in bench.runs if r["hot"]), None)
    print(f"e2e_tps={e2e['tps']:.0f} pgbench_tps={pgb['tps']:.0f} "
          f"ratio={final['ratio']:.2f} limit_tps={final['limit']['tps']:.0f} "
          f"p99_half_load_ms={half['p99_ms'] if half else 0.0:.2f} "
          f"hot_p99_ms={hot['approved_p99_ms'] if hot else 0.0:.2f} "
          f"p50_ms={e2e['p50_ms']:.2f} p99_ms={e2e['p99_ms']:.2f} "
          f"fn_limit_ratio={final['fn_limit_ratio']:.2f} "
          f"pg_cpu_ms_fn={final['pg_cpu_ms']['pgbench']:.3f} "
          f"pg_cpu_ms_limit={final['pg_cpu_ms']['limit']:.3f} "
          f"p999_half_load_ms={half['p999_ms'] if half else 0.0:.2f} "
          f"busy_half_load_pct={half['busy_pct'] if half else 0.0:.0f} "
          f"hot_card_busy={hot['card_busy'] if hot else 0} "
          f"seed_s={bench.seed_s:.2f} seed_linearity={bench.seed_small['ratio']:.2f} "
          f"e2e_ceiling_tps={final['cpu_budget']['e2e_ceiling_tps']:.0f} "
          f"e2e_ceiling_without_load_generator_tps="
          f"{final['cpu_budget']['e2e_ceiling_without_load_generator_tps']:.0f} "
          f"pgbench_ceiling_tps={final['cpu_budget']['pgbench_ceiling_tps']:.0f}")


async def verify(bench: Bench) -> list[str]:
    """The ledger balances; the database holds exactly the purchases the tools made (per run, the
    codes the load generator saw and as many rows as pgbench logged transactions); nothing was
    refused with 63 (a refused message stores nothing: a pgbench run missing rows had some); and
    every bench key's counter was checked at the highest concurrency."""
    keys = bench.keys
    top_index = top_run(bench)["index"]
    async with connection(bench.dsn) as conn:
        violations = [f"VIOLATION {rule}: {detail}"
                      for rule, detail in await ledger_violations(conn)]
        # The purchases, and whether the load generator reversed each (its reversal's request
        # id is the purchase's with REVERSAL_ID_SUFFIX) and the wallet got it all back.
        rows = await conn.fetch(
            "SELECT split_part(p.request_id, '-', 1) AS tag, p.response_code AS rc,"
            " r.id IS NOT NULL AS reversed,"
            " p.amount_reversed_cents = p.amount_approved_cents AS restored, count(*) AS n"
            " FROM authorizations p LEFT JOIN authorizations r ON r.terminal_id = p.terminal_id"
            "  AND r.request_id = p.request_id || $2 AND r.message_type = 'REVERSAL'"
            " WHERE p.terminal_id = ANY($1::text[]) AND p.message_type = 'PURCHASE'"
            " GROUP BY 1, 2, 3, 4", keys.terminals, REVERSAL_ID_SUFFIX)
        limit_rows = dict(await conn.fetch(
            "SELECT split_part(reference, '-', 1), count(*) FROM transfers"
            " WHERE code = 'PURCHASE' AND authorization_id IS NULL AND reference LIKE 'lim%'"
            " GROUP BY 1"))
        checked = await conn.fetchval(
            "SELECT count(*) FROM terminal_keys WHERE terminal_id = ANY($1::text[])"
            " AND last_counter > $2", keys.terminals, counter_start(top_index))
        bench.journal_footprint = await journal_footprint(conn)
    print("\n".join(violations) if violations else "ledger balanced")
    stored: dict[str, Counter] = defaultdict(Counter)     # purchases not reversed, by code
    reversed_rows: Counter = Counter()                       # purchases reversed, by tag
    mismatches, refused, counted = [], [], 0
    for row in rows:
        if row["reversed"]:
            reversed_rows[row["tag"]] += row["n"]
            if not row["restored"]:
                mismatches.append(f"{row['tag']}: {row['n']} reversed purchase(s) answered "
                                  f"{row['rc']} still debiting the wallet")
        else:
            stored[row["tag"]][row["rc"]] += row["n"]
    for run in bench.open_loop:
        counted += run["approved"]
        mismatches += _reversals_problems(run, reversed_rows[run["tag"]])
        answered = _stored(run["rc"])
        if answered != dict(sorted(stored[run["tag"]].items())):
            mismatches.append(f"{run['tag']}: the load generator saw {answered}, "
                              f"the database holds {dict(stored[run['tag']])}")
    for run in bench.runs:
        if "limit" in run and limit_rows.get(run["limit"]["tag"], 0) != \
                run["limit"]["transactions"]:
            mismatches.append(f"{run['limit']['tag']}: pgbench logged "
                              f"{run['limit']['transactions']} minimal debits, the database "
                              f"holds {limit_rows.get(run['limit']['tag'], 0)}")
        pgb, e2e = run["pgbench"], run["e2e"]
        pgb["rc"] = dict(sorted(stored[pgb["tag"]].items()))
        pgb["approved"] = sum(stored[pgb["tag"]][code] for code in APPROVED_CODES)
        counted += pgb["approved"] + e2e["approved"]
        held = sum(pgb["rc"].values())
        if held < pgb["transactions"] and run["mac"]:
            refused.append(f"{pgb['tag']}: {pgb['transactions'] - held} pgbench transactions "
                           f"refused with {KSN_REFUSED} (logged {pgb['transactions']}, "
                           f"the database holds {held})")
        elif held != pgb["transactions"]:
            mismatches.append(f"{pgb['tag']}: pgbench logged {pgb['transactions']} transactions, "
                              f"the database holds {held}")
        for code, what in ((KSN_REFUSED, f"answers {KSN_REFUSED}"), (FORGED, "forged answers")):
            if e2e["rc"].get(code):
                refused.append(f"{e2e['tag']}: {e2e['rc'][code]} {what}")
        mismatches += _reversals_problems(e2e, reversed_rows[e2e["tag"]])
        answered = _stored(e2e["rc"])
        if answered != dict(sorted(stored[e2e["tag"]].items())):
            mismatches.append(f"{e2e['tag']}: the load generator saw {answered}, "
                              f"the database holds {dict(stored[e2e['tag']])}")
    approved = sum(codes[code] for codes in stored.values() for code in APPROVED_CODES)
    if approved != counted:
        mismatches.append(f"{approved} approvals in the database, the tools counted {counted}")
    print("\n".join(mismatches) if mismatches else
          f"approvals reconciled: {approved} in the database = {counted} counted by the tools; "
          f"{sum(reversed_rows.values())} purchases without a trustworthy answer reversed, "
          f"money still owed: 0")
    if checked != len(keys.terminals):
        refused.append(f"only {checked} of {len(keys.terminals)} bench keys had their KSN counter "
                       f"checked from run {top_index} on")
    footprint = bench.journal_footprint
    print(f"journal on disk: {footprint['tables']['authorizations']['n']} terminal messages, "
          f"{footprint['tables']['transfers']['n']} transfers, "
          f"{footprint['bytes'] / 2**20:.0f} MiB with indexes: "
          f"{footprint['bytes_per_message']} bytes per message")
    print("\n".join(refused) if refused else
          f"no message refused with {KSN_REFUSED}; KSN counters checked on all "
          f"{len(keys.terminals)} bench keys")
    return violations + mismatches + refused


def results(bench: Bench, problems: list[str]) -> dict:
    pgbench_version = subprocess.run([str(bench.pgbench), "--version"], capture_output=True,
                                     text=True).stdout.strip()
    keys = bench.keys
    return {"machine": {"nproc": os.cpu_count(), "platform": platform.platform(),
                        "python": platform.python_version(), "postgres": bench.postgres_version,
                        "pgbench": pgbench_version, "wal_ready_bytes": bench.wal_ready_bytes},
            "options": {**dataclasses.asdict(bench.options), "seconds_run": bench.seconds,
                        "embedded_cluster": bench.own_cluster,
                        "server_pool_size": bench.settings.db_pool_size,
                        "pgbench_query_mode": PGBENCH_QUERY_MODE,
                        "terminal_authentication": "dukpt (runs with mac false: none)",
                        "server_metrics": "on (runs with metrics false: HDFPAY_METRICS=off)"},
            "seed_seconds": bench.seed_s, "seed_linearity": bench.seed_small,
            "provision_seconds": keys.provision_s, "bdk": keys.bdk,
            "terminals": {"e2e": keys.e2e_terminals, "pgbench": keys.pgbench_terminals},
            "hot_cards": bench.hot_cards, "mac_cost": bench.mac_cost,
            "metrics_cost": bench.metrics_cost, "group_commit_gain": bench.group_commit_gain,
            "runs": bench.runs, "open_loop": bench.open_loop,
            "journal_footprint": bench.journal_footprint,
            "problems": problems}
