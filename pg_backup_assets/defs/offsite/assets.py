import dagster as dg
from dagster_aws.s3 import S3Resource

from pg_backup_assets.core.catalog import find_base_backup, find_dump_set
from pg_backup_assets.core.offsite.copy import CopyReport, copy_set, ship_wal
from pg_backup_assets.core.progress import throughput_mib_s
from pg_backup_assets.core.wal.status import offsite_wal_freshness
from pg_backup_assets.defs.check_names import OFFSITE_WAL_FRESH
from pg_backup_assets.defs.context import ClusterContext
from pg_backup_assets.defs.pinned import CATALOG_KEY, pinned_catalog_key
from pg_backup_assets.defs.resources import PgBackupResource


def _copy_metadata(
    report: CopyReport, store: str, catalog_key: str | None = None
) -> dict[str, object]:
    pinned = {CATALOG_KEY: catalog_key} if catalog_key else {}
    return {
        **pinned,
        "objects": report.objects,
        "size_bytes": report.bytes,
        "raw_bytes": report.raw_bytes,
        "duration_s": round(report.duration_s, 3),
        "throughput_mib_s": throughput_mib_s(report.raw_bytes, report.duration_s),
        "offsite_store": store,
    }


def _copy_failed(report: CopyReport) -> None:
    if not report.ok:
        raise dg.Failure(
            description="offsite copy does not match: " + "; ".join(report.mismatches[:10])
        )


def build_offsite_dump(c: ClusterContext) -> dg.AssetsDefinition:
    @dg.asset(
        key=c.key("offsite_dump"),
        deps=[c.key("logical_dump")],
        **c.labels(),
        partitions_def=c.daily,
        pool=c.pool,
        kinds={c.offsite_kind},
        freshness_policy=c.daily_freshness,
    )
    def offsite_dump(
        context: dg.AssetExecutionContext, pgbackup: PgBackupResource, s3: S3Resource
    ) -> dg.MaterializeResult:
        """The day's logical dumps copied to the offsite store and re-read there."""
        repo, target = pgbackup.repository(), pgbackup.offsite(s3)
        pinned = pinned_catalog_key(context, c.key("logical_dump"))
        dump_set = find_dump_set(repo, c.name, context.partition_key, pinned)
        report = copy_set(repo, target, dump_set.records, dump_set.catalog_key, dump_set.raw_bytes)
        _copy_failed(report)
        return dg.MaterializeResult(
            metadata=_copy_metadata(report, target.describe(), dump_set.catalog_key)
        )

    return offsite_dump


def build_offsite_base_backup(c: ClusterContext) -> dg.AssetsDefinition:
    @dg.asset(
        key=c.key("offsite_base_backup"),
        deps=[c.key("base_backup")],
        **c.labels(),
        partitions_def=c.daily,
        pool=c.pool,
        kinds={c.offsite_kind},
        freshness_policy=c.daily_freshness,
    )
    def offsite_base_backup(
        context: dg.AssetExecutionContext, pgbackup: PgBackupResource, s3: S3Resource
    ) -> dg.MaterializeResult:
        """The day's base backup copied to the offsite store and re-read there."""
        repo, target = pgbackup.repository(), pgbackup.offsite(s3)
        pinned = pinned_catalog_key(context, c.key("base_backup"))
        backup = find_base_backup(repo, c.name, context.partition_key, pinned)
        report = copy_set(repo, target, backup.records, backup.catalog_key, backup.raw_bytes)
        _copy_failed(report)
        return dg.MaterializeResult(
            metadata=_copy_metadata(report, target.describe(), backup.catalog_key)
        )

    return offsite_base_backup


def build_offsite_wal(c: ClusterContext) -> dg.AssetsDefinition:
    key = c.key("offsite_wal")

    # No freshness policy: a quiet server archives no WAL, so there is nothing to ship;
    # offsite_wal_fresh judges what does wait.
    @dg.asset(
        key=key,
        deps=[c.key("wal_archive")],
        **c.labels(),
        # Not in the host's pool: shipping WAL must not wait behind a base backup (RPO).
        kinds={c.offsite_kind},
        check_specs=[dg.AssetCheckSpec(OFFSITE_WAL_FRESH, asset=key)],
    )
    def offsite_wal(pgbackup: PgBackupResource, s3: S3Resource) -> dg.MaterializeResult:
        """Newly archived WAL shipped offsite in a batch, each object re-read and compared."""
        config = pgbackup.config()
        repo, target = pgbackup.repository(), pgbackup.offsite(s3)
        report = ship_wal(repo, target, c.name)
        _copy_failed(report)
        rpo = config.cluster(c.name).rpo_seconds
        fresh = offsite_wal_freshness(report.pending, report.lag_s, rpo, report.objects)
        return dg.MaterializeResult(
            metadata={
                **_copy_metadata(report, target.describe()),
                "pending_objects": report.pending,
                "lag_s": round(report.lag_s, 1),
            },
            check_results=[
                dg.AssetCheckResult(
                    check_name=OFFSITE_WAL_FRESH,
                    passed=fresh.passed,
                    description=fresh.message,
                    metadata={"lag_s": round(report.lag_s, 1), "pending_objects": report.pending},
                )
            ],
        )

    return offsite_wal
