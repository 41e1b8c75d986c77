from collections.abc import Sequence

import dagster as dg

from pg_backup_assets.core.wal.status import inspect_archive
from pg_backup_assets.defs.context import ClusterContext
from pg_backup_assets.defs.jobs import AssetJob
from pg_backup_assets.defs.resources import PgBackupResource
from pg_backup_assets.defs.wal.assets import check_verdicts, observation_metadata

WAL_ARCHIVE_SENSOR = "wal_archive_sensor"


def build_wal_archive_sensor(
    clusters: Sequence[ClusterContext],
    base_backup_jobs: dict[str, AssetJob],
    interval_s: int,
) -> dg.SensorDefinition:
    """``base_backup_jobs``: each cluster's base backup job, run after a gap in its WAL."""

    @dg.sensor(
        name=WAL_ARCHIVE_SENSOR,
        minimum_interval_seconds=interval_s,
        default_status=dg.DefaultSensorStatus.RUNNING,
        jobs=list(base_backup_jobs.values()),
        description="Observes each cluster's WAL archive and pg_stat_archiver; reports gaps "
        "and stale archiving as wal_archive_contiguous / wal_archive_fresh, and takes a "
        "fresh base backup after a gap.",
    )
    def wal_archive_sensor(
        context: dg.SensorEvaluationContext, pgbackup: PgBackupResource
    ) -> dg.SensorResult:
        config = pgbackup.config()
        repo = pgbackup.repository()
        events: list[dg.AssetObservation | dg.AssetCheckEvaluation] = []
        requests: list[dg.RunRequest] = []
        for c in clusters:
            status = inspect_archive(repo, config.cluster(c.name), daily=config.retention.daily)
            if status.gaps and status.gaps.missing:
                # A gap cuts point-in-time recovery across it: a fresh base backup makes the
                # time after the gap restorable again. The run key makes it happen once per
                # gap; the backup belongs to the day it is taken.
                first_missing = status.gaps.missing[0][0]
                requests.append(
                    dg.RunRequest(
                        run_key=f"{c.name}:wal-gap:{first_missing}",
                        job_name=base_backup_jobs[c.name].name,
                        partition_key=c.daily.get_last_partition_key(),
                        tags={"pgbackup/reason": f"WAL gap at {first_missing}"},
                    )
                )
            key = c.key("wal_archive")
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
                    context.log.warning(f"{c.name}: {name} failed: {description}")
        return dg.SensorResult(asset_events=events, run_requests=requests)

    return wal_archive_sensor
