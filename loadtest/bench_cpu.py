"""Where the CPU went during a bench run: the tools (reaped children), the server, PostgreSQL (its
postmaster and every process under it), and the rest of the machine (other people's work on a
shared machine shows up there), from /proc.

PostgreSQL's figure is the postmaster's own time, what it reaped from the backends that ended
(pgbench's, at the end of each run: /proc/<pid>/stat cutime, cstime) and what its live children
used (the server's pool, the WAL writer, the checkpointer, autovacuum): everything the database
spent, commits included.
"""

from __future__ import annotations

import os
import resource
import time
from pathlib import Path

POSTGRES_COMMAND = "postgres"
# A tool's backends end just after it does; until the postmaster has reaped them their time is
# in neither figure (a zombie's /proc times read as nothing), so a run's end waits for that.
BACKEND_REAP_TIMEOUT_S = 2.0
BACKEND_REAP_POLL_S = 0.01


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (field 3 first), or None."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def postmaster_of(backend_pid: int) -> int | None:
    """The postmaster of a backend (pg_backend_pid()) when it runs on this machine, else None."""
    fields = _stat_fields(backend_pid)
    if fields is None:
        return None
    parent = int(fields[1])
    try:
        command = Path(f"/proc/{parent}/comm").read_text().strip()
    except OSError:
        return None
    return parent if command == POSTGRES_COMMAND else None


def _children(postmaster: int) -> dict[int, list[str]]:
    """The postmaster's live (and not yet reaped) children: pid → stat fields."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat_fields(int(entry.name))) is not None \
                and int(fields[1]) == postmaster:
            found[int(entry.name)] = fields
    return found


def postgres_cpu_s(postmaster: int | None) -> tuple[float, frozenset[int]]:
    """CPU seconds PostgreSQL used so far (0.0 when not local), and its children's pids."""
    if postmaster is None or (own := _stat_fields(postmaster)) is None:
        return 0.0, frozenset()
    ticks = sum(int(x) for x in own[11:15])       # utime, stime, cutime, cstime
    children = _children(postmaster)
    ticks += sum(int(f[11]) + int(f[12]) for f in children.values())
    return ticks / os.sysconf("SC_CLK_TCK"), frozenset(children)


def await_reaped(postmaster: int | None, before: frozenset[int]) -> None:
    """Wait (bounded) until the backends that started after `before` (a tool's) have ended and
    been reaped: their time is then in the postmaster's cutime, none is left half-gone."""
    deadline = time.monotonic() + BACKEND_REAP_TIMEOUT_S
    while postmaster is not None and time.monotonic() < deadline:
        if not set(_children(postmaster)) - before:
            return
        time.sleep(BACKEND_REAP_POLL_S)


def cpu_snapshot(server_pid: int, postmaster: int | None = None) -> dict:
    """CPU seconds so far of the tools run and reaped, of the server, of PostgreSQL, and of the
    whole machine."""
    tools = resource.getrusage(resource.RUSAGE_CHILDREN)
    server = _stat_fields(server_pid) if server_pid else None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (
        int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9])
    tick_s = 1 / os.sysconf("SC_CLK_TCK")
    postgres, children = postgres_cpu_s(postmaster)
    return {"client": tools.ru_utime + tools.ru_stime,
            "server": (int(server[11]) + int(server[12])) * tick_s if server else 0.0,
            "postgres": postgres, "busy": (user + nice + system + irq + softirq) * tick_s,
            "steal": steal * tick_s, "children": children}


def cpu_used(before: dict, after: dict, wall_s: float) -> dict:
    """Who used the machine during a run: the tool, the server, PostgreSQL, the rest (other
    processes), and what was left idle; and 'steal', the time this virtual machine's CPUs were
    ready to run but the host ran another guest (a shared machine's pauses; not in 'idle')."""
    used = {k: after[k] - before[k] for k in before if k != "children"}
    return {k: round(v, 2) for k, v in {
        "client": used["client"], "server": used["server"], "postgres": used["postgres"],
        "rest": used["busy"] - used["client"] - used["server"] - used["postgres"],
        "idle": wall_s * (os.cpu_count() or 1) - used["busy"] - used["steal"],
        "steal": used["steal"]}.items()}


def cpu_ms_per(result: dict, count_key: str, part: str = "postgres") -> float:
    """CPU milliseconds of one part (PostgreSQL by default; "client", "server") per transaction
    of a run (0.0 without a count)."""
    count = result.get(count_key) or 0
    return round(result["cpu_s"][part] * 1000 / count, 3) if count else 0.0


def cpu_budget(e2e: dict, pgbench: dict, cores: int | None = None) -> dict:
    """Milliseconds of CPU per authorization spent by each part of each path, and the throughput
    the machine's cores allow each path at that cost: where the time goes, and what another
    split of the work would reach. 'without load generator' is the e2e path when the terminals
    are elsewhere (a real shop's terminal signs its own messages): server and PostgreSQL only."""
    cores = cores or os.cpu_count() or 1

    e2e_ms = {part: cpu_ms_per(e2e, "answered", part) for part in ("client", "server", "postgres")}
    pgb_ms = {part: cpu_ms_per(pgbench, "transactions", part) for part in ("client", "postgres")}

    def ceiling(ms: float) -> float:
        return round(cores * 1000 / ms) if ms else 0.0

    return {"e2e_ms": e2e_ms, "pgbench_ms": pgb_ms, "cores": cores,
            "e2e_ceiling_tps": ceiling(sum(e2e_ms.values())),
            "e2e_ceiling_without_load_generator_tps":
                ceiling(e2e_ms["server"] + e2e_ms["postgres"]),
            "pgbench_ceiling_tps": ceiling(sum(pgb_ms.values()))}
