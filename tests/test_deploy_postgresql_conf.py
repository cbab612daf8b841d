"""deploy/postgresql/hdfpay.conf as PostgreSQL itself reads it (`postgres -C`, the real server
binary on a real data directory): every setting known and valid, and the ones the design rests
on as meant. A typo there would otherwise surface only on the production server's restart."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

PRODUCTION_CONF = Path(__file__).parent.parent / "deploy" / "postgresql" / "hdfpay.conf"


def _setting(pg_cluster, conf: Path, name: str) -> subprocess.CompletedProcess:
    """`name` as the server would run with the cluster's own file plus `conf` (the cluster is
    not restarted: -C reads the files and exits)."""
    user = pg_cluster.run_as
    ids = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []} if user else {}
    return subprocess.run([str(pg_cluster.tool("postgres")), "-D", str(pg_cluster.data_dir),
                           f"--config-file={conf}", "-C", name],
                          capture_output=True, text=True, timeout=30, cwd="/", **ids)


@pytest.fixture
def with_production(pg_cluster):
    """A file the server's user can read (the checkout may be where it cannot): the cluster's
    settings, then the production file's text, then `extra`."""
    def write(extra: str = "") -> Path:
        conf = pg_cluster.data_dir.parent / "production-check.conf"
        conf.write_text(f"include '{pg_cluster.data_dir / 'postgresql.conf'}'\n"
                        f"{PRODUCTION_CONF.read_text()}\n{extra}")
        conf.chmod(0o644)
        return conf
    yield write
    (pg_cluster.data_dir.parent / "production-check.conf").unlink(missing_ok=True)


@pytest.mark.parametrize("name, value", [
    ("fsync", "on"), ("synchronous_commit", "on"), ("full_page_writes", "on"),
    ("min_wal_size", "1024"),            # MB: WAL segments kept ready (ledger/wal_reserve.py)
    ("max_wal_size", "4096"),
    ("idle_in_transaction_session_timeout", "30000"),
])
def test_the_production_settings_are_read_as_meant(pg_cluster, with_production, name, value):
    answer = _setting(pg_cluster, with_production(), name)
    assert (answer.returncode, answer.stdout.strip()) == (0, value), answer.stderr


def test_a_mistake_in_the_file_is_refused(pg_cluster, with_production):
    """The check can fail: an unknown setting makes the server refuse the whole file."""
    answer = _setting(pg_cluster, with_production("min_wal_sise = '1GB'\n"), "min_wal_size")
    assert answer.returncode != 0 and "min_wal_sise" in answer.stderr
