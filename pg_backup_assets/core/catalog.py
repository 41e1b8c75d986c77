"""The catalog records several domains read: base backups, dump sets, restore points and
verification results. Writing backups lives in ``base/`` and ``dumps/``; reading what the
repository holds lives here, below all of them.

A backup set lives under its own folder and exists once its ``catalog.json`` is written.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pg_backup_assets.core.errors import NotFoundError, PgBackupError
from pg_backup_assets.core.storage.repository import (
    CATALOG,
    ObjectRecord,
    Repository,
    record_dict,
)
from pg_backup_assets.core.wal.names import format_lsn, parse_lsn

VERIFIED = "verified.json"
TIERS = "tiers.json"
GLOBALS = "globals"  # the pg_dumpall --globals-only part of a dump set
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def check_date(date: str) -> str:
    """``date`` if it is a real day written YYYY-MM-DD (a partition key)."""
    if not _DATE.match(date):
        raise PgBackupError(f"invalid date {date!r}: expected YYYY-MM-DD")
    try:
        dt.date.fromisoformat(date)
    except ValueError:
        raise PgBackupError(f"invalid date {date!r}: no such day") from None
    return date


# -- base backups ------------------------------------------------------------------------------
CONTROL_FILE = "global/pg_control"


@dataclass(frozen=True)
class Part:
    """One part of a base backup in parts: a tar archive of its own (its object in
    ``BaseBackup.objects`` under ``name``), holding whole files of the data directory."""

    name: str
    files: tuple[tuple[str, int, str], ...]  # each regular file: path, size, manifest checksum
    others: tuple[str, ...] = ()  # its directories and symbolic links

    @property
    def control(self) -> bool:
        """The part with pg_control alone: restored last, so that a data directory whose
        restore did not finish can never be started."""
        return any(path == CONTROL_FILE for path, _, _ in self.files)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "files": [list(f) for f in self.files], "others": self.others}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Part:
        return cls(
            d["name"], tuple((p, s, c) for p, s, c in d["files"]), tuple(d.get("others", ()))
        )


@dataclass(frozen=True)
class BaseBackup:
    cluster: str
    date: str
    label: str
    catalog_key: str
    start_lsn: int
    stop_lsn: int
    timeline: int
    start_time: float
    stop_time: float
    next_xid: int  # the next transaction id when the backup finished
    pg_major: int
    pg_version: str
    system_identifier: str
    architecture: str
    data_checksums: bool
    compression: str
    objects: dict[str, ObjectRecord]  # "backup_manifest" and each part's, or "base.tar"
    tier: str = "daily"
    stored_time: float = 0.0  # when every object was durable in the repository
    data_bytes: int = 0  # the data directory's size (sum of the manifest's files)
    # The index of a backup in parts (file -> part, size, checksum), in stream order; none
    # for a backup stored as one stream (the object "base.tar").
    parts: tuple[Part, ...] = ()
    checksum_algorithm: str = ""  # of the files' checksums in ``parts`` (the manifest's)

    @property
    def records(self) -> list[ObjectRecord]:
        """Every object of the backup (not its catalog entry)."""
        return list(self.objects.values())

    @property
    def size_bytes(self) -> int:
        return sum(o.stored_bytes for o in self.objects.values())

    @property
    def raw_bytes(self) -> int:
        """The data directory's size (older catalog entries: the stored objects' raw size)."""
        return self.data_bytes or sum(o.raw_bytes for o in self.objects.values())

    @property
    def duration_s(self) -> float:
        """Wall time from start to the backup being stored (what the asset took)."""
        return max(self.stored_time, self.stop_time) - self.start_time

    @property
    def prefix(self) -> str:
        return self.catalog_key.rsplit("/", 1)[0]

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "base_backup",
            "cluster": self.cluster,
            "date": self.date,
            "label": self.label,
            "start_lsn": format_lsn(self.start_lsn),
            "stop_lsn": format_lsn(self.stop_lsn),
            "timeline": self.timeline,
            "start_time": self.start_time,
            "stop_time": self.stop_time,
            "next_xid": self.next_xid,
            "pg_major": self.pg_major,
            "pg_version": self.pg_version,
            "system_identifier": self.system_identifier,
            "architecture": self.architecture,
            "data_checksums": self.data_checksums,
            "compression": self.compression,
            "tier": self.tier,
            "stored_time": self.stored_time,
            "data_bytes": self.data_bytes,
            "objects": {k: record_dict(v) for k, v in self.objects.items()},
            **(
                {
                    "parts": [p.to_dict() for p in self.parts],
                    "checksum_algorithm": self.checksum_algorithm,
                }
                if self.parts
                else {}
            ),
        }

    @classmethod
    def from_dict(cls, key: str, d: dict[str, Any]) -> BaseBackup:
        return cls(
            cluster=d["cluster"],
            date=d["date"],
            label=d["label"],
            catalog_key=key,
            start_lsn=parse_lsn(d["start_lsn"]),
            stop_lsn=parse_lsn(d["stop_lsn"]),
            timeline=d["timeline"],
            start_time=d["start_time"],
            stop_time=d["stop_time"],
            next_xid=d["next_xid"],
            pg_major=d["pg_major"],
            pg_version=d["pg_version"],
            system_identifier=d["system_identifier"],
            architecture=d["architecture"],
            data_checksums=d["data_checksums"],
            compression=d["compression"],
            objects={k: ObjectRecord.from_dict(v) for k, v in d["objects"].items()},
            tier=d.get("tier", "daily"),
            stored_time=d.get("stored_time", 0.0),
            data_bytes=d.get("data_bytes", 0),
            parts=tuple(Part.from_dict(p) for p in d.get("parts", ())),
            checksum_algorithm=d.get("checksum_algorithm", ""),
        )


def base_prefix(cluster: str) -> str:
    return f"{cluster}/base/"


def list_base_backups(repo: Repository, cluster: str) -> list[BaseBackup]:
    """Every complete base backup of ``cluster``, oldest first."""
    backups = [BaseBackup.from_dict(k, d) for k, d in repo.catalogs(base_prefix(cluster))]
    backups.sort(key=lambda b: (b.stop_lsn, b.label))
    return backups


def find_base_backup(
    repo: Repository, cluster: str, date: str, catalog_key: str | None = None
) -> BaseBackup:
    """The newest base backup taken for partition ``date``, or exactly the one catalogued
    at ``catalog_key`` (a run's own backup, not one a concurrent run took since)."""
    found = [b for b in list_base_backups(repo, cluster) if b.date == check_date(date)]
    if catalog_key is not None:
        found = [b for b in found if b.catalog_key == catalog_key]
    if not found:
        which = f" catalogued at {catalog_key}" if catalog_key else ""
        raise NotFoundError(
            f"no base backup of cluster {cluster!r} for {date}{which} in the repository at "
            f"{repo.describe()}"
        )
    return found[-1]


def set_prefix(catalog_key: str) -> str:
    """The folder of the backup set whose catalog entry is ``catalog_key``."""
    return catalog_key.rsplit("/", 1)[0]


def verification(repo: Repository, backup: BaseBackup | DumpSet) -> dict[str, Any] | None:
    """The last verification result of a base backup or dump set: {ok, verified_at,
    detail}, or None."""
    key = f"{set_prefix(backup.catalog_key)}/{VERIFIED}"
    return repo.get_json(key) if repo.storage.exists(key) else None


def is_verified(repo: Repository, backup: BaseBackup | DumpSet) -> bool:
    """Did the last verification of ``backup`` pass?"""
    checked = verification(repo, backup)
    return bool(checked and checked["ok"])


def record_verification(
    repo: Repository, backup: BaseBackup | DumpSet, ok: bool, detail: str
) -> None:
    repo.put_json(
        f"{set_prefix(backup.catalog_key)}/{VERIFIED}",
        {"ok": ok, "verified_at": time.time(), "detail": detail},
    )


def tiers_of(repo: Repository, catalog_key: str) -> dict[str, str]:
    """The GFS tiers a backup set was promoted to: tier -> window (e.g. weekly: 2026-11-22)."""
    key = f"{set_prefix(catalog_key)}/{TIERS}"
    return repo.get_json(key) if repo.storage.exists(key) else {}


def record_tier(repo: Repository, catalog_key: str, tier: str, window: str) -> dict[str, str]:
    """Add ``tier`` (for ``window``) to a set's tiers; written beside its catalog entry,
    which is never rewritten."""
    tiers = {**tiers_of(repo, catalog_key), tier: window}
    repo.put_json(f"{set_prefix(catalog_key)}/{TIERS}", tiers)
    return tiers


# -- dump sets ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class DumpObject:
    database: str  # GLOBALS for the pg_dumpall --globals-only part
    record: ObjectRecord
    duration_s: float
    extensions: dict[str, str] = field(default_factory=dict)
    tables: dict[str, int] = field(default_factory=dict)  # row counts in the dump's snapshot


@dataclass(frozen=True)
class DumpSet:
    cluster: str
    date: str
    set_id: str
    catalog_key: str
    started_at: float
    finished_at: float
    server_version: str
    server_major: int
    system_identifier: str
    objects: tuple[DumpObject, ...]

    @property
    def records(self) -> list[ObjectRecord]:
        """Every object of the set (not its catalog entry)."""
        return [o.record for o in self.objects]

    @property
    def size_bytes(self) -> int:
        return sum(o.record.stored_bytes for o in self.objects)

    @property
    def raw_bytes(self) -> int:
        return sum(o.record.raw_bytes for o in self.objects)

    @property
    def duration_s(self) -> float:
        return self.finished_at - self.started_at

    def database(self, name: str) -> DumpObject:
        for o in self.objects:
            if o.database == name and name != GLOBALS:
                return o
        known = ", ".join(o.database for o in self.objects if o.database != GLOBALS)
        raise NotFoundError(
            f"the {self.date} dump of cluster {self.cluster} has no database {name!r} "
            f"(it has: {known})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "dump_set",
            "cluster": self.cluster,
            "date": self.date,
            "set_id": self.set_id,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "server_version": self.server_version,
            "server_major": self.server_major,
            "system_identifier": self.system_identifier,
            "objects": [
                {
                    "database": o.database,
                    "duration_s": o.duration_s,
                    "extensions": o.extensions,
                    "tables": o.tables,
                    **record_dict(o.record),
                }
                for o in self.objects
            ],
        }

    @classmethod
    def from_dict(cls, key: str, d: dict[str, Any]) -> DumpSet:
        return cls(
            cluster=d["cluster"],
            date=d["date"],
            set_id=d["set_id"],
            catalog_key=key,
            started_at=d["started_at"],
            finished_at=d["finished_at"],
            server_version=d["server_version"],
            server_major=d["server_major"],
            system_identifier=d["system_identifier"],
            objects=tuple(
                DumpObject(
                    database=o["database"],
                    record=ObjectRecord.from_dict(o),
                    duration_s=o["duration_s"],
                    extensions=o.get("extensions", {}),
                    tables=o.get("tables", {}),
                )
                for o in d["objects"]
            ),
        )


def dump_prefix(cluster: str) -> str:
    return f"{cluster}/dumps/"


def list_dump_sets(repo: Repository, cluster: str) -> list[DumpSet]:
    """Every complete dump set of ``cluster``, oldest first."""
    sets = [DumpSet.from_dict(k, d) for k, d in repo.catalogs(dump_prefix(cluster))]
    sets.sort(key=lambda s: (s.date, s.set_id))
    return sets


def find_dump_set(
    repo: Repository, cluster: str, date: str | None = None, catalog_key: str | None = None
) -> DumpSet:
    """The newest complete dump set (for ``date`` when given), or exactly the one
    catalogued at ``catalog_key``."""
    sets = list_dump_sets(repo, cluster)
    if date is not None:
        check_date(date)
        sets = [s for s in sets if s.date == date]
    if catalog_key is not None:
        sets = [s for s in sets if s.catalog_key == catalog_key]
    if not sets:
        when = (f" for {date}" if date else "") + (
            f" catalogued at {catalog_key}" if catalog_key else ""
        )
        raise NotFoundError(
            f"no logical dump of cluster {cluster!r}{when} in the repository at {repo.describe()}"
        )
    return sets[-1]


def oldest_backup_day(repo: Repository, clusters: Sequence[str]) -> str | None:
    """The oldest day that has a base backup or a dump set of any of ``clusters``."""
    days = [
        info.key.split("/")[2]
        for cluster in clusters
        for prefix in (base_prefix(cluster), dump_prefix(cluster))
        for info in repo.storage.list(prefix)
        if info.key.endswith("/" + CATALOG) and info.key.count("/") == 4
    ]
    return min(days, default=None)


# -- restore points ----------------------------------------------------------------------------
@dataclass(frozen=True)
class RestorePoint:
    name: str
    lsn: int
    time: float
    timeline: int


def restore_point_prefix(cluster: str) -> str:
    return f"{cluster}/restore_points/"


def restore_point_key(cluster: str, name: str) -> str:
    return f"{restore_point_prefix(cluster)}{name}.json"


def record_restore_point(repo: Repository, cluster: str, point: RestorePoint) -> None:
    repo.put_json(
        restore_point_key(cluster, point.name),
        {
            "name": point.name,
            "lsn": format_lsn(point.lsn),
            "time": point.time,
            "timeline": point.timeline,
        },
    )


def find_restore_point(repo: Repository, cluster: str, name: str) -> RestorePoint | None:
    key = restore_point_key(cluster, name)
    if not repo.storage.exists(key):
        return None
    d = repo.get_json(key)
    return RestorePoint(d["name"], parse_lsn(d["lsn"]), d["time"], d["timeline"])
