"""Two Patroni-managed PostgreSQL nodes and an etcd member on loopback: the high-availability
setup of deploy/patroni/ on one machine, for tests and for trying a failover by hand.

A primary with a synchronous standby, in Patroni's strict synchronous mode: a commit returns
only once the standby has it, and with no standby commits wait (the terminal's statement
timeout turns the wait into 91) instead of quietly going asynchronous, so no approval a terminal
saw lives on one machine only. The etcd member is alone here (three in deploy/patroni/).

Loopback trusts every login (like the embedded cluster's private socket): role_dsn() drops
passwords, and anyone on this machine could read the work directory's files anyway. Only the
replication login checks a password (scram), so a standby that cannot authenticate shows up
here as it would in production. Patroni and PostgreSQL run as `postgres` when we are root.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from ledger.embedded import (DATABASE_NAME, PATRONI_STOP_TIMEOUT_S, POLL_INTERVAL_S,
                             HA_STATE_FILE,
                             EmbeddedDatabaseError, _process_identity, child_processes,
                             service_user,
                             default_data_dir,
                             find_server_binaries, process_alive as _alive,
                             signal_process as _signal, stop_ha_processes,
                             wait_gone as _wait_gone)

SCOPE = "hdfpay"
NODE_NAMES = ("n1", "n2")
SUPERUSER = "postgres"
STATE_FILE = HA_STATE_FILE
LOOPBACK = "127.0.0.1"
# Bounds on every wait, each measured on this 2-core machine (shared/notes/ha.md) with margin:
# a leader and its sync standby appear within 8 s of starting; Patroni stops its node in 4-6 s.
ETCD_START_TIMEOUT_S = 20
CLUSTER_READY_TIMEOUT_S = 90
REST_TIMEOUT_S = 1.0
# Patroni's failure detection (written to etcd at bootstrap): a 10 s leader lease, one HA loop a
# second, and a crashed postmaster failed over at once instead of restarted in place
# (primary_start_timeout 0). Measured: writes resume on the other node 2-3 s after a postmaster
# is killed. A short ttl costs a spurious failover if Patroni or etcd stalls for over 10 s.
DCS_SETTINGS = {
    "ttl": 10, "loop_wait": 1, "retry_timeout": 4, "primary_start_timeout": 0,
    "synchronous_mode": True, "synchronous_mode_strict": True,
    "postgresql": {"use_pg_rewind": True,
                   "parameters": {"synchronous_commit": "on", "max_connections": 200,
                                  "min_wal_size": "1GB"}},
}


def default_ha_dir() -> Path:
    """Where `hdfpay db start --ha` keeps its nodes: HDFPAY_HA_DIR, else beside the embedded
    cluster's data directory."""
    if explicit := os.environ.get("HDFPAY_HA_DIR"):
        return Path(explicit)
    return default_data_dir().parent / "ha"


class HaClusterError(EmbeddedDatabaseError):
    """etcd or a Patroni node did not start or stop in time; the message says where to look."""


@dataclass
class Ports:
    etcd_client: int
    etcd_peer: int
    postgres: tuple[int, int]
    rest: tuple[int, int]


@dataclass
class HaCluster:
    """The cluster of one work directory: start() creates it on first use, stop() ends it."""

    workdir: Path

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir).absolute()
        self.bin_dir = find_server_binaries()
        self._run_as = _service_user()
        missing = [tool for tool in ("patroni", "etcd") if shutil.which(tool) is None]
        if missing:
            raise HaClusterError(f"{' and '.join(missing)} not found: apt-get install patroni "
                                 "etcd-server etcd-client (./run test installs them)")

    @property
    def state_file(self) -> Path:
        return self.workdir / STATE_FILE

    def ports(self) -> Ports:
        state = json.loads(self.state_file.read_text())
        return Ports(state["ports"]["etcd_client"], state["ports"]["etcd_peer"],
                     tuple(state["ports"]["postgres"]), tuple(state["ports"]["rest"]))

    def dsn(self, database: str = DATABASE_NAME) -> str:
        """Every node, and the one that accepts writes chosen at each connection."""
        hosts = ",".join(f"{LOOPBACK}:{port}" for port in self.ports().postgres)
        return f"postgresql://{SUPERUSER}@{hosts}/{database}?target_session_attrs=read-write"

    def node_dsn(self, node: str, database: str = DATABASE_NAME) -> str:
        port = self.ports().postgres[NODE_NAMES.index(node)]
        return f"postgresql://{SUPERUSER}@{LOOPBACK}:{port}/{database}"

    def is_running(self) -> bool:
        return self.state_file.exists() and any(
            _alive(p) for p in json.loads(self.state_file.read_text())["processes"].values())

    def start(self) -> str:
        """Start etcd and both nodes (created on first use), wait for a leader with a sync
        standby and the database; return the multi-host DSN."""
        if self.is_running():
            self.wait_ready()
            return self.dsn()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.workdir.chmod(0o755)     # the nodes run as 'postgres' and must enter it
        ports = self.ports() if self.state_file.exists() else _free_ports()
        processes = {}
        try:
            processes["etcd"] = self._start_etcd(ports)
            for index, node in enumerate(NODE_NAMES):
                processes[node] = self._start_node(node, index, ports)
        finally:
            self.state_file.write_text(json.dumps({"ports": asdict(ports), "processes": processes}))
        self.wait_ready()
        self._ensure_database()
        return self.dsn()

    def stop(self) -> bool:
        """SIGTERM the Patroni nodes (each stops its PostgreSQL, fast shutdown), then etcd."""
        if not self.is_running():
            return False
        stop_ha_processes(self.workdir)
        return True

    def members(self) -> list[dict]:
        """Patroni's view (/cluster of whichever node answers): name, role, state, timeline."""
        for port in self.ports().rest:
            with contextlib.suppress(OSError, ValueError):
                url = f"http://{LOOPBACK}:{port}/cluster"
                with urllib.request.urlopen(url, timeout=REST_TIMEOUT_S) as answer:
                    return json.load(answer)["members"]
        return []

    def leader(self) -> str | None:
        return next((m["name"] for m in self.members()
                     if m["role"] == "leader" and m["state"] == "running"), None)

    def sync_standby(self) -> str | None:
        return next((m["name"] for m in self.members()
                     if m["role"] == "sync_standby" and m["state"] in ("running", "streaming")), None)

    def wait_ready(self, timeout_s: float = CLUSTER_READY_TIMEOUT_S) -> tuple[str, str]:
        """Wait until a leader and a synchronous standby run; returns their names."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            leader, standby = self.leader(), self.sync_standby()
            if leader and standby:
                return leader, standby
            time.sleep(POLL_INTERVAL_S)
        raise HaClusterError(f"no leader with a synchronous standby after {timeout_s} s: "
                             f"{self.members()} (logs: {self.workdir}/*/patroni.log)")

    def postmaster_pid(self, node: str) -> int | None:
        """The node's PostgreSQL postmaster, from its pid file (None when it is down)."""
        try:
            return int((self.workdir / node / "data" / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def kill_postmaster(self, node: str) -> int | None:
        """SIGKILL a node's postmaster (a crash; its Patroni stays up); returns the PID."""
        pid = self.postmaster_pid(node)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return pid

    def freeze(self, node: str, *, patroni: bool) -> list[int]:
        """SIGSTOP a node's PostgreSQL, postmaster first, then every backend and auxiliary
        process; with `patroni`, its Patroni before them (the whole machine stalls), else
        PostgreSQL alone (a stuck disk: Patroni runs on). Returns the PIDs for thaw()."""
        pid = self.postmaster_pid(node)
        if pid is None:
            return []
        manager = json.loads(self.state_file.read_text())["processes"][node]
        targets = [int(manager.split(" ", 1)[0])] if patroni and _alive(manager) else []
        frozen = []
        for target in (*targets, pid, *child_processes(pid)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(target, signal.SIGSTOP)
                frozen.append(target)
        return frozen

    @staticmethod
    def thaw(pids: list[int]) -> None:
        """SIGCONT what freeze_postgres() stopped (those still there)."""
        for target in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(target, signal.SIGCONT)

    def reinitialize(self, node: str) -> None:
        """What an operator does to a replica that cannot follow the leader any more (e.g. on a
        newer timeline): Patroni's POST /reinitialize wipes it and clones the leader again."""
        port = self.ports().rest[NODE_NAMES.index(node)]
        request = urllib.request.Request(f"http://{LOOPBACK}:{port}/reinitialize", method="POST",
                                         data=json.dumps({"force": True}).encode(),
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=REST_TIMEOUT_S * 5):
                pass
        except (OSError, urllib.error.HTTPError) as exc:
            raise HaClusterError(f"{node} refused to reinitialize: {exc}") from None

    def restart_etcd(self) -> None:
        """SIGKILL etcd (the store crashes), then start it again on its data directory."""
        state = json.loads(self.state_file.read_text())
        _signal(state["processes"]["etcd"], signal.SIGKILL)
        _wait_gone(state["processes"]["etcd"], ETCD_START_TIMEOUT_S)
        state["processes"]["etcd"] = self._start_etcd(self.ports())
        self.state_file.write_text(json.dumps(state))

    def crash_node(self, node: str) -> None:
        """SIGKILL a node's Patroni, then its postmaster: the machine is lost."""
        state = json.loads(self.state_file.read_text())
        _signal(state["processes"][node], signal.SIGKILL)
        _wait_gone(state["processes"][node], PATRONI_STOP_TIMEOUT_S)
        self.kill_postmaster(node)

    def restart_node(self, node: str) -> None:
        """Start a crashed node's Patroni again: it recovers and rejoins as a standby."""
        state = json.loads(self.state_file.read_text())
        state["processes"][node] = self._start_node(node, NODE_NAMES.index(node), self.ports())
        self.state_file.write_text(json.dumps(state))

    def _start_etcd(self, ports: Ports) -> str:
        data = self.workdir / "etcd"
        data.mkdir(exist_ok=True)
        client, peer = f"http://{LOOPBACK}:{ports.etcd_client}", f"http://{LOOPBACK}:{ports.etcd_peer}"
        argv = ["etcd", "--name", "e1", "--data-dir", str(data / "data"),
                "--listen-client-urls", client, "--advertise-client-urls", client,
                "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                "--initial-cluster", f"e1={peer}", "--initial-cluster-state", "new"]
        identity = self._spawn(argv, data / "etcd.log", as_service_user=False)
        deadline = time.monotonic() + ETCD_START_TIMEOUT_S
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"{client}/health", timeout=REST_TIMEOUT_S) as answer:
                    if json.load(answer).get("health") == "true":
                        return identity
            if not _alive(identity):
                break
            time.sleep(POLL_INTERVAL_S)
        raise HaClusterError(f"etcd did not become healthy in {ETCD_START_TIMEOUT_S} s "
                             f"(log: {data / 'etcd.log'})")

    def _start_node(self, node: str, index: int, ports: Ports) -> str:
        home = self.workdir / node
        home.mkdir(exist_ok=True)
        home.chmod(0o700)
        if self._run_as is not None:
            os.chown(home, self._run_as.pw_uid, self._run_as.pw_gid)
        config = home / "patroni.yml"
        # JSON is YAML: Patroni reads it as its configuration file.
        config.write_text(json.dumps(self._node_config(node, index, ports), indent=2))
        return self._spawn(["patroni", str(config)], home / "patroni.log", as_service_user=True)

    def _node_config(self, node: str, index: int, ports: Ports) -> dict:
        home = self.workdir / node
        rest = f"{LOOPBACK}:{ports.rest[index]}"
        postgres = f"{LOOPBACK}:{ports.postgres[index]}"
        return {
            "scope": SCOPE, "name": node,
            "restapi": {"listen": rest, "connect_address": rest},
            "etcd3": {"hosts": f"{LOOPBACK}:{ports.etcd_client}"},
            "bootstrap": {"dcs": DCS_SETTINGS,
                          "initdb": [{"encoding": "UTF8"}, {"locale": "C.UTF-8"}, "data-checksums"]},
            "postgresql": {
                "listen": postgres, "connect_address": postgres,
                "data_dir": str(home / "data"), "bin_dir": str(self.bin_dir),
                "pgpass": str(home / "pgpass"),
                "authentication": {
                    "superuser": {"username": SUPERUSER, "password": "loopback-superuser"},
                    "replication": {"username": "replicator", "password": "loopback-replication"},
                    "rewind": {"username": "rewinder", "password": "loopback-rewind"}},
                "parameters": {"unix_socket_directories": str(home), "timezone": "UTC",
                               "log_timezone": "UTC", "lc_messages": "C"},
                # Here, not under bootstrap: Patroni writes the whole file on every node.
                "pg_hba": ["local all all trust",
                           f"host replication replicator {LOOPBACK}/32 scram-sha-256",
                           f"host all all {LOOPBACK}/32 trust"],
            },
        }

    def _spawn(self, argv: list[str], log: Path, *, as_service_user: bool) -> str:
        kwargs: dict = {}
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": os.environ.get("HOME", "/")}
        if as_service_user and self._run_as is not None:
            kwargs = {"user": self._run_as.pw_uid, "group": self._run_as.pw_gid, "extra_groups": []}
            env["HOME"] = self._run_as.pw_dir
        # A clean environment: an inherited PGPASSWORD would beat the walreceiver's passfile.
        with log.open("ab") as out:
            process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, cwd="/", env=env,
                                       start_new_session=True, **kwargs)
        if self._run_as is not None and as_service_user:
            os.chown(log, self._run_as.pw_uid, self._run_as.pw_gid)
        return _process_identity(process.pid) or f"{process.pid} ?"

    def _ensure_database(self) -> None:
        """Create the database on the primary, then wait until every node has replayed it: a
        commit waits for the standby's flush, not its replay, and a client that tries the
        standby first must not be told the database does not exist."""
        if self._psql(self.dsn("postgres"), self._database_exists).stdout.strip() != "1":
            self._psql(self.dsn("postgres"), f"CREATE DATABASE {DATABASE_NAME}")
        deadline = time.monotonic() + CLUSTER_READY_TIMEOUT_S
        for node in NODE_NAMES:
            while self._psql(self.node_dsn(node, "postgres"), self._database_exists,
                             check=False).stdout.strip() != "1":
                if time.monotonic() > deadline:
                    raise HaClusterError(f"{node} has not replayed CREATE DATABASE in "
                                         f"{CLUSTER_READY_TIMEOUT_S} s")
                time.sleep(POLL_INTERVAL_S)

    _database_exists = f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE_NAME}'"

    def _psql(self, dsn: str, sql: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run([str(self.bin_dir / "psql"), "-X", "-q", "-tA", "-v",
                                 "ON_ERROR_STOP=1", dsn, "-c", sql],
                                capture_output=True, text=True, check=False, env=_clean_env())
        if check and result.returncode != 0:
            raise HaClusterError(f"psql on {dsn}: {result.stderr.strip()}")
        return result

def _service_user() -> pwd.struct_passwd | None:
    try:
        return service_user()
    except EmbeddedDatabaseError as exc:
        raise HaClusterError(str(exc)) from None


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


def _free_ports() -> Ports:
    """Six ports the kernel says are free now (another engineer's cluster may hold fixed ones)."""
    sockets = []
    for _ in range(6):
        s = socket.socket()
        s.bind((LOOPBACK, 0))
        sockets.append(s)
    numbers = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return Ports(numbers[0], numbers[1], (numbers[2], numbers[3]), (numbers[4], numbers[5]))
