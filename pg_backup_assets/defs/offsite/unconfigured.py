"""``three_two_one`` where no offsite store is configured at all: on the local backups
themselves, and red, since that is exactly when the rule is broken."""

import dagster as dg

from pg_backup_assets.core.catalog import find_base_backup, find_dump_set
from pg_backup_assets.core.offsite.three_two_one import three_two_one as rule_of_three
from pg_backup_assets.defs.check_names import THREE_TWO_ONE
from pg_backup_assets.defs.context import ClusterContext
from pg_backup_assets.defs.partitions import daily_check
from pg_backup_assets.defs.resources import PgBackupResource


def build_three_two_one_without_offsite(c: ClusterContext, what: str) -> dg.AssetChecksDefinition:
    """``three_two_one`` on the local backup of ``what`` ("dump" or "base_backup")."""
    asset, find = ("logical_dump", find_dump_set) if what == "dump" else (what, find_base_backup)

    def three_two_one(
        context: dg.AssetCheckExecutionContext, pgbackup: PgBackupResource
    ) -> dg.AssetCheckResult:
        """3 copies, 2 kinds of media, 1 offsite: red while no offsite store is configured."""
        # The day's set exists (this runs after it was taken); whether it is sound is
        # dump_restorable's and base_backup_verified's verdict, not this one's.
        find(pgbackup.repository(), c.name, context.partition_key)
        verdict = rule_of_three(pgbackup.config(), local_ok=True, offsite_ok=False)
        return dg.AssetCheckResult(
            passed=verdict.passed,
            description=verdict.message,
            metadata={"copies": verdict.copies, "media": verdict.media, "offsite": verdict.offsite},
        )

    return daily_check(three_two_one, c.daily, asset=c.key(asset), name=THREE_TWO_ONE)
