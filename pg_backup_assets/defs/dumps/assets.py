import dagster as dg

from pg_backup_assets.core import dumps
from pg_backup_assets.defs.check_names import SIZE_ANOMALY
from pg_backup_assets.defs.partitions import daily
from pg_backup_assets.defs.resources import HEAVY_POOL, PgBackupResource


def build_logical_dump(cluster: str) -> dg.AssetsDefinition:
    key = dg.AssetKey([cluster, "logical_dump"])

    @dg.asset(
        key=key,
        group_name=cluster,
        partitions_def=daily,
        pool=HEAVY_POOL,
        kinds={"postgres"},
        check_specs=[dg.AssetCheckSpec(SIZE_ANOMALY, asset=key)],
    )
    def logical_dump(
        context: dg.AssetExecutionContext, pgbackup: PgBackupResource
    ) -> dg.MaterializeResult:
        """pg_dump -Fc of each database plus the globals, zstd-compressed into the repository."""
        config = pgbackup.config()
        repo = pgbackup.repository()
        history = [
            s.size_bytes
            for s in _latest_per_day(dumps.list_dump_sets(repo, cluster))
            if s.date < context.partition_key
        ]
        dump_set = dumps.take_dump_set(
            repo, config.cluster(cluster), context.partition_key, log=context.log.info
        )
        size = dumps.size_anomaly(dump_set.size_bytes, history)
        metadata: dict[str, object] = {
            "size_bytes": dump_set.size_bytes,
            "raw_bytes": dump_set.raw_bytes,
            "duration_s": round(dump_set.duration_s, 3),
            "throughput_mib_s": round(
                dump_set.raw_bytes / 2**20 / max(dump_set.duration_s, 1e-3), 2
            ),
            "databases": len(dump_set.objects) - 1,
            "server_version": dump_set.server_version,
            "set_id": dump_set.set_id,
            "catalog_key": dump_set.catalog_key,
            "extensions": dg.MetadataValue.json(
                {o.database: o.extensions for o in dump_set.objects if o.database != dumps.GLOBALS}
            ),
        }
        for o in dump_set.objects:
            metadata[f"size_bytes.{o.database}"] = o.record.stored_bytes
        return dg.MaterializeResult(
            metadata=metadata,
            check_results=[
                dg.AssetCheckResult(
                    check_name=SIZE_ANOMALY,
                    passed=size.ok,
                    severity=dg.AssetCheckSeverity.WARN,
                    description=size.message,
                    metadata={
                        "size_bytes": dump_set.size_bytes,
                        "median_bytes": size.median_bytes or 0,
                    },
                )
            ],
        )

    return logical_dump


def _latest_per_day(sets: list[dumps.DumpSet]) -> list[dumps.DumpSet]:
    by_day: dict[str, dumps.DumpSet] = {}
    for s in sets:  # oldest first, so the last one of a day wins
        by_day[s.date] = s
    return [by_day[d] for d in sorted(by_day)]
