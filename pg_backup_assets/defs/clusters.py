"""The asset factory: one asset group per configured cluster."""

import dagster as dg

from pg_backup_assets.defs.base.assets import build_base_backup
from pg_backup_assets.defs.base.checks import build_base_backup_verified
from pg_backup_assets.defs.dumps.assets import build_logical_dump
from pg_backup_assets.defs.dumps.checks import build_dump_restorable
from pg_backup_assets.defs.offsite.assets import (
    build_offsite_base_backup,
    build_offsite_dump,
    build_offsite_wal,
)
from pg_backup_assets.defs.offsite.checks import build_offsite_checks
from pg_backup_assets.defs.wal.assets import build_wal_archive
from pg_backup_assets.defs.wal.checks import build_wal_archive_checks


def build_cluster_defs(cluster: str, offsite: bool) -> dg.Definitions:
    assets = [build_logical_dump(cluster), build_base_backup(cluster), build_wal_archive(cluster)]
    checks = [
        build_dump_restorable(cluster),
        build_base_backup_verified(cluster),
        build_wal_archive_checks(cluster),
    ]
    if offsite:
        assets += [
            build_offsite_dump(cluster),
            build_offsite_base_backup(cluster),
            build_offsite_wal(cluster),
        ]
        checks += [
            *build_offsite_checks(cluster, "dump"),
            *build_offsite_checks(cluster, "base_backup"),
        ]
    return dg.Definitions(assets=assets, asset_checks=checks)
