"""A private PostgreSQL cluster for the zero-configuration default.

With no DATABASE_URL, hdfpay runs its own cluster from Debian's PostgreSQL server binaries in a
data directory it owns: initdb once, a unix socket inside the data directory and no TCP listener,
started and stopped with pg_ctl. PostgreSQL refuses to run as root, so when we are root the server
runs as the ``postgres`` system user that Debian's package creates.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

DATABASE_NAME = "hdfpay"
DATABASE_USER = "hdfpay"
SERVER_START_TIMEOUT_S = 60
SERVER_STOP_TIMEOUT_S = 60
SERVICE_USER_WHEN_ROOT = "postgres"

# Durability stays on (fsync, synchronous_commit): an approval the terminal saw must survive a
# crash. The rest sizes a small cluster for a 2-core machine.
SERVER_SETTINGS = {
    "listen_addresses": "''",
    "unix_socket_permissions": "0700",
    "max_connections": "200",
    "shared_buffers": "'256MB'",
    "wal_buffers": "'16MB'",
    "max_wal_size": "'2GB'",
    # Recycled WAL segments kept ready at each checkpoint: a new one stops every commit while it
    # is written (ledger/wal_reserve.py).
    "min_wal_size": "'1GB'",
    "checkpoint_timeout": "'15min'",
    "timezone": "'UTC'",
    "log_timezone": "'UTC'",
    "logging_collector": "off",
    "log_min_messages": "warning",
    "lc_messages": "'C'",
}


class EmbeddedDatabaseError(RuntimeError):
    """The private cluster cannot be created, started or stopped; the message says why."""


def service_user() -> pwd.struct_passwd | None:
    """The OS user PostgreSQL and its tools (initdb, pg_ctl, Patroni, pgBackRest) run as: the
    ``postgres`` user of Debian's package when we are root (PostgreSQL refuses root), else None,
    meaning this process's own user."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SERVICE_USER_WHEN_ROOT)
    except KeyError:
        raise EmbeddedDatabaseError(
            "PostgreSQL refuses to run as root and there is no 'postgres' system user to run "
            "it as. Install Debian's 'postgresql' package (it creates that user), run hdfpay "
            "as a normal user, or point DATABASE_URL at an existing server."
        ) from None


def default_data_dir() -> Path:
    """Where the private cluster lives unless HDFPAY_DATA_DIR says otherwise."""
    if explicit := os.environ.get("HDFPAY_DATA_DIR"):
        return Path(explicit)
    if os.geteuid() == 0:
        return Path("/var/lib/hdfpay/pgdata")
    xdg = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return Path(xdg) / "hdfpay" / "pgdata"


def find_server_binaries() -> Path:
    """The newest Debian PostgreSQL server bin directory, or HDFPAY_PG_BINDIR."""
    if explicit := os.environ.get("HDFPAY_PG_BINDIR"):
        candidates = [explicit]
    else:
        candidates = sorted(
            glob.glob("/usr/lib/postgresql/*/bin"),
            key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0,
            reverse=True,
        )
    for candidate in candidates:
        if (Path(candidate) / "postgres").exists() and (Path(candidate) / "initdb").exists():
            return Path(candidate)
    raise EmbeddedDatabaseError(
        "PostgreSQL server binaries not found (looked in /usr/lib/postgresql/*/bin). "
        "Install them with 'apt-get install postgresql', set HDFPAY_PG_BINDIR, "
        "or point DATABASE_URL at an existing server."
    )


@dataclass
class EmbeddedPostgres:
    """One private cluster: ``start()`` creates it on first use, ``stop()`` shuts it down."""

    data_dir: Path

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).absolute()
        self.bin_dir = find_server_binaries()
        self._run_as = service_user()

    @property
    def dsn(self) -> str:
        return f"postgresql://{DATABASE_USER}@/{DATABASE_NAME}?host={self.data_dir}"

    def dsn_for(self, database: str) -> str:
        return f"postgresql://{DATABASE_USER}@/{database}?host={self.data_dir}"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "server.log"

    def is_initialised(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    def is_running(self) -> bool:
        if not self.is_initialised():
            return False
        result = self._pg(["pg_ctl", "-D", str(self.data_dir), "status"], check=False)
        return result.returncode == 0

    def start(self) -> str:
        """Create the cluster if needed, start it if stopped; return its DSN."""
        if not self.is_initialised():
            self._initdb()
        if not self.is_running():
            self.start_server()
            self._ensure_database()
        return self.dsn

    def start_server(self) -> None:
        """pg_ctl start of the existing cluster, nothing more: a restored cluster still in
        recovery can create nothing."""
        self._pg(
            ["pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_file),
             "-w", "-t", str(SERVER_START_TIMEOUT_S), "start"],
            what="start the database server",
        )

    def stop(self) -> bool:
        """Stop the server (fast shutdown: sessions are ended, committed work is kept)."""
        if not self.is_running():
            return False
        self._pg(
            ["pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w",
             "-t", str(SERVER_STOP_TIMEOUT_S), "stop"],
            what="stop the database server",
        )
        return True

    def tool(self, name: str) -> Path:
        """Path of a PostgreSQL client tool of the same version (psql, pgbench)."""
        return self.bin_dir / name

    @property
    def run_as(self) -> pwd.struct_passwd | None:
        """The OS user the server runs as (None: this process's own); the tools that write the
        cluster's files (pgBackRest) run as it too."""
        return self._run_as

    def make_data_dir(self) -> None:
        """The data directory, private to the user the server runs as (for initdb, or for a
        restore from a backup)."""
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self._run_as is not None:
            self._check_reachable_by_service_user()
            os.chown(self.data_dir, self._run_as.pw_uid, self._run_as.pw_gid)
        self.data_dir.chmod(0o700)

    def _initdb(self) -> None:
        self.make_data_dir()
        self._pg(
            ["initdb", "-D", str(self.data_dir), "-U", DATABASE_USER, "--auth=trust",
             "--encoding=UTF8", "--locale=C.UTF-8", "--no-instructions"],
            what="create the database cluster",
        )
        settings = "".join(f"{key} = {value}\n" for key, value in SERVER_SETTINGS.items())
        settings += f"unix_socket_directories = '{self.data_dir}'\n"
        conf = self.data_dir / "postgresql.conf"
        with conf.open("a") as handle:
            handle.write("\n# hdfpay embedded cluster\n" + settings)

    def _check_reachable_by_service_user(self) -> None:
        for parent in self.data_dir.parents:
            mode = parent.stat().st_mode
            if not mode & 0o001:
                raise EmbeddedDatabaseError(
                    f"The database runs as the '{SERVICE_USER_WHEN_ROOT}' user (PostgreSQL refuses "
                    f"root), which cannot enter {parent}. Choose another HDFPAY_DATA_DIR, for "
                    "example under /var/lib or /tmp."
                )

    def _ensure_database(self) -> None:
        psql = [str(self.tool("psql")), "-X", "-q", "-h", str(self.data_dir), "-U", DATABASE_USER,
                "-d", "postgres", "-tA", "-v", "ON_ERROR_STOP=1"]
        exists = subprocess.run(
            psql + ["-c", f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE_NAME}'"],
            capture_output=True, text=True, check=False,
        )
        if exists.stdout.strip() != "1":
            subprocess.run(psql + ["-c", f"CREATE DATABASE {DATABASE_NAME}"],
                           capture_output=True, text=True, check=True)

    def _pg(self, argv: list[str], what: str = "", check: bool = True) -> subprocess.CompletedProcess:
        argv = [str(self.bin_dir / argv[0])] + argv[1:]
        kwargs: dict = {}
        if self._run_as is not None:
            kwargs = {"user": self._run_as.pw_uid, "group": self._run_as.pw_gid, "extra_groups": []}
        # Output goes through files, not pipes: the postmaster that pg_ctl forks could inherit a
        # pipe and keep it open, and run() would then wait for it forever.
        with tempfile.TemporaryFile("w+") as out:
            result = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, text=True,
                                    check=False, cwd="/", stdin=subprocess.DEVNULL, **kwargs)
            out.seek(0)
            result.stderr = out.read()
        if check and result.returncode != 0:
            log_tail = ""
            if self.log_file.exists():
                log_tail = "\n".join(self.log_file.read_text(errors="replace").splitlines()[-15:])
            raise EmbeddedDatabaseError(
                f"Could not {what or argv[0]} in {self.data_dir}:\n{result.stderr.strip()}"
                + (f"\nServer log ({self.log_file}):\n{log_tail}" if log_tail else "")
            )
        return result


def remove_cluster(data_dir: Path) -> None:
    """Delete a stopped cluster's files (tests and the demo's throwaway clusters)."""
    shutil.rmtree(data_dir, ignore_errors=True)


# Throwaway clusters (demo, benchmarks, load tests, tests) live in a temporary directory named
# with this prefix, beside a file naming the process that owns them. A command killed before it
# could stop its cluster leaves the server running; the next throwaway directory stops it.
THROWAWAY_PREFIX = "hdfpay-throwaway-"
THROWAWAY_OWNER_FILE = "owner"
THROWAWAY_DATA_DIR = "pgdata"
THROWAWAY_HA_DIR = "ha"     # a throwaway high-availability cluster (ledger/ha_cluster.py)


@contextlib.contextmanager
def throwaway_workdir(purpose: str) -> Iterator[Path]:
    """A temporary directory for a throwaway cluster (`throwaway_cluster(workdir)`) and its
    companions (keystore, logs). On exit its cluster is stopped and everything removed."""
    stop_orphaned_clusters()
    workdir = Path(tempfile.mkdtemp(prefix=f"{THROWAWAY_PREFIX}{purpose}-"))
    workdir.chmod(0o755)  # the server may run as the 'postgres' user (we may be root)
    owner = workdir / f"{THROWAWAY_OWNER_FILE}.new"
    owner.write_text(_process_identity(os.getpid()) or "")
    owner.replace(workdir / THROWAWAY_OWNER_FILE)     # atomic: a sweeper never reads it half-made
    try:
        yield workdir
    finally:
        _stop_and_remove(workdir)


def throwaway_cluster(workdir: Path) -> EmbeddedPostgres:
    """The cluster of a throwaway directory (created and started by its start())."""
    return EmbeddedPostgres(workdir / THROWAWAY_DATA_DIR)


def stop_orphaned_clusters() -> list[Path]:
    """Stop and remove the throwaway clusters whose owning process is gone; returns them."""
    orphans = []
    for path in sorted(Path(tempfile.gettempdir()).glob(f"{THROWAWAY_PREFIX}*")):
        owner_file = path / THROWAWAY_OWNER_FILE
        try:
            owner = owner_file.read_text().strip()
        except OSError:
            continue   # not ours, or being created right now (the owner file comes last)
        pid = owner.split(" ", 1)[0]
        if pid.isdigit() and _process_identity(int(pid)) == owner:
            continue   # its owner is alive
        _stop_and_remove(path)
        orphans.append(path)
    return orphans


def _stop_and_remove(workdir: Path) -> None:
    """Stop the cluster (or, if pg_ctl cannot, e.g. initdb was interrupted and left its
    single-user backend, kill the process of its pid file), then remove everything."""
    data_dir = workdir / THROWAWAY_DATA_DIR
    stop_ha_processes(workdir / THROWAWAY_HA_DIR)
    try:
        if (data_dir / "PG_VERSION").exists():    # none when DATABASE_URL was used instead
            throwaway_cluster(workdir).stop()
    except EmbeddedDatabaseError:
        _kill_server_of(data_dir)
    finally:
        remove_cluster(workdir)


# A throwaway high-availability cluster (ledger/ha_cluster.py) records its processes here, as
# {"processes": {"etcd": identity, "n1": identity, ...}}, so that the sweeper can stop them too.
HA_STATE_FILE = "cluster.json"
PATRONI_STOP_TIMEOUT_S = 30     # Patroni stops its PostgreSQL in 4-6 s (shared/notes/ha.md)
ETCD_STOP_TIMEOUT_S = 10
POLL_INTERVAL_S = 0.2


def stop_ha_processes(ha_dir: Path) -> None:
    """Stop a throwaway HA cluster's Patroni nodes (each stops its PostgreSQL), then etcd."""
    try:
        processes = json.loads((ha_dir / HA_STATE_FILE).read_text())["processes"]
    except (OSError, ValueError, KeyError):
        return
    nodes = {name: identity for name, identity in processes.items() if name != "etcd"}
    for identity in nodes.values():
        signal_process(identity, signal.SIGTERM)
    for name, identity in nodes.items():
        if not wait_gone(identity, PATRONI_STOP_TIMEOUT_S):
            signal_process(identity, signal.SIGKILL)
            _kill_server_of(ha_dir / name / "data")
    if "etcd" in processes:
        signal_process(processes["etcd"], signal.SIGTERM)
        if not wait_gone(processes["etcd"], ETCD_STOP_TIMEOUT_S):
            signal_process(processes["etcd"], signal.SIGKILL)


def process_alive(identity: str) -> bool:
    """Whether the process recorded as `_process_identity()` still runs (not a reused PID). A
    zombie has ended: only its parent (maybe another process) can reap it."""
    pid = int(identity.split(" ", 1)[0])
    if _process_identity(pid) != identity:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def child_processes(pid: int) -> list[int]:
    """The live processes whose parent is `pid` (a postmaster's backends, a supervisor's
    workers); a zombie, ended but not yet reaped, is not one."""
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = (entry / "stat").read_text()
                state, parent = stat[stat.rindex(")") + 2:].split()[:2]
                if int(parent) == pid and state != "Z":
                    children.append(int(entry.name))
    return children


def signal_process(identity: str, signum: int) -> None:
    if process_alive(identity):
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(identity.split(" ", 1)[0]), signum)


def wait_gone(identity: str, timeout_s: float) -> bool:
    """Wait until the process has ended (reaped if it is our child); False after timeout_s."""
    deadline = time.monotonic() + timeout_s
    pid = int(identity.split(" ", 1)[0])
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        if not process_alive(identity):
            return True
        time.sleep(POLL_INTERVAL_S)
    return False


def _kill_server_of(data_dir: Path) -> None:
    try:
        pid = int((data_dir / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)


def _process_identity(pid: int) -> str | None:
    """"PID START": the start time tells a live owner from a new process that reused its PID."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return f"{pid} {stat[stat.rindex(')') + 2:].split()[19]}"
