"""Promoting a window's newest verified backup into a GFS tier (weekly, monthly, yearly).

The promotion is recorded beside the backup's catalog entry (``tiers.json``) in the
repository and in the offsite store, where S3 objects are also tagged with it.
"""

from __future__ import annotations

from dataclasses import dataclass

from pg_backup_assets.core.catalog import (
    BaseBackup,
    DumpSet,
    is_verified,
    list_base_backups,
    list_dump_sets,
    record_tier,
    set_prefix,
)
from pg_backup_assets.core.errors import PgBackupError
from pg_backup_assets.core.storage.repository import Repository


@dataclass(frozen=True)
class Promotion:
    kind: str  # "base" or "dump"
    label: str
    date: str
    catalog_key: str


def promote(
    repo: Repository,
    offsite: Repository | None,
    cluster: str,
    tier: str,
    window: str,
    first_day: str,
    end_day: str,
) -> list[Promotion]:
    """Promote the newest verified base backup and dump set of [first_day, end_day) to
    ``tier`` for ``window``. A window without a verified base backup fails, naming it."""
    backups = [b for b in list_base_backups(repo, cluster) if first_day <= b.date < end_day]
    dumps = [s for s in list_dump_sets(repo, cluster) if first_day <= s.date < end_day]
    chosen: list[BaseBackup | DumpSet] = []
    verified = [b for b in backups if is_verified(repo, b)]
    if not verified:
        found = f"{len(backups)} base backups, none verified" if backups else "no base backup"
        raise PgBackupError(
            f"the {tier} window {window} ({first_day} to {end_day}, exclusive) of cluster "
            f"{cluster} has {found}: nothing to promote into the {tier} tier"
        )
    chosen.append(max(verified, key=lambda b: b.stop_lsn))
    verified_dumps = [s for s in dumps if is_verified(repo, s)]
    if verified_dumps:
        chosen.append(max(verified_dumps, key=lambda s: (s.date, s.set_id)))
    promoted = []
    for item in chosen:
        tiers = record_tier(repo, item.catalog_key, tier, window)
        if offsite is not None and offsite.storage.exists(item.catalog_key):
            offsite.put_json(f"{set_prefix(item.catalog_key)}/tiers.json", tiers)
            tag = getattr(offsite.storage, "tag", None)
            if tag is not None:
                for record in item.records:
                    tag(record.key, {f"pgbackup-{t}": w for t, w in tiers.items()})
        kind = "base" if isinstance(item, BaseBackup) else "dump"
        label = item.label if isinstance(item, BaseBackup) else item.set_id
        promoted.append(Promotion(kind, label, item.date, item.catalog_key))
    return promoted
