"""The catalog summary behind ``pgbackup info`` (shape: DESIGN §3)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from pg_backup_assets.core.catalog import (
    GLOBALS,
    BaseBackup,
    list_base_backups,
    list_dump_sets,
    tiers_of,
    verification,
)
from pg_backup_assets.core.errors import PgBackupError
from pg_backup_assets.core.storage.repository import Repository
from pg_backup_assets.core.wal.archive import list_archive
from pg_backup_assets.core.wal.names import format_lsn
from pg_backup_assets.core.wal.status import archive_gaps


def repository_info(
    repo: Repository,
    clusters: Sequence[str],
    offsite: Repository | None = None,
    daily: int = 14,
) -> dict[str, Any]:
    """What the repository holds; with ``offsite``, each backup's state there too:
    "copied" (every object and the catalog entry, sizes equal), "partial", "missing", or
    "unknown" (the store cannot be listed: ``offsite_error`` says why)."""
    out: dict[str, Any] = {"repository": repo.describe(), "clusters": {}}
    if offsite is not None:
        out["offsite"] = offsite.describe()
    for name in clusters:
        held = _OffsiteListing(offsite, name)
        dumps = [
            {
                "date": s.date,
                "database": o.database,
                "size_bytes": o.record.stored_bytes,
                "raw_bytes": o.record.raw_bytes,
                "set_id": s.set_id,
                "sha256": o.record.sha256,
                "offsite": held.state([r.key for r in s.records] + [s.catalog_key], repo),
            }
            for s in list_dump_sets(repo, name)
            for o in s.objects
            if o.database != GLOBALS
        ]
        backups = []
        base = list_base_backups(repo, name)
        for b in base:
            info = _backup_info(repo, b)
            info["offsite"] = held.state([r.key for r in b.records] + [b.catalog_key], repo)
            backups.append(info)
        out["clusters"][name] = {
            "base_backups": backups,
            "dumps": dumps,
            "wal": _wal_info(repo, name, held, base, daily),
        }
        if held.error:
            out["clusters"][name]["offsite_error"] = held.error
    return out


class _OffsiteListing:
    """One listing of a cluster's objects in the offsite store, for every state question."""

    def __init__(self, offsite: Repository | None, cluster: str):
        self.sizes: dict[str, int] | None = None
        self.error: str | None = None
        if offsite is None:
            return
        try:
            self.sizes = {o.key: o.size for o in offsite.storage.list(f"{cluster}/")}
        except PgBackupError as exc:
            self.error = str(exc)

    def state(self, keys: Sequence[str], repo: Repository) -> str | None:
        if self.sizes is None:
            return "unknown" if self.error else None
        same = sum(1 for k in keys if self.sizes.get(k) == repo.storage.stat(k).size)
        return "copied" if same == len(keys) else "partial" if same else "missing"


def _wal_info(
    repo: Repository,
    cluster: str,
    held: _OffsiteListing,
    base: list[BaseBackup],
    daily: int,
) -> dict[str, Any]:
    listing = list_archive(repo, cluster)
    wal: dict[str, Any] = {
        "first": None,
        "last": None,
        "count": len(listing.segments),
        "gaps": [],
        "stored_bytes": listing.total_bytes,
        "timelines": sorted({int(o.name[:8], 16) for o in listing.segments}),
    }
    if listing.segment_size:
        gaps = archive_gaps(listing, base, listing.segment_size, daily)
        wal.update(first=gaps.first, last=gaps.last, gaps=[list(g) for g in gaps.missing])
        if gaps.missing_history:
            wal["missing_history"] = gaps.missing_history
    if held.sizes is not None:
        wal["offsite_missing"] = sum(1 for o in listing.objects if o.key not in held.sizes)
    return wal


def _top_tier(tiers: dict[str, str]) -> str:
    """The longest-lived tier a backup is in ("daily" when it was never promoted)."""
    return next((t for t in ("yearly", "monthly", "weekly") if t in tiers), "daily")


def _backup_info(repo: Repository, backup: BaseBackup) -> dict[str, Any]:
    checked = verification(repo, backup)
    tiers = tiers_of(repo, backup.catalog_key)
    return {
        "label": backup.label,
        "date": backup.date,
        "start_lsn": format_lsn(backup.start_lsn),
        "stop_lsn": format_lsn(backup.stop_lsn),
        "timeline": backup.timeline,
        "start_time": _iso(backup.start_time),
        "stop_time": _iso(backup.stop_time),
        "size_bytes": backup.size_bytes,
        "tier": _top_tier(tiers),
        "tiers": tiers,
        "verified": bool(checked and checked["ok"]),
        "verified_at": _iso(checked["verified_at"]) if checked else None,
        "pg_version": backup.pg_version,
        "system_identifier": backup.system_identifier,
    }


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat()
