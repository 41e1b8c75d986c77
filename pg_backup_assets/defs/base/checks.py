import dagster as dg

from pg_backup_assets.core.base.verify import verify_base_backup
from pg_backup_assets.core.catalog import find_base_backup
from pg_backup_assets.defs.check_names import BASE_BACKUP_VERIFIED
from pg_backup_assets.defs.context import ClusterContext
from pg_backup_assets.defs.partitions import daily_check
from pg_backup_assets.defs.pinned import pinned_catalog_key
from pg_backup_assets.defs.resources import PgBackupResource


def build_base_backup_verified(c: ClusterContext) -> dg.AssetChecksDefinition:
    def base_backup_verified(
        context: dg.AssetCheckExecutionContext, pgbackup: PgBackupResource
    ) -> dg.AssetCheckResult:
        """sha256 of every stored object, then pg_verifybackup on an extracted copy with its WAL."""
        repo = pgbackup.repository()
        pinned = pinned_catalog_key(context, c.key("base_backup"))
        backup = find_base_backup(repo, c.name, context.partition_key, pinned)
        verdict = verify_base_backup(repo, c.name, backup, log=context.log.info)
        return dg.AssetCheckResult(
            passed=verdict.ok,
            description=verdict.message,
            metadata={"label": backup.label, "wal_segments_checked": verdict.wal_segments},
        )

    return daily_check(
        base_backup_verified,
        c.daily,
        asset=c.key("base_backup"),
        name=BASE_BACKUP_VERIFIED,
        blocking=True,
        pool=c.pool,
    )
