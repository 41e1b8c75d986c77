"""For real incidents, from the UI: the Launchpad's run config picks the cluster, the
target, where to restore from and to; the same engine as ``pgbackup restore``."""

from pathlib import Path

import dagster as dg

from pg_backup_assets.core.base.restore import Target, restore
from pg_backup_assets.core.errors import PgBackupError
from pg_backup_assets.core.offsite.store import offsite_repository
from pg_backup_assets.core.postgres.client import redact_dsn
from pg_backup_assets.defs.resources import HEAVY_POOL, PgBackupResource

RESTORE_JOB = "restore_to_point_in_time"


class PointInTimeRestore(dg.Config):
    """Exactly one target, or none for the end of the archive. Times are ISO 8601 with a
    time zone (the Launchpad takes text, not datetimes)."""

    cluster: str
    destination: str
    target_time: str = ""
    target_lsn: str = ""
    target_xid: str = ""
    target_name: str = ""
    source: str = "offsite"  # or "local"
    start: bool = True
    archive_mode: str = "off"  # "preserve" for a copy that becomes the new primary
    force: bool = False


@dg.op(name="restore", pool=HEAVY_POOL)
def restore_op(
    context: dg.OpExecutionContext, config: PointInTimeRestore, pgbackup: PgBackupResource
) -> dg.Output[str]:
    """Restores a base backup and recovers it to the target; logs every phase."""
    settings = pgbackup.config()
    cluster = settings.cluster(config.cluster)
    chosen = [
        (kind, value)
        for kind in ("time", "lsn", "xid", "name")
        if (value := getattr(config, f"target_{kind}"))
    ]
    if len(chosen) > 1:
        raise dg.Failure(f"give at most one target, not {', '.join(k for k, _ in chosen)}")
    if config.source not in ("local", "offsite"):
        raise dg.Failure(f"source must be local or offsite, not {config.source!r}")
    try:
        target = Target.parse(*chosen[0]) if chosen else Target("latest")
        repo = offsite_repository(settings) if config.source == "offsite" else pgbackup.repository()
        result = restore(
            repo,
            cluster,
            settings.source,
            Path(config.destination),
            target,
            start=config.start,
            force=config.force,
            log=context.log.info,
            source=config.source,
            archive_mode=config.archive_mode,
            s3_env=bool(settings.offsite and settings.offsite.s3),
        )
    except PgBackupError as exc:
        raise dg.Failure(description=str(exc)) from None
    metadata: dict[str, object] = {
        "backup": result.backup.label,
        "target": target.describe(),
        "fetch_s": round(result.fetch_extract_s, 3),
        "data_dir": str(result.data_dir),
    }
    if result.server is not None:
        metadata.update(
            replay_s=round(result.replay_s or 0, 3),
            rto_s=round(result.rto_s, 3),
            server=redact_dsn(result.dsn()),
            stop_with=result.server.stop_command(),
        )
        if result.reached_lsn:
            metadata["reached_lsn"] = result.reached_lsn
        context.log.info(f"the restored server runs: {redact_dsn(result.dsn())}")
    return dg.Output(str(result.data_dir), metadata=metadata)


@dg.job(name=RESTORE_JOB, tags={"pgbackup/kind": "restore"})
def restore_to_point_in_time() -> None:
    """Point-in-time restore for an incident, launched from the Launchpad with run config."""
    restore_op()
