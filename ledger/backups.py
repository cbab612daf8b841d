"""Backups with pgBackRest (Debian's `pgbackrest`): the WAL archived continuously, full and
incremental backups, and what the repository holds.

A lost disk must not lose the ledger. The repository is a directory on another disk or machine;
PostgreSQL pushes every WAL segment to it as soon as the segment is complete (archive_command),
and completes one at least every ARCHIVE_TIMEOUT_S, so a lost disk loses at most that much of
the latest writes; a backup plus the archive restores the cluster as it was at any instant after
that backup (ledger/restore.py). pgBackRest runs as the OS user that owns the cluster (the
server's, `postgres` when we are root), as PostgreSQL's archive_command does.

Two ways to name a repository: the embedded cluster's, set up by `enable_archiving` (its
pgBackRest configuration is written beside the data directory), or a configuration an
administrator wrote (HDFPAY_BACKUP_CONFIG; deploy/pgbackrest/ for the database machines).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import pwd
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from ledger.embedded import (DATABASE_USER, EmbeddedDatabaseError,
                             EmbeddedPostgres, service_user)

STANZA = "hdfpay"
CONFIG_DIR_SUFFIX = ".pgbackrest"   # beside the embedded cluster's data directory
CONFIG_FILE_NAME = "pgbackrest.conf"
# The recovery point on a quiet system: PostgreSQL completes (and so archives) a WAL segment at
# least this often when anything was written. A busy system fills 16 MB segments sooner.
ARCHIVE_TIMEOUT_S = 60
# How long a backup, or `check`, waits for the WAL it needs to reach the repository.
ARCHIVE_PUSH_WAIT_S = 60
# A full backup when the newest full one is older than this, else an incremental one: with the
# hourly timer (deploy/systemd/hdfpay-backup.timer), a full a day and an incremental each hour.
FULL_BACKUP_INTERVAL_S = 24 * 3600
# Full backups kept (with everything that depends on them, and the WAL to replay from the
# oldest): a point in time is restorable this many days back.
RETENTION_FULL_BACKUPS = 7
# Bounds on pgBackRest's commands: a full backup of the region's ledger (a few GB) takes minutes.
BACKUP_TIMEOUT_S = 3 * 3600
SETUP_TIMEOUT_S = 120
INFO_TIMEOUT_S = 60
PROCESS_MAX = 2


class BackupError(RuntimeError):
    """A backup, or what it needs, failed; the message says why and what to do."""


def config_dir_for(data_dir: Path) -> Path:
    """Where hdfpay keeps the pgBackRest configuration, logs and locks of an embedded cluster:
    beside its data directory (pgdata → pgdata.pgbackrest), one per cluster, never inside (a
    restore would bring them back)."""
    data_dir = Path(data_dir).absolute()
    return data_dir.with_name(data_dir.name + CONFIG_DIR_SUFFIX)


def repository_from_env() -> Path | None:
    """HDFPAY_BACKUP_REPO: the repository directory (on another disk, or a mount of another
    machine)."""
    value = os.environ.get("HDFPAY_BACKUP_REPO")
    return Path(value).absolute() if value else None


def external_config_from_env() -> Path | None:
    """HDFPAY_BACKUP_CONFIG: a pgBackRest configuration an administrator wrote, with a stanza
    named STANZA, used instead of the embedded cluster's (deploy/pgbackrest/)."""
    value = os.environ.get("HDFPAY_BACKUP_CONFIG")
    return Path(value).absolute() if value else None


def pgbackrest_user() -> pwd.struct_passwd | None:
    """The OS user pgBackRest runs as: the one the cluster runs as (ledger.embedded)."""
    try:
        return service_user()
    except EmbeddedDatabaseError as exc:
        raise BackupError(str(exc)) from None


@dataclass(frozen=True)
class Backup:
    """One backup set as pgBackRest's `info` describes it (times are whole seconds, UTC)."""

    label: str
    kind: str                   # full, diff or incr
    started_at: dt.datetime
    stopped_at: dt.datetime
    size_bytes: int             # the cluster's size
    stored_bytes: int           # what this set added to the repository (compressed)
    wal_start: str
    wal_stop: str

    @classmethod
    def from_info(cls, raw: dict) -> Backup:
        def utc(seconds: int) -> dt.datetime:
            return dt.datetime.fromtimestamp(seconds, dt.timezone.utc)
        return cls(raw["label"], raw["type"], utc(raw["timestamp"]["start"]),
                   utc(raw["timestamp"]["stop"]), raw["info"]["size"],
                   raw["info"]["repository"]["delta"], raw["archive"]["start"],
                   raw["archive"]["stop"])


@dataclass(frozen=True)
class RepositoryInfo:
    status: str                 # pgBackRest's status message: "ok", "no valid backups", …
    backups: list[Backup]       # oldest first
    wal_first: str | None       # the archive's oldest and newest WAL segments
    wal_last: str | None


@dataclass(frozen=True)
class BackupRun:
    backup: Backup
    duration_s: float


@dataclass
class PgBackRest:
    """pgBackRest's commands on one stanza of one configuration, each bounded in time."""

    config_file: Path
    stanza: str = STANZA

    def __post_init__(self) -> None:
        self.config_file = Path(self.config_file).absolute()
        self.run_as = pgbackrest_user()

    def run(self, args: list[str], timeout_s: float, what: str) -> str:
        """Run `pgbackrest --config --stanza ARGS` as the cluster's user; its output, or a
        BackupError with pgBackRest's own error lines (it never prints its secrets)."""
        binary = shutil.which("pgbackrest")
        if binary is None:
            raise BackupError("pgBackRest is not installed: apt-get install pgbackrest")
        if not self.config_file.is_file():
            raise BackupError(f"no pgBackRest configuration at {self.config_file}")
        kwargs: dict = {}
        if self.run_as is not None:
            kwargs = {"user": self.run_as.pw_uid, "group": self.run_as.pw_gid, "extra_groups": []}
        # PG* variables of whoever runs us (PGUSER, PGPASSWORD, PGBACKREST_* options) must not
        # steer pgBackRest away from its configuration.
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        argv = [binary, f"--config={self.config_file}", f"--stanza={self.stanza}", *args]
        try:
            result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s,
                                    check=False, cwd="/", stdin=subprocess.DEVNULL, env=env,
                                    **kwargs)
        except subprocess.TimeoutExpired:
            raise BackupError(f"pgBackRest {what} did not finish within {timeout_s:.0f} s") \
                from None
        if result.returncode != 0:
            lines = [line for line in (result.stdout + result.stderr).splitlines()
                     if "ERROR" in line or "HINT" in line] or result.stderr.splitlines()[-5:]
            raise BackupError(f"pgBackRest {what} failed (exit {result.returncode}): "
                              + " ".join(line.strip() for line in lines))
        return result.stdout

    def info(self) -> RepositoryInfo:
        raw = json.loads(self.run(["--output=json", "info"], INFO_TIMEOUT_S, "info") or "[]")
        stanza = next((s for s in raw if s.get("name") == self.stanza), None)
        if stanza is None:
            return RepositoryInfo("missing stanza", [], None, None)
        archives = stanza.get("archive") or []
        return RepositoryInfo(
            stanza["status"]["message"],
            sorted((Backup.from_info(b) for b in stanza.get("backup") or []),
                   key=lambda b: b.stopped_at),
            min((a["min"] for a in archives if a.get("min")), default=None),
            max((a["max"] for a in archives if a.get("max")), default=None))

    def stanza_create(self) -> None:
        self.run(["stanza-create"], SETUP_TIMEOUT_S, "stanza-create")

    def check(self) -> None:
        """Switch to a new WAL segment and wait until the finished one is in the repository:
        proves archiving works, and puts everything committed so far in the archive."""
        self.run(["check"], SETUP_TIMEOUT_S + ARCHIVE_PUSH_WAIT_S, "check")

    def backup(self, kind: str | None = None) -> BackupRun:
        """A backup of the running cluster, online: `full`, `incr`, or None for a full one when
        the newest is older than FULL_BACKUP_INTERVAL_S (or there is none), else incremental.
        pgBackRest then expires what RETENTION_FULL_BACKUPS no longer keeps."""
        before = self.info()
        if kind is None:
            fulls = [b for b in before.backups if b.kind == "full"]
            age_s = time.time() - fulls[-1].stopped_at.timestamp() if fulls else None
            kind = "full" if age_s is None or age_s > FULL_BACKUP_INTERVAL_S else "incr"
        started = time.monotonic()
        self.run([f"--type={kind}", "backup"], BACKUP_TIMEOUT_S, f"{kind} backup")
        duration_s = time.monotonic() - started
        known = {b.label for b in before.backups}
        made = [b for b in self.info().backups if b.label not in known]
        if not made:
            raise BackupError(f"pgBackRest said the {kind} backup succeeded, but its info lists "
                              "no new backup")
        return BackupRun(made[-1], duration_s)


def embedded_config(data_dir: Path) -> PgBackRest:
    """The embedded cluster's pgBackRest, as `enable_archiving` set it up."""
    config = config_dir_for(data_dir) / CONFIG_FILE_NAME
    if not config.is_file():
        raise BackupError(f"backups are not set up for the cluster in {data_dir}: run "
                          "'hdfpay db backup-setup --repo DIR' (a directory on another disk)")
    return PgBackRest(config)


def write_config(data_dir: Path, repository: Path) -> PgBackRest:
    """pgBackRest's configuration for the embedded cluster in `data_dir` and a repository
    directory (created if missing), all owned by the user pgBackRest runs as."""
    data_dir, repository = Path(data_dir).absolute(), Path(repository).absolute()
    if repository == data_dir or data_dir in repository.parents:
        raise BackupError(f"the repository {repository} is inside the data directory: put it on "
                          "another disk")
    directory = config_dir_for(data_dir)
    owner = pgbackrest_user()
    for path, mode in ((repository, 0o750), (directory, 0o750), (directory / "log", 0o750),
                       (directory / "lock", 0o750)):
        path.mkdir(parents=True, exist_ok=True, mode=mode)
        if owner is not None:
            os.chown(path, owner.pw_uid, owner.pw_gid)
    config = directory / CONFIG_FILE_NAME
    config.write_text(
        f"# Written by hdfpay (ledger/backups.py) for the cluster in {data_dir}.\n"
        "# 'hdfpay db backup-setup' writes it again; deploy/pgbackrest/ explains each option.\n"
        "[global]\n"
        f"repo1-path={repository}\n"
        f"repo1-retention-full={RETENTION_FULL_BACKUPS}\n"
        f"log-path={directory / 'log'}\n"
        f"lock-path={directory / 'lock'}\n"
        "start-fast=y\n"
        "compress-type=lz4\n"
        f"process-max={PROCESS_MAX}\n"
        f"archive-timeout={ARCHIVE_PUSH_WAIT_S}\n"
        "# The server's log lives in the data directory: it is no part of the ledger.\n"
        "exclude=server.log\n\n"
        f"[{STANZA}]\n"
        f"pg1-path={data_dir}\n"
        f"pg1-socket-path={data_dir}\n"
        f"pg1-user={DATABASE_USER}\n")
    config.chmod(0o640)
    if owner is not None:
        os.chown(config, owner.pw_uid, owner.pw_gid)
    return PgBackRest(config)


def repository_of(pgbackrest: PgBackRest) -> Path | None:
    """The repo1-path of a configuration (None for a remote or object-store repository)."""
    for line in pgbackrest.config_file.read_text().splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "repo1-path":
            return Path(value.strip())
    return None


@dataclass(frozen=True)
class ArchivingSetup:
    pgbackrest: PgBackRest
    restarted: bool             # archive_mode was off: the cluster was restarted to turn it on


def enable_archiving(cluster: EmbeddedPostgres, repository: Path) -> ArchivingSetup:
    """Back the embedded cluster up into `repository`: pgBackRest's configuration, PostgreSQL's
    archive_command (ALTER SYSTEM; a restart only when archiving was off), the stanza, and a
    check that a WAL segment reaches the repository. Idempotent. The cluster is left running
    or stopped as it was."""
    if not cluster.is_initialised():
        raise BackupError(f"no cluster in {cluster.data_dir}: 'hdfpay db start' creates it")
    pgbackrest = write_config(cluster.data_dir, repository)
    command = (f"pgbackrest --config={shlex.quote(str(pgbackrest.config_file))} "
               f"--stanza={STANZA} archive-push %p")
    was_running = cluster.is_running()
    cluster.start()
    try:
        was_archiving = superuser_psql(cluster, "SHOW archive_mode") == "on"
        superuser_psql(cluster, "ALTER SYSTEM SET archive_mode = on",
                       "ALTER SYSTEM SET archive_command = :'command'",
                       f"ALTER SYSTEM SET archive_timeout = '{ARCHIVE_TIMEOUT_S}s'",
                       "SELECT pg_reload_conf()", variables={"command": command})
        if not was_archiving:
            cluster.stop()
            cluster.start()
        pgbackrest.stanza_create()
        pgbackrest.check()
    finally:
        if not was_running:
            cluster.stop()
    return ArchivingSetup(pgbackrest, restarted=was_running and not was_archiving)


def superuser_psql(cluster: EmbeddedPostgres, *statements: str,
                   variables: dict[str, str] | None = None, database: str = "postgres") -> str:
    """Statements as the cluster's superuser over its private socket (ALTER SYSTEM needs one);
    the last one's output."""
    argv = [str(cluster.tool("psql")), "-X", "-q", "-tA", "-v", "ON_ERROR_STOP=1",
            "-h", str(cluster.data_dir), "-U", DATABASE_USER, "-d", database]
    for name, value in (variables or {}).items():
        argv += ["-v", f"{name}={value}"]
    script = "".join(f"{statement};\n" for statement in statements)
    result = subprocess.run(argv, input=script, capture_output=True, text=True, check=False,
                            env={k: v for k, v in os.environ.items() if not k.startswith("PG")})
    if result.returncode != 0:
        raise EmbeddedDatabaseError(f"psql on {cluster.data_dir}: {result.stderr.strip()}")
    return result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
