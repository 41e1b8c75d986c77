"""Named restore points: ``pg_create_restore_point`` on the server, recorded in the catalog."""

from __future__ import annotations

import re
import time

from pg_backup_assets.core.catalog import (
    RestorePoint,
    record_restore_point,
    restore_point_key,
)
from pg_backup_assets.core.config import ClusterConfig
from pg_backup_assets.core.errors import PgBackupError
from pg_backup_assets.core.postgres.client import connect
from pg_backup_assets.core.storage.repository import Repository
from pg_backup_assets.core.wal.names import parse_lsn


def create_restore_point(repo: Repository, cluster: ClusterConfig, name: str) -> RestorePoint:
    """``pg_create_restore_point(name)``, recorded in the catalog for restores to target."""
    if not re.match(r"^[A-Za-z0-9_.:-]{1,63}$", name):
        raise PgBackupError(
            f"invalid restore point name {name!r}: use up to 63 letters, digits, '_', '.', ':', '-'"
        )
    if repo.storage.exists(restore_point_key(cluster.name, name)):
        raise PgBackupError(f"restore point {name!r} already exists for cluster {cluster.name}")
    with connect(cluster.dsn, autocommit=True) as conn:
        lsn = conn.execute("SELECT pg_create_restore_point(%s)", (name,)).fetchone()[0]
        tli = conn.execute("SELECT timeline_id FROM pg_control_checkpoint()").fetchone()[0]
        # Make the record durable in the archive promptly.
        conn.execute("SELECT pg_switch_wal()")
    point = RestorePoint(name, parse_lsn(str(lsn)), time.time(), int(tli))
    record_restore_point(repo, cluster.name, point)
    return point
