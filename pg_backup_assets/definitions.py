"""Dagster entry point: ``dagster dev -w workspace.yaml`` with PGBACKUP_CONFIG set."""

import dagster as dg

from pg_backup_assets.core.config import load_config
from pg_backup_assets.defs.clusters import build_cluster_defs
from pg_backup_assets.defs.resources import PgBackupResource
from pg_backup_assets.defs.wal.sensors import build_wal_archive_sensor


def build_defs(config_path: str | None = None) -> dg.Definitions:
    config = load_config(config_path)
    return dg.Definitions.merge(
        *(build_cluster_defs(name) for name in config.clusters),
        dg.Definitions(
            sensors=[
                build_wal_archive_sensor(
                    list(config.clusters), config.sensors.wal_archive_interval_seconds
                )
            ],
            resources={"pgbackup": PgBackupResource(config_path=str(config.source))},
        ),
    )


@dg.definitions
def defs() -> dg.Definitions:
    return build_defs()
