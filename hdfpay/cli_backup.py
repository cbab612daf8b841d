"""`hdfpay db backup-setup|backup|backups|restore`: the ledger's backups with pgBackRest
(ledger/backups.py, ledger/restore.py). An administrator's job, like `db migrate`: pgBackRest
runs as the cluster's OS user, never through the serving roles."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

from hdfpay.cli_support import UsageError, cli_database, notice
from ledger import backups
from ledger.backups import BackupError, PgBackRest
from ledger.embedded import EmbeddedPostgres, default_data_dir
from ledger.restore import restore_cluster

ACTIONS = ("backup-setup", "backup", "backups", "restore")


def size(count: int) -> str:
    """Bytes for an operator: 6.0 MB, 679 kB."""
    return f"{count / 1e6:.1f} MB" if count >= 1e6 else f"{count / 1e3:.0f} kB"


def moment(text: str) -> dt.datetime:
    """An instant with its time zone: 2027-03-01T14:05:00+01:00, or …Z for UTC."""
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a date and time such as 2027-03-01T14:05:00+01:00, got {text!r}") from None
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} has no time zone: add one, e.g. +01:00 (Paris in winter) or Z (UTC)")
    return value


moment.__name__ = "date and time"


def add_backup_actions(actions) -> None:
    """The backup actions of `hdfpay db`."""
    repo_help = ("the repository: a directory on another disk or a mount of another machine "
                 "(default HDFPAY_BACKUP_REPO)")
    text = ("back the embedded cluster up into a pgBackRest repository: its configuration "
            "beside the data directory, every WAL segment archived there (a restart the first "
            "time, to turn archiving on), checked")
    q = actions.add_parser("backup-setup", help=text, description=text)
    q.add_argument("--repo", type=Path, metavar="DIR", help=repo_help)
    text = ("take a backup now, online (the hourly deploy/systemd/hdfpay-backup.timer): a full "
            f"one if the newest is over {backups.FULL_BACKUP_INTERVAL_S // 3600} h old, else an "
            "incremental one; pgBackRest then expires what retention no longer keeps. The "
            "embedded cluster's, or HDFPAY_BACKUP_CONFIG's stanza 'hdfpay'")
    q = actions.add_parser("backup", help=text, description=text)
    q.add_argument("--type", choices=("full", "incr"), dest="kind",
                   help="this kind instead of the automatic choice")
    text = "list the backups in the repository and the WAL archive's extent"
    actions.add_parser("backups", help=text, description=text)
    text = ("restore into a NEW cluster in DIR, as it was at --to (or at the end of the "
            "archive), then start it promoted, on its own socket, not archiving; it keeps "
            "running. Needs only the repository: works after the cluster's disk is lost")
    q = actions.add_parser("restore", help=text, description=text)
    q.add_argument("--into", type=Path, required=True, metavar="DIR",
                   help="the new data directory (absent or empty); its pgBackRest "
                        "configuration goes beside it, in DIR.pgbackrest")
    q.add_argument("--to", type=moment, metavar="TIME",
                   help="the instant, with its time zone (e.g. 2027-03-01T14:05:00+01:00); "
                        "every transaction committed before it is kept, none after")
    q.add_argument("--repo", type=Path, metavar="DIR",
                   help=repo_help + ", else the embedded cluster's")


def cmd_backup(args, settings) -> int:
    try:
        if args.action == "backup-setup":
            return _setup(args, settings)
        if args.action == "restore":
            return _restore(args)
        pgbackrest = _configured(settings)
        if args.action == "backups":
            return _list(pgbackrest)
        if backups.external_config_from_env():
            return _backup(pgbackrest, args.kind)
        with cli_database(settings):        # online: the embedded cluster must run
            return _backup(pgbackrest, args.kind)
    except BackupError as exc:
        print(f"hdfpay: error: {exc}", file=sys.stderr)
        return 1


def _configured(settings) -> PgBackRest:
    if external := backups.external_config_from_env():
        return PgBackRest(external)
    if settings.database_url:
        raise UsageError("DATABASE_URL is set: that server is backed up by the pgBackRest of its "
                         "machines; set HDFPAY_BACKUP_CONFIG to its configuration "
                         "(deploy/pgbackrest/README.md)")
    return backups.embedded_config(default_data_dir())


def _setup(args, settings) -> int:
    if settings.database_url or backups.external_config_from_env():
        raise UsageError("backup-setup sets up the embedded cluster only; a server of your own "
                         "is set up as in deploy/pgbackrest/README.md")
    repository = args.repo or backups.repository_from_env()
    if repository is None:
        raise UsageError("which repository? --repo DIR or HDFPAY_BACKUP_REPO (on another disk)")
    setup = backups.enable_archiving(EmbeddedPostgres(default_data_dir()), repository)
    if setup.restarted:
        notice("the embedded cluster was restarted to turn WAL archiving on")
    print(f"WAL archiving into {repository.absolute()} checked (stanza '{backups.STANZA}', "
          f"configuration {setup.pgbackrest.config_file}); take the first backup with "
          "'hdfpay db backup'")
    return 0


def _backup(pgbackrest: PgBackRest, kind: str | None) -> int:
    run = pgbackrest.backup(kind)
    made = run.backup
    print(f"{made.kind} backup {made.label} in {run.duration_s:.1f} s: cluster "
          f"{size(made.size_bytes)}, {size(made.stored_bytes)} stored; "
          f"restorable from {made.stopped_at:%Y-%m-%d %H:%M:%S} UTC")
    return 0


def _list(pgbackrest: PgBackRest) -> int:
    info = pgbackrest.info()
    print(f"stanza '{pgbackrest.stanza}' ({pgbackrest.config_file}): {info.status}")
    for b in info.backups:
        print(f"{b.kind:<4} {b.label:<34} {b.started_at:%Y-%m-%d %H:%M:%S} → "
              f"{b.stopped_at:%H:%M:%S} UTC  {size(b.size_bytes):>9}  "
              f"{size(b.stored_bytes):>9} stored")
    if info.wal_first:
        print(f"WAL archive {info.wal_first} … {info.wal_last}")
    if info.backups:
        print(f"restorable to any time from {info.backups[0].stopped_at:%Y-%m-%d %H:%M:%S} UTC "
              "to the last archived commit")
    return 0 if info.status == "ok" else 1


def _restore(args) -> int:
    external = backups.external_config_from_env()
    repository = args.repo or backups.repository_from_env()
    if repository is None and not external:
        current = backups.config_dir_for(default_data_dir()) / backups.CONFIG_FILE_NAME
        if current.is_file():
            repository = backups.repository_of(PgBackRest(current))
    restored = restore_cluster(repository, args.into, args.to,
                               pgbackrest=PgBackRest(external) if external and not args.repo
                               else None)
    made = restored.backup
    point = (f"{restored.target.astimezone(dt.timezone.utc):%Y-%m-%d %H:%M:%S.%f} UTC"
             if restored.target else "the end of the archive")
    print(f"restored {made.kind} backup {made.label} (ended {made.stopped_at:%Y-%m-%d %H:%M:%S} "
          f"UTC) into {restored.cluster.data_dir} in {restored.restore_s:.1f} s, recovered to "
          f"{point} and promoted in {restored.recovery_s:.1f} s\n"
          f"DATABASE_URL={restored.cluster.dsn}\n"
          f"It runs until 'HDFPAY_DATA_DIR={restored.cluster.data_dir} hdfpay db stop'; check it "
          f"with 'HDFPAY_DATA_DIR={restored.cluster.data_dir} hdfpay check'")
    return 0
