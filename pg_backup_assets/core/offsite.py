"""Offsite copies (copy 3 of 3-2-1): the same repository layout on S3 or a second
filesystem, copied object by object, each re-read and checked against its sha256.

Because the offsite store holds the same layout (catalog entries included), restoring
from it is restoring from a Repository over that store.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from pg_backup_assets.core.codec import sha256_of
from pg_backup_assets.core.config import Config
from pg_backup_assets.core.errors import ConfigError, IntegrityError, NotFoundError
from pg_backup_assets.core.repository import Repository
from pg_backup_assets.core.storage import CHUNK, LocalStorage, Storage


def offsite_repository(config: Config, s3_client: Any = None) -> Repository:
    """The offsite store as a Repository (same codec and identity as the local one)."""
    offsite = config.offsite
    if offsite is None:
        raise ConfigError("no offsite store is configured (config key 'offsite')")
    local = Repository.from_config(config)
    if offsite.path is not None:
        storage: Storage = LocalStorage(offsite.path)
    else:
        from pg_backup_assets.core.s3storage import S3Storage
        from pg_backup_assets.core.s3storage import s3_client as make_client

        s3 = offsite.s3
        client = s3_client or make_client(s3.endpoint_url, s3.region)
        storage = S3Storage(client, s3.bucket, s3.prefix, s3.object_lock_days)
    return Repository(storage, local.codec, local.identity_file)


@dataclass
class CopyReport:
    objects: int = 0
    bytes: int = 0
    duration_s: float = 0.0
    mismatches: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.mismatches

    @property
    def throughput_mib_s(self) -> float:
        return self.bytes / 2**20 / max(self.duration_s, 1e-3)


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
    repo: Repository, offsite: Repository, records: Iterable[Any], catalog_key: str
) -> CopyReport:
    """Copy a backup set's objects, then its catalog entry; re-read and compare each."""
    report = CopyReport()
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
    repo: Repository, offsite: Repository, cluster: str, limit: int = 1000
) -> WalShipReport:
    """Copy WAL objects (and timeline/segment-size records) not yet offsite, oldest first."""
    prefix = f"{cluster}/wal/"
    report = WalShipReport()
    t0 = time.monotonic()
    local = {o.key: o for o in repo.storage.list(prefix)}
    remote = {o.key for o in offsite.storage.list(prefix)}
    todo = sorted((o for k, o in local.items() if k not in remote), key=lambda o: o.key)
    shipped = []
    for info in todo[:limit]:
        n, digest = copy_key(repo.storage, offsite.storage, info.key)
        shipped.append((info.key, digest))
        report.objects += 1
        report.bytes += n
    report.duration_s = time.monotonic() - t0
    report.mismatches = verify_copies(offsite, shipped)
    left = todo[limit:]
    report.pending = len(left)
    report.lag_s = time.time() - min(o.mtime for o in left) if left else 0.0
    return report


def wal_pending(repo: Repository, offsite: Repository, cluster: str) -> tuple[int, str | None]:
    """How many local WAL objects are not offsite, and the newest of them."""
    prefix = f"{cluster}/wal/"
    remote = {o.key for o in offsite.storage.list(prefix)}
    missing = [o.key for o in repo.storage.list(prefix) if o.key not in remote]
    return len(missing), (max(missing) if missing else None)


@dataclass(frozen=True)
class RuleVerdict:
    passed: bool
    message: str
    copies: int
    media: int
    offsite: bool


def three_two_one(config: Config, local_ok: bool, offsite_ok: bool) -> RuleVerdict:
    """3 copies (live cluster, repository, offsite), 2 kinds of media, 1 offsite — honestly."""
    copies = 1 + int(local_ok) + int(offsite_ok)
    media = {"local filesystem"}
    notes = []
    is_offsite = False
    off = config.offsite
    if off is None:
        notes.append("no offsite store is configured")
    elif off.s3 is not None:
        media.add("object storage")
        host = urlparse(off.s3.endpoint_url).hostname if off.s3.endpoint_url else None
        if host and _is_this_machine(host):
            notes.append(
                f"the S3 endpoint {off.s3.endpoint_url} is on this machine, so it is not offsite"
            )
        else:
            is_offsite = True
    else:
        try:
            same_fs = os.stat(off.path).st_dev == os.stat(config.repository).st_dev
        except OSError as exc:
            same_fs = False
            notes.append(f"cannot stat the offsite path {off.path}: {exc.strerror}")
        if same_fs:
            notes.append(
                f"the offsite path {off.path} is on the same filesystem as the repository "
                f"{config.repository}: one disk failure takes both, so it is not offsite"
            )
        else:
            media.add("second filesystem")
            is_offsite = True
            notes.append(
                f"the offsite path {off.path} is another filesystem; it counts as offsite only "
                "if it is physically elsewhere"
            )
    if not local_ok:
        notes.append("the repository copy is not verified")
    if off is not None and not offsite_ok:
        notes.append("the offsite copy does not match")
    passed = copies >= 3 and len(media) >= 2 and is_offsite
    summary = f"{copies} copies, {len(media)} kinds of media ({', '.join(sorted(media))}), "
    summary += f"{'1' if is_offsite else '0'} offsite"
    return RuleVerdict(
        passed, summary + ("; " + "; ".join(notes) if notes else ""), copies, len(media), is_offsite
    )


def _is_this_machine(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain") or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
