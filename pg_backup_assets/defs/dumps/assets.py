import dagster as dg

from pg_backup_assets.core.anomalies import daily_history
from pg_backup_assets.core.catalog import GLOBALS, list_dump_sets
from pg_backup_assets.core.dumps.dump import take_dump_set
from pg_backup_assets.core.progress import throughput_mib_s
from pg_backup_assets.defs.anomalies import size_anomaly_result
from pg_backup_assets.defs.check_names import SIZE_ANOMALY
from pg_backup_assets.defs.context import REPOSITORY_KIND, ClusterContext
from pg_backup_assets.defs.pinned import CATALOG_KEY
from pg_backup_assets.defs.resources import PgBackupResource


def build_logical_dump(c: ClusterContext) -> dg.AssetsDefinition:
    key = c.key("logical_dump")

    @dg.asset(
        key=key,
        **c.labels(),
        partitions_def=c.daily,
        pool=c.pool,
        kinds={"postgres", REPOSITORY_KIND},
        freshness_policy=c.daily_freshness,
        check_specs=[dg.AssetCheckSpec(SIZE_ANOMALY, asset=key)],
    )
    def logical_dump(
        context: dg.AssetExecutionContext, pgbackup: PgBackupResource
    ) -> dg.MaterializeResult:
        """pg_dump -Fc of each database plus the globals, zstd-compressed into the repository."""
        config = pgbackup.config()
        repo = pgbackup.repository()
        history = daily_history(
            [(s.date, s.size_bytes) for s in list_dump_sets(repo, c.name)],
            before=context.partition_key,
        )
        dump_set = take_dump_set(
            repo,
            config.cluster(c.name),
            context.partition_key,
            log=context.log.info,
            lock_wait_s=config.timeouts.lock_wait_seconds,
            run_lock_wait_s=config.timeouts.run_seconds,
        )
        metadata: dict[str, object] = {
            "size_bytes": dump_set.size_bytes,
            "raw_bytes": dump_set.raw_bytes,
            "duration_s": round(dump_set.duration_s, 3),
            "throughput_mib_s": throughput_mib_s(dump_set.raw_bytes, dump_set.duration_s),
            "databases": len(dump_set.objects) - 1,
            "server_version": dump_set.server_version,
            "set_id": dump_set.set_id,
            CATALOG_KEY: dump_set.catalog_key,
            "extensions": dg.MetadataValue.json(
                {o.database: o.extensions for o in dump_set.objects if o.database != GLOBALS}
            ),
        }
        for o in dump_set.objects:
            metadata[f"size_bytes.{o.database}"] = o.record.stored_bytes
        return dg.MaterializeResult(
            metadata=metadata,
            check_results=[size_anomaly_result(dump_set.size_bytes, history)],
        )

    return logical_dump
