"""The asset factory: one asset group per configured cluster, with its jobs and schedule."""

import dagster as dg

from pg_backup_assets.core.config import Config
from pg_backup_assets.defs.base.assets import build_base_backup
from pg_backup_assets.defs.base.checks import build_base_backup_verified
from pg_backup_assets.defs.context import ClusterContext
from pg_backup_assets.defs.descriptions import with_config_facts
from pg_backup_assets.defs.dumps.assets import build_logical_dump
from pg_backup_assets.defs.dumps.checks import build_dump_restorable
from pg_backup_assets.defs.offsite.assets import (
    build_offsite_base_backup,
    build_offsite_dump,
    build_offsite_wal,
)
from pg_backup_assets.defs.offsite.checks import build_offsite_checks
from pg_backup_assets.defs.offsite.unconfigured import build_three_two_one_without_offsite
from pg_backup_assets.defs.rehearsal.assets import build_restore_rehearsal
from pg_backup_assets.defs.retention.assets import build_retention_expiry, build_tiers
from pg_backup_assets.defs.schedules import (
    ClusterJobs,
    build_daily_schedule,
    build_tier_schedules,
    build_weekly_schedule,
)
from pg_backup_assets.defs.wal.assets import build_wal_archive
from pg_backup_assets.defs.wal.checks import build_wal_archive_checks


def build_cluster_defs(c: ClusterContext, jobs: ClusterJobs, config: Config) -> dg.Definitions:
    assets = [
        build_logical_dump(c),
        build_base_backup(c),
        build_wal_archive(c),
        build_restore_rehearsal(c),
        *build_tiers(c),
        build_retention_expiry(c),
    ]
    checks = [build_dump_restorable(c), build_base_backup_verified(c), build_wal_archive_checks(c)]
    if c.offsite:
        assets += [build_offsite_dump(c), build_offsite_base_backup(c), build_offsite_wal(c)]
        checks += [*build_offsite_checks(c, "dump"), *build_offsite_checks(c, "base_backup")]
    else:
        # Without an offsite store the rule is broken, and the UI says so where the backups are.
        checks += [build_three_two_one_without_offsite(c, w) for w in ("dump", "base_backup")]
    return dg.Definitions(
        assets=with_config_facts(assets, config, c.name),
        asset_checks=checks,
        jobs=jobs.all(),
        schedules=[
            build_daily_schedule(c, jobs.daily_backup, config.schedules),
            build_weekly_schedule(c, jobs.restore_rehearsal, config.schedules),
            *build_tier_schedules(c, jobs.tiers),
        ],
    )
