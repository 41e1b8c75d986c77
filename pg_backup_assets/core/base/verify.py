"""Prove a base backup restorable without starting a server: checksums of the stored
objects, then ``pg_verifybackup`` on an extracted copy with the WAL it needs."""

from __future__ import annotations

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
    repo: Repository, cluster: str, backup: BaseBackup, log: Log = print
) -> BackupVerdict:
    try:
        # Both reads below check each object's sha256 against the catalog.
        with repo.staging() as scratch:
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
        verdict = BackupVerdict(False, str(exc))
    else:
        verdict = BackupVerdict(
            True,
            f"{backup.label}: sha256 of {len(backup.objects)} objects match; pg_verifybackup "
            f"checked every file against the manifest and the WAL it needs ({segments} segments)",
            segments,
        )
    record_verification(repo, backup, verdict.ok, verdict.message)
    return verdict


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
