"""The catalog summary behind ``pgbackup info`` (shape: DESIGN §3)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pg_backup_assets.core.dumps import GLOBALS, list_dump_sets
from pg_backup_assets.core.repository import Repository
from pg_backup_assets.core.wal import find_gaps
from pg_backup_assets.core.walarchive import list_archive


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
            # Physical base backups are not built yet: nothing to list.
            "base_backups": [],
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
