"""Point-in-time restore from a pgBackRest repository into a NEW cluster.

The backup that ended last before the target is restored into an empty data directory, then
PostgreSQL replays the WAL archive up to the target (or to the archive's end), promotes itself
and starts a new timeline. The new cluster has the embedded cluster's shape (its own unix socket
in its data directory, no TCP) and does not archive: it must never write into the history of the
cluster it came from. `hdfpay db backup-setup` on it makes it a backed-up cluster of its own.

Nothing of the lost cluster is needed: the repository's path is enough (a fresh configuration is
written beside the new data directory), so a restore works after the disk is gone.
"""

from __future__ import annotations

import datetime as dt
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from ledger.backups import (Backup, BackupError, PgBackRest, config_dir_for, superuser_psql,
                            write_config)
from ledger.embedded import EmbeddedDatabaseError, EmbeddedPostgres

# Bounds: copying a backup of a few GB takes minutes; replaying the WAL of up to a day of sales
# (FULL_BACKUP_INTERVAL_S) well under an hour on the database machine.
RESTORE_TIMEOUT_S = 3 * 3600
RECOVERY_TIMEOUT_S = 3600
POLL_INTERVAL_S = 0.1
LOG_TAIL_LINES = 15
# psql's words when the restored cluster refuses the login itself: no use waiting. Any other
# error (starting up, in recovery, stopping) is looked at again on the next turn.
LOGIN_REFUSED = ("no pg_hba.conf entry", "authentication failed", "does not exist")
# PostgreSQL's words when the archive ends before the target (nothing committed after it).
TARGET_NOT_REACHED = "recovery ended before configured recovery target was reached"


@dataclass(frozen=True)
class RestoredCluster:
    cluster: EmbeddedPostgres
    backup: Backup              # the backup set restored, before the WAL was replayed
    target: dt.datetime | None  # None: the end of the archive
    restore_s: float            # copying the backup set
    recovery_s: float           # replaying the WAL up to the target, then promotion


def backup_before(backups: list[Backup], target: dt.datetime | None) -> Backup:
    """The newest backup that ended before the target. pgBackRest keeps whole seconds: a
    backup is usable only if it ended in a second before the target's (its consistent point
    must come before the target), which is pgBackRest's own rule for `--type=time`."""
    if not backups:
        raise BackupError("the repository holds no backup of this cluster yet: "
                          "'hdfpay db backup' takes one")
    if target is None:
        return backups[-1]
    usable = [b for b in backups if b.stopped_at.timestamp() < int(target.timestamp())]
    if not usable:
        raise BackupError(f"no backup ended before {_utc(target)}: the oldest kept ended at "
                          f"{_utc(backups[0].stopped_at)}, the earliest point it can restore to")
    return usable[-1]


def restore_cluster(repository: Path | None, into: Path, target: dt.datetime | None, *,
                    pgbackrest: PgBackRest | None = None) -> RestoredCluster:
    """Restore into the empty (or new) directory `into` and start it there, recovered to
    `target` (aware datetime) or to the archive's end, promoted, running. The repository is a
    directory (a configuration is written for the new cluster) or, with `pgbackrest`, the one an
    administrator's configuration names."""
    if target is not None and target.tzinfo is None:
        raise BackupError("the target time needs its time zone (e.g. 2027-03-01T14:05:00+01:00)")
    cluster = EmbeddedPostgres(into)
    if cluster.data_dir.exists() and any(cluster.data_dir.iterdir()):
        raise BackupError(f"{cluster.data_dir} is not empty: a restore goes into a new directory")
    written = None
    if pgbackrest is None:
        if repository is None:
            raise BackupError("which repository? --repo DIR or HDFPAY_BACKUP_REPO")
        if not Path(repository).is_dir():
            raise BackupError(f"no repository at {repository}")
        if not config_dir_for(cluster.data_dir).exists():
            written = config_dir_for(cluster.data_dir)
        pgbackrest = write_config(cluster.data_dir, repository)
    try:
        chosen = backup_before(pgbackrest.info().backups, target)
    except BackupError:
        if written is not None:         # nothing was restored: leave nothing behind
            shutil.rmtree(written, ignore_errors=True)
        raise
    cluster.make_data_dir()
    args = [f"--pg1-path={cluster.data_dir}", "restore", f"--set={chosen.label}",
            "--archive-mode=off"]
    if target is not None:
        args += ["--type=time", f"--target={_utc(target, fraction=True)}",
                 "--target-action=promote"]
    started = time.monotonic()
    pgbackrest.run(args, RESTORE_TIMEOUT_S, "restore")
    restore_s = time.monotonic() - started
    _make_it_a_cluster_of_its_own(cluster)
    started = time.monotonic()
    try:
        cluster.start_server()
    except EmbeddedDatabaseError as exc:
        raise BackupError(_recovery_failure(cluster, target) or f"the restored cluster did not "
                          f"start: {exc}") from None
    _wait_promoted(cluster, target)
    return RestoredCluster(cluster, chosen, target, restore_s, time.monotonic() - started)


def _make_it_a_cluster_of_its_own(cluster: EmbeddedPostgres) -> None:
    """The restored files name the old cluster's socket directory, and may hold its socket lock
    and a synchronous standby's name (Patroni): settings appended last win."""
    conf = cluster.data_dir / "postgresql.conf"
    if not conf.is_file():
        raise BackupError("the backup holds no postgresql.conf: it is not of a cluster that keeps "
                          "its settings in its data directory (restore it with pgBackRest by hand: "
                          "deploy/pgbackrest/README.md)")
    for stale in cluster.data_dir.glob(".s.PGSQL.*.lock"):
        stale.unlink()
    with conf.open("a") as handle:
        handle.write("\n# Restored by hdfpay (ledger/restore.py): its own socket, no TCP, no "
                     "synchronous standby; archiving is off (postgresql.auto.conf).\n"
                     "listen_addresses = ''\n"
                     f"unix_socket_directories = '{cluster.data_dir}'\n"
                     "synchronous_standby_names = ''\n")


def _wait_promoted(cluster: EmbeddedPostgres, target: dt.datetime | None) -> None:
    """Until recovery has ended and the cluster accepts writes, within RECOVERY_TIMEOUT_S; a
    cluster that stops on the way (the target was never reached) says why."""
    deadline = time.monotonic() + RECOVERY_TIMEOUT_S
    while time.monotonic() < deadline:
        if not cluster.is_running():
            raise BackupError(_recovery_failure(cluster, target)
                              or "the restored cluster stopped during recovery:\n"
                              + _log_tail(cluster))
        try:
            if superuser_psql(cluster, "SELECT pg_is_in_recovery()") == "f":
                return
        except EmbeddedDatabaseError as exc:
            if any(refusal in str(exc) for refusal in LOGIN_REFUSED):
                raise BackupError(f"cannot query the restored cluster: {exc}") from None
        time.sleep(POLL_INTERVAL_S)
    raise BackupError(f"the restored cluster in {cluster.data_dir} was still recovering after "
                      f"{RECOVERY_TIMEOUT_S} s:\n" + _log_tail(cluster))


def _recovery_failure(cluster: EmbeddedPostgres, target: dt.datetime | None) -> str | None:
    if target is not None and TARGET_NOT_REACHED in _log_tail(cluster):
        return (f"the archive ends before {_utc(target)}: nothing committed after that time has "
                "reached the repository yet (the last WAL segment arrives within "
                "archive_timeout, or now with 'hdfpay db backup'); restore without --to for "
                f"the archive's end. The unrecovered files are left in {cluster.data_dir}")
    return None


def _log_tail(cluster: EmbeddedPostgres) -> str:
    try:
        lines = cluster.log_file.read_text(errors="replace").splitlines()
    except OSError:
        return "(no server log)"
    return "\n".join(lines[-LOG_TAIL_LINES:])


def _utc(moment: dt.datetime, fraction: bool = False) -> str:
    text = moment.astimezone(dt.timezone.utc).strftime(
        "%Y-%m-%d %H:%M:%S.%f" if fraction else "%Y-%m-%d %H:%M:%S")
    return f"{text}+00" if fraction else f"{text} UTC"

