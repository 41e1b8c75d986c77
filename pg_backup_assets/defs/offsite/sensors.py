from collections.abc import Sequence

import dagster as dg
from dagster_aws.s3 import S3Resource

from pg_backup_assets.core.errors import PgBackupError
from pg_backup_assets.core.offsite.copy import wal_pending
from pg_backup_assets.core.wal.status import offsite_wal_freshness
from pg_backup_assets.defs.check_names import OFFSITE_WAL_FRESH
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
        description="Judges offsite_wal_fresh every tick (an unreachable store turns it red) "
        "and requests an offsite_wal run when archived WAL is not offsite yet.",
    )
    def offsite_wal_sensor(
        context: dg.SensorEvaluationContext, pgbackup: PgBackupResource, s3: S3Resource
    ) -> dg.SensorResult:
        config = pgbackup.config()
        repo, target = pgbackup.repository(), pgbackup.offsite(s3)
        requests, events = [], []
        for c in clusters:
            rpo = config.cluster(c.name).rpo_seconds
            try:
                backlog = wal_pending(repo, target, c.name)
            except PgBackupError as exc:
                passed, description = False, f"cannot tell what is offsite: {exc}"
                context.log.warning(f"{c.name}: {OFFSITE_WAL_FRESH} failed: {description}")
            else:
                verdict = offsite_wal_freshness(backlog.pending, backlog.lag_s, rpo)
                passed, description = verdict.passed, verdict.message
                if backlog.pending:
                    # Keyed on the newest waiting object: one run per batch of new WAL.
                    requests.append(
                        dg.RunRequest(
                            run_key=f"{c.name}:offsite-wal:{backlog.newest}",
                            job_name=offsite_wal_jobs[c.name].name,
                        )
                    )
            events.append(
                dg.AssetCheckEvaluation(
                    asset_key=c.key("offsite_wal"),
                    check_name=OFFSITE_WAL_FRESH,
                    passed=passed,
                    description=description,
                )
            )
        return dg.SensorResult(run_requests=requests, asset_events=events)

    return offsite_wal_sensor
