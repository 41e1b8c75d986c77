"""Prove a base backup restorable without starting a server: checksums of the stored
objects, then ``pg_verifybackup`` on an extracted copy with the WAL it needs."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from pg_backup_assets.core.base.restore import extract_backup
from pg_backup_assets.core.catalog import BaseBackup, record_verification
from pg_backup_assets.core.errors import PgBackupError
from pg_backup_assets.core.postgres.client import run_tool, tool
from pg_backup_assets.core.progress import Log
from pg_backup_assets.core.storage.repository import Repository
from pg_backup_assets.core.wal.archive import fetch, list_archive
from pg_backup_assets.core.wal.names import Segment


@dataclass(frozen=True)
class BackupVerdict:
    ok: bool
    message: str
    wal_segments: int = 0


def verify_base_backup(
    repo: Repository,
    cluster: str,
    backup: BaseBackup,
    log: Log = print,
    attempts: int = 2,
    retry_pause_s: float = 5,
) -> BackupVerdict:
    """Verify and record the verdict. A failure is tried again before it is recorded (a
    store that blinked must not mark a good backup unverified); what fails every time is
    recorded as it is."""
    for attempt in range(1, attempts + 1):
        verdict = _verify_once(repo, cluster, backup, log)
        if verdict.ok or attempt == attempts:
            break
        log(f"verifying {backup.label} failed ({verdict.message}); trying again")
        time.sleep(retry_pause_s)
    record_verification(repo, backup, verdict.ok, verdict.message)
    return verdict


def _verify_once(repo: Repository, cluster: str, backup: BaseBackup, log: Log) -> BackupVerdict:
    try:
        _check_scratch_space(repo, backup)
        # Both reads below check each object's sha256 against the catalog.
        with repo.staging(scratch=True) as scratch:
            data = scratch / "data"
            data.mkdir()
            extract_backup(repo, backup, data, log)
            with open(data / "backup_manifest", "wb") as f:
                repo.read_into(backup.objects["backup_manifest"], f)
            wal = scratch / "wal"
            wal.mkdir()
            segments = _fetch_backup_wal(repo, cluster, backup, wal)
            run_tool(
                [
                    tool("pg_verifybackup", backup.pg_major),
                    "--quiet",
                    f"--wal-directory={wal}",
                    str(data),
                ],
                what=f"pg_verifybackup of {backup.label}",
            )
    except PgBackupError as exc:
        return BackupVerdict(False, str(exc))
    return BackupVerdict(
        True,
        f"{backup.label}: sha256 of {len(backup.objects)} objects match; pg_verifybackup "
        f"checked every file against the manifest and the WAL it needs ({segments} segments)",
        segments,
    )


def _check_scratch_space(repo: Repository, backup: BaseBackup) -> None:
    """Refuse to extract a copy that would fill the scratch filesystem (by default the
    repository's own, where wal-push needs room for the next segment)."""
    base = repo.staging_base(scratch=True)
    base.mkdir(parents=True, exist_ok=True)
    need = int(backup.raw_bytes * 1.1) + (256 << 20)
    free = shutil.disk_usage(base).free
    if free < need:
        raise PgBackupError(
            f"verifying {backup.label} needs about {need / 2**30:.1f} GiB of scratch space in "
            f"{base}, which has {free / 2**30:.1f} GiB free: set scratch_dir in the config to "
            "a filesystem with room (not the repository's, which WAL archiving needs)"
        )


def _fetch_backup_wal(repo: Repository, cluster: str, backup: BaseBackup, into: Path) -> int:
    size = list_archive(repo, cluster).segment_size
    if size is None:
        raise PgBackupError(
            f"no WAL archived for cluster {cluster}: {backup.label} cannot be verified"
        )
    first, last = backup.start_lsn // size, backup.stop_lsn // size
    for segno in range(first, last + 1):
        name = Segment(backup.timeline, segno).name(size)
        fetch(repo, cluster, name, into / name)
    return last - first + 1
