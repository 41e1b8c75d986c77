from collections.abc import Iterator

import dagster as dg

from pg_backup_assets.core.wal.status import inspect_archive
from pg_backup_assets.defs.check_names import WAL_ARCHIVE_CONTIGUOUS, WAL_ARCHIVE_FRESH
from pg_backup_assets.defs.context import ClusterContext
from pg_backup_assets.defs.resources import PgBackupResource
from pg_backup_assets.defs.wal.assets import check_verdicts


def build_wal_archive_checks(c: ClusterContext) -> dg.AssetChecksDefinition:
    key = c.key("wal_archive")

    @dg.multi_asset_check(
        name=f"{c.group}_wal_archive_checks",
        specs=[
            dg.AssetCheckSpec(WAL_ARCHIVE_CONTIGUOUS, asset=key),
            dg.AssetCheckSpec(WAL_ARCHIVE_FRESH, asset=key),
        ],
    )
    def wal_archive_checks(pgbackup: PgBackupResource) -> Iterator[dg.AssetCheckResult]:
        """No segment missing since the oldest backup's start; newest WAL younger than the RPO."""
        config = pgbackup.config()
        status = inspect_archive(
            pgbackup.repository(), config.cluster(c.name), daily=config.retention.daily
        )
        for name, passed, description, metadata in check_verdicts(status):
            yield dg.AssetCheckResult(
                asset_key=key,
                check_name=name,
                passed=passed,
                description=description,
                metadata=metadata,
            )

    return wal_archive_checks
