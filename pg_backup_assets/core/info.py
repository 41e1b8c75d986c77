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
    verification,
)
from pg_backup_assets.core.storage.repository import Repository
from pg_backup_assets.core.wal.archive import list_archive
from pg_backup_assets.core.wal.names import find_gaps, format_lsn


def repository_info(repo: Repository, clusters: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"repository": repo.describe(), "clusters": {}}
    for name in clusters:
        dumps = [
            {
                "date": s.date,
                "database": o.database,
                "size_bytes": o.record.stored_bytes,
                "raw_bytes": o.record.raw_bytes,
                "set_id": s.set_id,
                "sha256": o.record.sha256,
            }
            for s in list_dump_sets(repo, name)
            for o in s.objects
            if o.database != GLOBALS
        ]
        out["clusters"][name] = {
            "base_backups": [_backup_info(repo, b) for b in list_base_backups(repo, name)],
            "dumps": dumps,
            "wal": _wal_info(repo, name),
        }
    return out


def _wal_info(repo: Repository, cluster: str) -> dict[str, Any]:
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
        gaps = find_gaps(
            (o.name for o in listing.segments), listing.histories, listing.segment_size
        )
        wal.update(first=gaps.first, last=gaps.last, gaps=[list(g) for g in gaps.missing])
        if gaps.missing_history:
            wal["missing_history"] = gaps.missing_history
    return wal


def _backup_info(repo: Repository, backup: BaseBackup) -> dict[str, Any]:
    checked = verification(repo, backup)
    return {
        "label": backup.label,
        "date": backup.date,
        "start_lsn": format_lsn(backup.start_lsn),
        "stop_lsn": format_lsn(backup.stop_lsn),
        "timeline": backup.timeline,
        "start_time": _iso(backup.start_time),
        "stop_time": _iso(backup.stop_time),
        "size_bytes": backup.size_bytes,
        "tier": backup.tier,
        "verified": bool(checked and checked["ok"]),
        "verified_at": _iso(checked["verified_at"]) if checked else None,
        "pg_version": backup.pg_version,
        "system_identifier": backup.system_identifier,
    }


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat()
