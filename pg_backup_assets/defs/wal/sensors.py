from collections.abc import Sequence

import dagster as dg

from pg_backup_assets.core.walstatus import inspect_archive
from pg_backup_assets.defs.resources import PgBackupResource
from pg_backup_assets.defs.wal.assets import check_verdicts, observation_metadata, wal_archive_key

WAL_ARCHIVE_SENSOR = "wal_archive_sensor"


def build_wal_archive_sensor(clusters: Sequence[str], interval_s: int) -> dg.SensorDefinition:
    @dg.sensor(
        name=WAL_ARCHIVE_SENSOR,
        minimum_interval_seconds=interval_s,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Observes each cluster's WAL archive and pg_stat_archiver; reports gaps "
        "and stale archiving as wal_archive_contiguous / wal_archive_fresh.",
    )
    def wal_archive_sensor(
        context: dg.SensorEvaluationContext, pgbackup: PgBackupResource
    ) -> dg.SensorResult:
        config = pgbackup.config()
        repo = pgbackup.repository()
        events: list[dg.AssetObservation | dg.AssetCheckEvaluation] = []
        for cluster in clusters:
            status = inspect_archive(repo, config.cluster(cluster))
            key = wal_archive_key(cluster)
            events.append(dg.AssetObservation(asset_key=key, metadata=observation_metadata(status)))
            for name, passed, description, metadata in check_verdicts(status):
                events.append(
                    dg.AssetCheckEvaluation(
                        asset_key=key,
                        check_name=name,
                        passed=passed,
                        description=description,
                        metadata=metadata,
                    )
                )
                if not passed:
                    context.log.warning(f"{cluster}: {name} failed: {description}")
        return dg.SensorResult(asset_events=events)

    return wal_archive_sensor
