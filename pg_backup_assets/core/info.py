"""The catalog summary behind ``pgbackup info`` (shape: DESIGN §3)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pg_backup_assets.core.dumps import GLOBALS, list_dump_sets
from pg_backup_assets.core.repository import Repository


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
            # Physical backups and WAL archiving are not built yet: nothing to list.
            "base_backups": [],
            "dumps": dumps,
            "wal": {"first": None, "last": None, "count": 0, "gaps": []},
        }
    return out
