"""The asset factory: one asset group per configured cluster."""

import dagster as dg

from pg_backup_assets.defs.base.assets import build_base_backup
from pg_backup_assets.defs.base.checks import build_base_backup_verified
from pg_backup_assets.defs.dumps.assets import build_logical_dump
from pg_backup_assets.defs.dumps.checks import build_dump_restorable
from pg_backup_assets.defs.wal.assets import build_wal_archive
from pg_backup_assets.defs.wal.checks import build_wal_archive_checks


def build_cluster_defs(cluster: str) -> dg.Definitions:
    return dg.Definitions(
        assets=[
            build_logical_dump(cluster),
            build_base_backup(cluster),
            build_wal_archive(cluster),
        ],
        asset_checks=[
            build_dump_restorable(cluster),
            build_base_backup_verified(cluster),
            build_wal_archive_checks(cluster),
        ],
    )
