"""Throwaway PostgreSQL clusters (demo, bench, load tests) never outlive their command: SIGTERM
stops them, and one left by a killed command is stopped by the next."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ledger.embedded import (THROWAWAY_DATA_DIR, THROWAWAY_PREFIX, stop_orphaned_clusters,
                             throwaway_cluster)

PROCESS_TIMEOUT_S = 120
APPEAR_TIMEOUT_S = 60
POLL_INTERVAL_S = 0.05

ORPHAN_SCRIPT = """
import os, signal, sys
from ledger.embedded import throwaway_cluster, throwaway_workdir
with throwaway_workdir("orphan-test") as workdir:
    throwaway_cluster(workdir).start()
    print(workdir, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)   # no finally block runs
"""


def postmaster_pid(workdir: Path) -> int | None:
    """The server's pid once it accepts connections (the pid file's last line says "ready")."""
    try:
        lines = (workdir / THROWAWAY_DATA_DIR / "postmaster.pid").read_text().split("\n")
    except OSError:
        return None
    ready = len(lines) > 7 and lines[7].strip() == "ready"
    return int(lines[0]) if ready else None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").exists() and \
        Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"


def test_a_cluster_left_by_a_killed_command_is_stopped_by_the_next_one():
    killed = subprocess.run([sys.executable, "-c", ORPHAN_SCRIPT], capture_output=True,
                            text=True, timeout=PROCESS_TIMEOUT_S)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    workdir = Path(killed.stdout.strip())
    pid = postmaster_pid(workdir)
    assert pid is not None and alive(pid) and throwaway_cluster(workdir).is_running()

    assert workdir in stop_orphaned_clusters()
    assert not workdir.exists() and not alive(pid)


def test_sigterm_stops_the_demo_and_its_database():
    before = set(Path(tempfile.gettempdir()).glob(f"{THROWAWAY_PREFIX}demo-*"))
    demo = subprocess.Popen([sys.executable, "-m", "hdfpay.cli", "demo"],
                            env={**os.environ, "DATABASE_URL": ""}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + APPEAR_TIMEOUT_S
        workdir = pid = None
        while pid is None and time.monotonic() < deadline and demo.poll() is None:
            new = set(Path(tempfile.gettempdir()).glob(f"{THROWAWAY_PREFIX}demo-*")) - before
            workdir = next(iter(new), None)
            pid = workdir and postmaster_pid(workdir)
            time.sleep(POLL_INTERVAL_S)   # polling for the server's pid file, bounded above
        assert pid is not None and demo.poll() is None, "the demo's database never started"
        demo.send_signal(signal.SIGTERM)
        demo.wait(timeout=PROCESS_TIMEOUT_S)
    finally:
        demo.kill()
        stderr = demo.stderr.read()
        demo.stderr.close()
    assert demo.returncode == 130, stderr     # interrupted, not finished
    assert not workdir.exists() and not alive(pid)
