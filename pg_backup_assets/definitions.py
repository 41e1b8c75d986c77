"""Dagster entry point: ``dagster dev -w workspace.yaml`` with PGBACKUP_CONFIG set."""

import dagster as dg

from pg_backup_assets.core.config import load_config
from pg_backup_assets.defs.alerts.sensors import build_alert_sensor
from pg_backup_assets.defs.base.jobs import restore_to_point_in_time
from pg_backup_assets.defs.clusters import build_cluster_defs
from pg_backup_assets.defs.context import cluster_context
from pg_backup_assets.defs.offsite.sensors import build_offsite_wal_sensor
from pg_backup_assets.defs.partitions import (
    daily_partitions,
    tier_partitions,
    weekly_partitions,
)
from pg_backup_assets.defs.resources import PgBackupResource, s3_resource
from pg_backup_assets.defs.schedules import build_jobs
from pg_backup_assets.defs.wal.sensors import build_wal_archive_sensor


def build_defs(config_path: str | None = None) -> dg.Definitions:
    config = load_config(config_path)
    daily = daily_partitions(config)
    weekly = weekly_partitions(daily)
    tiers = tier_partitions(daily)
    contexts = [cluster_context(config, n, daily, weekly, tiers) for n in config.clusters]
    jobs = {c.name: build_jobs(c) for c in contexts}
    clusters = dg.Definitions.merge(
        *(build_cluster_defs(c, jobs[c.name], config) for c in contexts)
    )
    intervals = config.sensors
    sensors = [
        build_wal_archive_sensor(
            contexts,
            {name: j.base_backup for name, j in jobs.items()},
            intervals.wal_archive_interval_seconds,
        ),
        build_alert_sensor(intervals.alert_interval_seconds),
    ]
    if config.offsite is not None:
        sensors.append(
            build_offsite_wal_sensor(
                contexts,
                {name: j.offsite_wal for name, j in jobs.items()},
                intervals.offsite_wal_interval_seconds,
            )
        )
    return dg.Definitions.merge(
        clusters,
        dg.Definitions(
            jobs=[restore_to_point_in_time],
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
