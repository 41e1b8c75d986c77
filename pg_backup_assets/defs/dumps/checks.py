import dagster as dg

from pg_backup_assets.core.catalog import find_dump_set
from pg_backup_assets.core.dumps.dump import check_restorable
from pg_backup_assets.defs.check_names import DUMP_RESTORABLE
from pg_backup_assets.defs.context import ClusterContext
from pg_backup_assets.defs.partitions import daily_check
from pg_backup_assets.defs.pinned import pinned_catalog_key
from pg_backup_assets.defs.resources import PgBackupResource


def build_dump_restorable(c: ClusterContext) -> dg.AssetChecksDefinition:
    def dump_restorable(
        context: dg.AssetCheckExecutionContext, pgbackup: PgBackupResource
    ) -> dg.AssetCheckResult:
        """Each archive of the day matches its sha256, decodes, and pg_restore --list reads it."""
        repo = pgbackup.repository()
        pinned = pinned_catalog_key(context, c.key("logical_dump"))
        dump_set = find_dump_set(repo, c.name, context.partition_key, pinned)
        verdicts = check_restorable(repo, dump_set)
        failed = [v for v in verdicts if not v.ok]
        return dg.AssetCheckResult(
            passed=not failed,
            description="; ".join(v.message for v in (failed or verdicts)),
            metadata={
                "set_id": dump_set.set_id,
                "objects_checked": len(verdicts),
                "objects_failed": len(failed),
                "toc_entries": sum(v.toc_entries for v in verdicts),
            },
        )

    return daily_check(
        dump_restorable,
        c.daily,
        asset=c.key("logical_dump"),
        name=DUMP_RESTORABLE,
        blocking=True,
        pool=c.pool,
    )
