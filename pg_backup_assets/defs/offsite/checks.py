import dagster as dg
from dagster_aws.s3 import S3Resource

from pg_backup_assets.core.offsite.copy import day_set, verify_copies
from pg_backup_assets.core.offsite.three_two_one import three_two_one as rule_of_three
from pg_backup_assets.defs.check_names import OFFSITE_COPY_MATCHES, THREE_TWO_ONE
from pg_backup_assets.defs.context import ClusterContext
from pg_backup_assets.defs.partitions import daily_check
from pg_backup_assets.defs.pinned import pinned_catalog_key
from pg_backup_assets.defs.resources import PgBackupResource


def build_offsite_checks(c: ClusterContext, what: str) -> list[dg.AssetChecksDefinition]:
    """``offsite_copy_matches`` and ``three_two_one`` for the offsite copy of ``what``
    ("dump" or "base_backup")."""
    key, cluster = c.key(f"offsite_{what}"), c.name

    def offsite_copy_matches(
        context: dg.AssetCheckExecutionContext, pgbackup: PgBackupResource, s3: S3Resource
    ) -> dg.AssetCheckResult:
        """Every offsite object of the copied set re-read: its sha256 equals the local one."""
        pinned = pinned_catalog_key(context, key)
        objects, _ = day_set(pgbackup.repository(), cluster, what, context.partition_key, pinned)
        problems = verify_copies(pgbackup.offsite(s3), objects)
        return dg.AssetCheckResult(
            passed=not problems,
            description="; ".join(problems[:10]) or f"{len(objects)} objects match",
            metadata={"objects_checked": len(objects), "mismatches": len(problems)},
        )

    def three_two_one(
        context: dg.AssetCheckExecutionContext, pgbackup: PgBackupResource, s3: S3Resource
    ) -> dg.AssetCheckResult:
        """3 copies, 2 kinds of media, 1 offsite: judged honestly from where things are."""
        pinned = pinned_catalog_key(context, key)
        objects, local_ok = day_set(
            pgbackup.repository(), cluster, what, context.partition_key, pinned
        )
        offsite_ok = not verify_copies(pgbackup.offsite(s3), objects)
        verdict = rule_of_three(pgbackup.config(), local_ok, offsite_ok)
        return dg.AssetCheckResult(
            passed=verdict.passed,
            description=verdict.message,
            metadata={"copies": verdict.copies, "media": verdict.media, "offsite": verdict.offsite},
        )

    return [
        daily_check(
            offsite_copy_matches,
            c.daily,
            asset=key,
            name=OFFSITE_COPY_MATCHES,
            blocking=True,
            pool=c.pool,
        ),
        daily_check(three_two_one, c.daily, asset=key, name=THREE_TWO_ONE, pool=c.pool),
    ]
