import dagster as dg

from pg_backup_assets.core.anomalies import daily_history
from pg_backup_assets.core.base.backup import take_base_backup
from pg_backup_assets.core.catalog import list_base_backups
from pg_backup_assets.core.progress import throughput_mib_s
from pg_backup_assets.core.wal.names import format_lsn
from pg_backup_assets.defs.anomalies import size_anomaly_result
from pg_backup_assets.defs.check_names import SIZE_ANOMALY
from pg_backup_assets.defs.context import REPOSITORY_KIND, ClusterContext
from pg_backup_assets.defs.pinned import CATALOG_KEY
from pg_backup_assets.defs.resources import PgBackupResource


def build_base_backup(c: ClusterContext) -> dg.AssetsDefinition:
    key = c.key("base_backup")

    @dg.asset(
        key=key,
        **c.labels(),
        partitions_def=c.daily,
        pool=c.pool,
        kinds={"postgres", REPOSITORY_KIND},
        freshness_policy=c.daily_freshness,
        check_specs=[dg.AssetCheckSpec(SIZE_ANOMALY, asset=key)],
    )
    def base_backup(
        context: dg.AssetExecutionContext, pgbackup: PgBackupResource
    ) -> dg.MaterializeResult:
        """pg_basebackup (tar, fast checkpoint) in parts + backup_manifest, catalogued."""
        config, repo = pgbackup.config(), pgbackup.repository()
        history = daily_history(
            [(b.date, b.size_bytes) for b in list_base_backups(repo, c.name)],
            before=context.partition_key,
        )
        backup = take_base_backup(
            repo,
            config.cluster(c.name),
            context.partition_key,
            log=context.log.info,
            archive_wait_s=config.timeouts.archive_wait_seconds,
            lock_wait_s=config.timeouts.run_seconds,
            layout=config.base_backup,
        )
        return dg.MaterializeResult(
            metadata={
                "size_bytes": backup.size_bytes,
                "duration_s": round(backup.duration_s, 3),
                "raw_bytes": backup.raw_bytes,
                "throughput_mib_s": throughput_mib_s(backup.raw_bytes, backup.duration_s),
                "parts": len(backup.parts) or 1,
                "label": backup.label,
                "start_lsn": format_lsn(backup.start_lsn),
                "stop_lsn": format_lsn(backup.stop_lsn),
                "timeline": backup.timeline,
                "pg_version": backup.pg_version,
                "system_identifier": backup.system_identifier,
                "architecture": backup.architecture,
                "data_checksums": backup.data_checksums,
                CATALOG_KEY: backup.catalog_key,
            },
            check_results=[size_anomaly_result(backup.size_bytes, history)],
        )

    return base_backup
