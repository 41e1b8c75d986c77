"""Offsite copies: objects copied one by one, each visible offsite only once the bytes that
were sent hash to the catalog's sha256, then re-read there and compared.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pg_backup_assets.core.catalog import (
    BaseBackup,
    DumpSet,
    find_base_backup,
    find_dump_set,
    is_verified,
    restore_point_prefix,
)
from pg_backup_assets.core.errors import IntegrityError, NotFoundError
from pg_backup_assets.core.storage.base import CHUNK, Storage
from pg_backup_assets.core.storage.codec import sha256_of
from pg_backup_assets.core.storage.repository import Repository
from pg_backup_assets.core.wal.archive import (
    is_segment_object,
    recorded_segment_size,
    wal_prefix,
)


@dataclass
class CopyReport:
    objects: int = 0
    bytes: int = 0  # stored bytes copied
    raw_bytes: int = 0  # what they hold, uncompressed
    duration_s: float = 0.0
    mismatches: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.mismatches


def copy_key(
    src: Storage, dst: Storage, key: str, expected_sha256: str | None = None
) -> tuple[int, str]:
    """Stream one object; it becomes visible at ``dst`` only if its bytes hash as expected."""
    h = hashlib.sha256()
    n = 0
    with src.open(key) as f, dst.writer(key) as out:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            out.write(chunk)
            n += len(chunk)
        if expected_sha256 is not None and h.hexdigest() != expected_sha256:
            # Raising inside the block discards the copy.
            raise IntegrityError(
                f"{key} in {src.describe()} is damaged (sha256 {h.hexdigest()}, catalog "
                f"{expected_sha256}): not copied to {dst.describe()}"
            )
    return n, h.hexdigest()


def sha256_at(storage: Storage, key: str) -> str | None:
    try:
        with storage.open(key) as f:
            return sha256_of(f)[0]
    except NotFoundError:
        return None


def copy_set(
    repo: Repository,
    offsite: Repository,
    records: Iterable[Any],
    catalog_key: str,
    raw_bytes: int,
) -> CopyReport:
    """Copy a backup set's objects, then its catalog entry; re-read and compare each.

    ``raw_bytes``: what the set holds uncompressed (for the report's throughput).
    """
    report = CopyReport(raw_bytes=raw_bytes)
    t0 = time.monotonic()
    for record in records:
        n, _ = copy_key(repo.storage, offsite.storage, record.key, record.sha256)
        report.objects += 1
        report.bytes += n
    n, digest = copy_key(repo.storage, offsite.storage, catalog_key)
    report.objects += 1
    report.bytes += n
    report.duration_s = time.monotonic() - t0
    report.mismatches = verify_copies(
        offsite, [(r.key, r.sha256) for r in records] + [(catalog_key, digest)]
    )
    return report


def verify_copies(offsite: Repository, expected: Iterable[tuple[str, str]]) -> list[str]:
    """Re-read each offsite object; describe every one that is missing or differs."""
    problems = []
    for key, sha in expected:
        got = sha256_at(offsite.storage, key)
        if got is None:
            problems.append(f"{key} is missing offsite")
        elif got != sha:
            problems.append(f"{key} offsite has sha256 {got}, local {sha}")
    return problems


@dataclass
class WalShipReport(CopyReport):
    pending: int = 0  # local WAL objects still not offsite
    lag_s: float = 0.0  # age of the oldest of them


def ship_wal(
    repo: Repository,
    offsite: Repository,
    cluster: str,
    limit: int = 1000,
    lock_wait_s: float = 3600,
) -> WalShipReport:
    """Copy WAL objects (and timeline/segment-size records, and restore points) not yet
    offsite, oldest first. One shipper per cluster at a time (the offsite WAL run and a
    rehearsal may both ship): two uploads of one key would abort each other."""
    with repo.lock(cluster, "offsite_wal", lock_wait_s, lambda m: None):
        return _ship_wal(repo, offsite, cluster, limit)


def _ship_wal(repo: Repository, offsite: Repository, cluster: str, limit: int) -> WalShipReport:
    report = WalShipReport()
    t0 = time.monotonic()
    local, remote = {}, set()
    for prefix in (wal_prefix(cluster), restore_point_prefix(cluster)):
        local.update({o.key: o for o in repo.storage.list(prefix)})
        remote.update(o.key for o in offsite.storage.list(prefix))
    todo = sorted((o for k, o in local.items() if k not in remote), key=lambda o: o.key)
    segment_size = recorded_segment_size(repo, cluster) or 0
    shipped = []
    for info in todo[:limit]:
        n, digest = copy_key(repo.storage, offsite.storage, info.key)
        shipped.append((info.key, digest))
        report.objects += 1
        report.bytes += n
        report.raw_bytes += segment_size if is_segment_object(info.key) else n
    report.duration_s = time.monotonic() - t0
    report.mismatches = verify_copies(offsite, shipped)
    left = todo[limit:]
    report.pending = len(left)
    report.lag_s = time.time() - min(o.mtime for o in left) if left else 0.0
    return report


@dataclass(frozen=True)
class WalBacklog:
    pending: int  # local WAL objects not offsite yet
    newest: str | None  # the newest of them
    lag_s: float  # how long the oldest of them has waited


def wal_pending(repo: Repository, offsite: Repository, cluster: str) -> WalBacklog:
    """What of the local WAL archive is not offsite yet."""
    prefix = wal_prefix(cluster)
    remote = {o.key for o in offsite.storage.list(prefix)}
    missing = [o for o in repo.storage.list(prefix) if o.key not in remote]
    return WalBacklog(
        len(missing),
        max(o.key for o in missing) if missing else None,
        time.time() - min(o.mtime for o in missing) if missing else 0.0,
    )


def day_set(
    repo: Repository, cluster: str, what: str, day: str, catalog_key: str | None = None
) -> tuple[list[tuple[str, str]], bool]:
    """What the offsite store must hold for one day's ``what`` ("dump" or "base_backup"),
    the newest of the day or the set catalogued at ``catalog_key``: (key, sha256) of every
    object and of the catalog entry, and whether the local copy is verified."""
    if what == "dump":
        item: BaseBackup | DumpSet = find_dump_set(repo, cluster, day, catalog_key)
        verified = True  # a dump set is catalogued only after pg_dump succeeded
    else:
        item = find_base_backup(repo, cluster, day, catalog_key)
        verified = is_verified(repo, item)
    objects = [(r.key, r.sha256) for r in item.records]
    entry = (item.catalog_key, sha256_at(repo.storage, item.catalog_key) or "")
    return [*objects, entry], verified
