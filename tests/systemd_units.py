"""What the tests of the timers in deploy/systemd/ check alike: a one-shot service running one
hdfpay command, its timer (persistent: a missed tick runs at boot), and when the timer fires
(systemd-analyze calendar, where the machine has it)."""

from __future__ import annotations

import configparser
import datetime as dt
import re
import shutil
import subprocess
from pathlib import Path

SYSTEMD_UNITS = Path(__file__).resolve().parent.parent / "deploy" / "systemd"
CALENDAR_TIMEOUT_S = 30
ELAPSE = re.compile(r"(?:Iter\. #\d+|Next elapse): \w+ (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)")


def _unit(name: str) -> configparser.ConfigParser:
    unit = configparser.ConfigParser(interpolation=None, strict=False)
    unit.read(SYSTEMD_UNITS / name)
    return unit


def oneshot_timer_calendar(name: str, command: list[str]) -> str:
    """Checks `name`.service runs `hdfpay COMMAND` once and `name`.timer starts it, persistent;
    returns the timer's OnCalendar."""
    service, timer = _unit(f"{name}.service"), _unit(f"{name}.timer")
    argv = service["Service"]["ExecStart"].split()
    assert Path(argv[0]).name == "hdfpay" and argv[1:] == command
    assert service["Service"]["Type"] == "oneshot"
    assert timer["Timer"]["Unit"] == f"{name}.service" and timer["Timer"]["Persistent"] == "true"
    return timer["Timer"]["OnCalendar"]


def calendar_elapses(calendar: str, iterations: int = 3) -> list[dt.datetime]:
    """The next elapses of an OnCalendar expression as systemd computes them (naive, in the
    zone systemd-analyze prints; Debian's systemd, which ./run installs for the tests)."""
    assert shutil.which("systemd-analyze"), "systemd-analyze missing: ./run test installs systemd"
    checked = subprocess.run(["systemd-analyze", "calendar", f"--iterations={iterations}",
                              calendar], capture_output=True, text=True,
                             timeout=CALENDAR_TIMEOUT_S)
    assert checked.returncode == 0, checked.stderr
    elapses = [dt.datetime.strptime(found, "%Y-%m-%d %H:%M:%S")
               for found in ELAPSE.findall(checked.stdout)]
    assert len(elapses) == iterations, checked.stdout
    return elapses
