"""The real PC/SC stack for the terminal agent's tests and the tap benchmark.

pcscd serves one fixed socket, /run/pcscd/pcscd.comm, so there is one pcscd per machine and the
session shares it: `pcscd` stops whichever one was running, starts its own with the vpcd driver
(two readers, READER_0 and READER_1), and can restart it mid-test. `virtual_card` gives virtual
cards (testbed/virtual_card.py) that connect to vpcd like a card entering the field.
pcscd 1.9.9 lists readers ~12 ms after start and exits ~1 ms after SIGTERM (up to ~2.5 s seen);
it polls card presence every 400 ms.
"""

from __future__ import annotations

import fcntl
import os
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from smartcard import scard


READER_0 = "Virtual PCD 00 00"
READER_1 = "Virtual PCD 00 01"
READERS = (READER_0, READER_1)
VPCD_DRIVER = Path("/usr/lib/pcsc/drivers/serial/libifdvpcd.so")
# Debian's /etc/reader.conf.d/vpcd: one driver entry, two slots on TCP 35963 and 35964.
VPCD_CONFIG = (f'FRIENDLYNAME "Virtual PCD"\nDEVICENAME /dev/null:0x8C7B\n'
               f"LIBPATH {VPCD_DRIVER}\nCHANNELID 0x8C7B\n")
PCSCD_RUN_DIR = Path("/run/pcscd")
PCSCD_PID_FILE = PCSCD_RUN_DIR / "pcscd.pid"
PCSCD_SOCKET = PCSCD_RUN_DIR / "pcscd.comm"
PCSCD_READY_TIMEOUT_S = 5.0  # readers are listed ~12 ms after start
PCSCD_STOP_TIMEOUT_S = 10.0  # exits in ~1 ms here; up to ~2.5 s seen
PCSCD_POLL_INTERVAL_S = 0.005
SYSTEMCTL_TIMEOUT_S = 30.0
SYSTEMD_UNITS = ("pcscd.socket", "pcscd.service")
READER_STATE_TIMEOUT_S = 2.0  # pcscd polls presence every 400 ms
READER_STATE_SLICE_MS = 100
LOG_TAIL_BYTES = 4000
SESSION_LOCK_FILE = Path(tempfile.gettempdir()) / "hdfpay-pcscd-tests.lock"
VPCD_PORTS = (35963, 35964)        # the driver's, fixed (testbed/virtual_card.py connects there)
RESERVED_PORTS_FILE = Path("/proc/sys/net/ipv4/ip_local_reserved_ports")
VPCD_PORTS_FREE_TIMEOUT_S = 70.0   # a connection's TIME_WAIT lasts 60 s on Linux
VPCD_PORTS_POLL_S = 0.1


class Pcscd:
    """Our pcscd, in the foreground, logging to a file. Start and restart it from the main
    thread: PR_SET_PDEATHSIG fires when the *thread* that forked it ends."""

    def __init__(self, workdir: Path) -> None:
        self.log_path = workdir / "pcscd.log"
        self.vpcd_config_dir = workdir / "reader.conf.d"
        self.vpcd_config_dir.mkdir(exist_ok=True)
        (self.vpcd_config_dir / "vpcd").write_text(VPCD_CONFIG)
        self.empty_config_dir = workdir / "no-readers.conf.d"
        self.empty_config_dir.mkdir(exist_ok=True)
        self.process: subprocess.Popen | None = None

    def start(self, *, with_readers: bool = True) -> None:
        """Start pcscd and return once it lists READERS (or, without readers, answers)."""
        assert threading.current_thread() is threading.main_thread(), "see the class docstring"
        assert self.process is None, "pcscd already started"
        config = self.vpcd_config_dir if with_readers else self.empty_config_dir
        if with_readers:
            keep_vpcd_ports_free()
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                ["setpriv", "--pdeathsig", "TERM", "--",
                 "pcscd", "--foreground", "--info", "--config", str(config)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        self._wait_for_readers(list(READERS) if with_readers else [])

    def stop(self) -> None:
        """SIGTERM, then wait until the process is gone (its socket and pid file with it)."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(PCSCD_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(PCSCD_STOP_TIMEOUT_S)
            _remove_stale_files()
            raise RuntimeError(f"pcscd ignored SIGTERM for {PCSCD_STOP_TIMEOUT_S} s; killed")

    def restart(self, *, with_readers: bool = True) -> None:
        self.stop()
        self.start(with_readers=with_readers)

    def log_tail(self) -> str:
        with self.log_path.open("rb") as log:
            log.seek(max(0, self.log_path.stat().st_size - LOG_TAIL_BYTES))
            return log.read().decode(errors="replace")

    def _wait_for_readers(self, expected: list[str]) -> None:
        deadline = time.monotonic() + PCSCD_READY_TIMEOUT_S
        seen: list[str] | str = "no answer"
        while time.monotonic() < deadline:
            seen = list_readers()
            if seen == expected:
                return
            try:  # the poll interval doubles as a check that pcscd did not die
                self.process.wait(PCSCD_POLL_INTERVAL_S)
            except subprocess.TimeoutExpired:
                continue
            raise RuntimeError(f"pcscd exited with {self.process.returncode}:\n{self.log_tail()}")
        raise RuntimeError(f"pcscd did not list {expected} within {PCSCD_READY_TIMEOUT_S} s "
                           f"(last seen: {seen}):\n{self.log_tail()}")


def keep_vpcd_ports_free() -> None:
    """vpcd's two ports lie in Linux's ephemeral range (32768-60999): any outgoing connection on
    the machine may get one as its local port, and vpcd, which listens without SO_REUSEADDR, then
    fails with "Address already in use" (seen once in CI: every PC/SC test errored). Reserve them
    from the ephemeral range when allowed (root), then wait until both can be bound."""
    try:
        current = [p for p in RESERVED_PORTS_FILE.read_text().strip().split(",") if p]
        missing = [str(port) for port in VPCD_PORTS if str(port) not in current]
        if missing:
            RESERVED_PORTS_FILE.write_text(",".join(current + missing))
    except OSError:
        pass                        # not root: only the wait below
    deadline = time.monotonic() + VPCD_PORTS_FREE_TIMEOUT_S
    for port in VPCD_PORTS:
        while not _bindable(port):
            if time.monotonic() > deadline:
                raise RuntimeError(f"port {port} (vpcd's) still in use after "
                                   f"{VPCD_PORTS_FREE_TIMEOUT_S} s")
            time.sleep(VPCD_PORTS_POLL_S)


def _bindable(port: int) -> bool:
    """Free to listen on, as vpcd does (any address; a TIME_WAIT left by the previous pcscd of
    the session does not count: SO_REUSEADDR)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("", port))
            return True
        except OSError:
            return False


def list_readers() -> list[str] | str:
    """The reader names pcscd lists, or the PC/SC error text when it does not answer."""
    hresult, context = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
    if hresult != scard.SCARD_S_SUCCESS:
        return scard.SCardGetErrorMessage(hresult)
    try:
        hresult, names = scard.SCardListReaders(context, [])
    finally:
        scard.SCardReleaseContext(context)
    if hresult == scard.SCARD_E_NO_READERS_AVAILABLE:
        return []
    return list(names) if hresult == scard.SCARD_S_SUCCESS else scard.SCardGetErrorMessage(hresult)


def wait_reader_state(reader: str, *, present: bool,
                      timeout_s: float = READER_STATE_TIMEOUT_S) -> None:
    """Block on SCardGetStatusChange until pcscd reports a card on `reader` (or none)."""
    wanted = scard.SCARD_STATE_PRESENT if present else scard.SCARD_STATE_EMPTY
    hresult, context = scard.SCardEstablishContext(scard.SCARD_SCOPE_USER)
    assert hresult == scard.SCARD_S_SUCCESS, scard.SCardGetErrorMessage(hresult)
    try:
        deadline = time.monotonic() + timeout_s
        state = scard.SCARD_STATE_UNAWARE
        while (remaining_s := deadline - time.monotonic()) > 0:
            hresult, states = scard.SCardGetStatusChange(
                context, min(READER_STATE_SLICE_MS, int(remaining_s * 1000)), [(reader, state)])
            if hresult == scard.SCARD_S_SUCCESS:
                state = states[0][1] & ~scard.SCARD_STATE_CHANGED
                if state & wanted:
                    return
            elif hresult != scard.SCARD_E_TIMEOUT:
                raise AssertionError(f"{reader}: {scard.SCardGetErrorMessage(hresult)}")
        raise AssertionError(f"{reader} still {'empty' if present else 'holds a card'} "
                             f"after {timeout_s} s (state 0x{state:X})")
    finally:
        scard.SCardReleaseContext(context)


class PcscdBusy(RuntimeError):
    """Another session on this machine holds pcscd (one per machine)."""


def lock_pcscd_for_this_session():
    """Two test sessions on one machine would stop each other's pcscd mid-test: the second one
    fails at once instead. The lock goes with the process, even killed."""
    lock = SESSION_LOCK_FILE.open("a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        holder = lock.read().strip()
        lock.close()
        raise PcscdBusy(f"another test session ({holder}) is using pcscd, which is one per machine: "
                    "run the PC/SC tests one session at a time")
    lock.seek(0)
    lock.truncate()
    lock.write(f"pid {os.getpid()} in {os.getcwd()}")
    lock.flush()
    return lock


def stop_systemd_pcscd() -> list[str]:
    """Stop pcscd's systemd units, if any is active (its socket would start it again on our
    first connection); returns them so that teardown can start them again."""
    if not (Path("/run/systemd/system").is_dir() and shutil.which("systemctl")):
        return []
    active = [unit for unit in SYSTEMD_UNITS if subprocess.run(
        ["systemctl", "is-active", "--quiet", unit], timeout=SYSTEMCTL_TIMEOUT_S).returncode == 0]
    if active:
        subprocess.run(["systemctl", "stop", *active], check=True, timeout=SYSTEMCTL_TIMEOUT_S)
    return active


def stop_foreign_pcscd() -> None:
    """Stop a pcscd we did not start (found through its pid file) and wait until it is gone."""
    try:
        pid = int(PCSCD_PID_FILE.read_text().strip("\0\n "))  # pcscd writes "PID\n\0"
    except (FileNotFoundError, ValueError):
        return
    if not _is_running_pcscd(pid):
        _remove_stale_files()  # a zombie's pid would make the new pcscd refuse to start
        return
    pidfd = os.pidfd_open(pid)
    try:
        os.kill(pid, signal.SIGTERM)
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)  # readable once the process has exited
        if not poller.poll(PCSCD_STOP_TIMEOUT_S * 1000):
            raise RuntimeError(f"the running pcscd (pid {pid}) ignored SIGTERM")
    finally:
        os.close(pidfd)
    if PCSCD_PID_FILE.exists():
        _remove_stale_files()


def _is_running_pcscd(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    name, state = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2]
    return name == "pcscd" and state != "Z"


def _remove_stale_files() -> None:
    for path in (PCSCD_PID_FILE, PCSCD_SOCKET):
        path.unlink(missing_ok=True)
