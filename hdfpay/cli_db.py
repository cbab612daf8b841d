"""`hdfpay db migrate|start|stop|status [--ha]`: the schema, the embedded cluster, and the
high-availability cluster on loopback (etcd and two Patroni-managed nodes); the backup actions
are in cli_backup.py."""

from __future__ import annotations

import uvloop

from hdfpay import cli_backup
from hdfpay.cli_support import UsageError, cli_database
from ledger.database import connection
from ledger.embedded import EmbeddedPostgres, default_data_dir
from ledger.migrate import migrate


def cmd_db(args, settings) -> int:
    if args.action in cli_backup.ACTIONS:
        return cli_backup.cmd_backup(args, settings)
    if args.action == "migrate":
        async def main() -> None:
            async with connection(dsn) as conn:
                applied = await migrate(conn)
            print(f"applied {', '.join(applied)}" if applied else "database already up to date")
        with cli_database(settings) as dsn:
            return uvloop.run(main()) or 0
    if args.ha:
        return _db_ha(args.action)
    if settings.database_url:
        raise UsageError("DATABASE_URL is set: that server is not managed by hdfpay "
                         f"('hdfpay db {args.action}' manages only the embedded cluster)")
    cluster = EmbeddedPostgres(default_data_dir())
    if args.action == "start":
        dsn = cluster.start()
        print(f"embedded PostgreSQL running in {cluster.data_dir}\nDATABASE_URL={dsn}")
    elif args.action == "stop":
        print("stopped" if cluster.stop() else f"not running ({cluster.data_dir})")
    else:
        state = "running" if cluster.is_running() else "stopped"
        print(f"embedded PostgreSQL in {cluster.data_dir}: {state}")
    return 0


def _db_ha(action: str) -> int:
    """`db start|stop|status --ha`: etcd and two Patroni-managed nodes on loopback."""
    from ledger.ha_cluster import HaCluster, default_ha_dir
    cluster = HaCluster(default_ha_dir())
    if action == "start":
        dsn = cluster.start()
        leader, standby = cluster.wait_ready()
        print(f"etcd and two PostgreSQL nodes in {cluster.workdir}: {leader} primary, {standby} "
              f"synchronous standby\nDATABASE_URL={dsn}")
    elif action == "stop":
        print("stopped" if cluster.stop() else f"not running ({cluster.workdir})")
    elif cluster.is_running():
        for member in cluster.members():
            print(f"{member['name']}  {member['role']:<13} {member['state']:<9} "
                  f"port {member['port']}  timeline {member.get('timeline', '?')}")
    else:
        print(f"high-availability cluster in {cluster.workdir}: stopped")
    return 0
