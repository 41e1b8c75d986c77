from collections.abc import Sequence

import dagster as dg
from dagster_aws.s3 import S3Resource

from pg_backup_assets.core.offsite.copy import wal_pending
from pg_backup_assets.defs.context import ClusterContext
from pg_backup_assets.defs.jobs import AssetJob
from pg_backup_assets.defs.resources import PgBackupResource

OFFSITE_WAL_SENSOR = "offsite_wal_sensor"


def build_offsite_wal_sensor(
    clusters: Sequence[ClusterContext],
    offsite_wal_jobs: dict[str, AssetJob],
    interval_s: int,
) -> dg.SensorDefinition:
    @dg.sensor(
        name=OFFSITE_WAL_SENSOR,
        minimum_interval_seconds=interval_s,
        default_status=dg.DefaultSensorStatus.RUNNING,
        jobs=list(offsite_wal_jobs.values()),
        description="Requests an offsite_wal run when archived WAL is not offsite yet.",
    )
    def offsite_wal_sensor(
        context: dg.SensorEvaluationContext, pgbackup: PgBackupResource, s3: S3Resource
    ) -> dg.SensorResult:
        repo, target = pgbackup.repository(), pgbackup.offsite(s3)
        requests = []
        for c in clusters:
            pending, newest = wal_pending(repo, target, c.name)
            if pending:
                # Keyed on the newest waiting object: one run per batch of new WAL.
                requests.append(
                    dg.RunRequest(
                        run_key=f"{c.name}:offsite-wal:{newest}",
                        job_name=offsite_wal_jobs[c.name].name,
                    )
                )
        if not requests:
            return dg.SensorResult(skip_reason="all archived WAL is offsite")
        return dg.SensorResult(run_requests=requests)

    return offsite_wal_sensor
