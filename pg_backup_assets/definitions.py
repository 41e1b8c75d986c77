"""Dagster entry point: ``dagster dev -w workspace.yaml`` with PGBACKUP_CONFIG set."""

import dagster as dg

from pg_backup_assets.core.config import load_config
from pg_backup_assets.defs.clusters import build_cluster_defs
from pg_backup_assets.defs.offsite.sensors import build_offsite_wal_sensor
from pg_backup_assets.defs.resources import PgBackupResource, s3_resource
from pg_backup_assets.defs.wal.sensors import build_wal_archive_sensor


def build_defs(config_path: str | None = None) -> dg.Definitions:
    config = load_config(config_path)
    clusters = list(config.clusters)
    has_offsite = config.offsite is not None
    sensors = [build_wal_archive_sensor(clusters, config.sensors.wal_archive_interval_seconds)]
    if has_offsite:
        sensors.append(
            build_offsite_wal_sensor(clusters, config.sensors.offsite_wal_interval_seconds)
        )
    return dg.Definitions.merge(
        *(build_cluster_defs(name, has_offsite) for name in clusters),
        dg.Definitions(
            sensors=sensors,
            resources={
                "pgbackup": PgBackupResource(config_path=str(config.source)),
                "s3": s3_resource(config),
            },
        ),
    )


@dg.definitions
def defs() -> dg.Definitions:
    return build_defs()
