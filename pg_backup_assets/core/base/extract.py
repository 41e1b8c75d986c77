"""Extracting base backups: a backup in parts with several workers, pg_control last; a
delta restore into a stale copy of the same cluster; and the one-stream layout.

Each worker (a thread) reads a part, hashes it, decrypts it when it is encrypted
(``agefile``), decompresses and extracts it (``untar``), all in this process.
Decryption, decompression, hashing and the writes leave the GIL for most of their work,
so the workers use as many cores as there are. A part that does not match the catalog is named,
and pg_control, written only after every other part, is then never written: a folder
whose restore did not finish cannot be started.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zstandard

from pg_backup_assets.core.base import untar
from pg_backup_assets.core.catalog import CONTROL_FILE, BaseBackup
from pg_backup_assets.core.errors import IntegrityError, NotFoundError, PgBackupError
from pg_backup_assets.core.postgres.local_cluster import hand_over
from pg_backup_assets.core.progress import Log
from pg_backup_assets.core.storage import agefile
from pg_backup_assets.core.storage.codec import HashingReader, Progress
from pg_backup_assets.core.storage.repository import ObjectRecord, Repository

_CHUNK = 1 << 20


@dataclass
class ExtractStats:
    """What an extraction wrote; for a delta restore also what it kept and removed."""

    parts: int = 0
    parts_read: int = 0
    files_written: int = 0
    bytes_written: int = 0
    files_kept: int = 0
    files_vouched: int = 0  # delta: kept without being read (the restore record vouches)
    files_removed: int = 0
    rewritten: list[str] = field(default_factory=list)  # delta: the files written anew


def default_workers() -> int:
    return os.cpu_count() or 1


def extract_parts(
    repo: Repository,
    backup: BaseBackup,
    to: Path,
    log: Log,
    workers: int | None = None,
    delta: bool = False,
    durable: bool = True,
) -> ExtractStats:
    """Extract a backup in parts into ``to`` with ``workers`` at once, largest parts first,
    and pg_control's part last (after a sync, when ``durable``: no crash can leave
    pg_control on disk without the rest). With ``delta``, ``to`` holds an older copy of
    the same cluster: files whose size and checksum match the backup's index are kept, the
    others written anew, and what the backup does not have is removed."""
    workers = max(1, workers or default_workers())
    if any(r.encrypted for r in backup.records):
        repo.identities()  # fail before anything is written
    missing = [p.name for p in backup.parts if not repo.storage.exists(backup.objects[p.name].key)]
    if missing:
        raise NotFoundError(
            f"backup {backup.label} in {repo.describe()} lacks {len(missing)} of its parts "
            f"({', '.join(missing[:5])}); nothing was restored into {to}"
        )
    stats = ExtractStats(parts=len(backup.parts))
    control = [p for p in backup.parts if p.control]
    data = [p for p in backup.parts if not p.control]
    record = take_record(to, backup)  # from here on the files change: it is gone
    if delta:
        members = _plan_delta(backup, to, log, stats, workers, record)
    else:
        members = {p.name: None for p in data}
        stats.files_written = sum(len(p.files) for p in data)
        stats.bytes_written = sum(size for p in data for _, size, _ in p.files)
    data = sorted(data, key=lambda p: backup.objects[p.name].stored_bytes, reverse=True)
    todo = [p for p in data if members[p.name] is None or members[p.name]]
    _make_folders(backup, to)
    t0 = time.monotonic()
    log(
        f"extracting {len(todo)} of {len(data)} parts "
        f"({sum(backup.objects[p.name].stored_bytes for p in todo) / 2**20:,.0f} MiB stored) "
        f"with {min(workers, max(len(todo), 1))} workers"
    )
    try:
        _in_parallel(
            [
                _job(repo, backup.objects[p.name], to, members[p.name], n, len(todo))
                for n, p in enumerate(todo, 1)
            ],
            workers,
            log,
        )
        if durable:  # the rest is on disk before pg_control is written
            subprocess.run(["sync", "-f", str(to)], check=False)
        for part in control:
            _extract_part(repo, backup.objects[part.name], to, None)
    except PgBackupError as exc:
        if delta:
            raise PgBackupError(
                f"{exc}; {to} has no {CONTROL_FILE} now and will not start: run the delta "
                "restore again once the backup is readable, or restore another backup"
            ) from None
        empty_folder(to)
        raise type(exc)(f"{exc}; nothing was restored into {to}") from None
    stats.parts_read = len(todo) + len(control)
    stats.files_written += sum(len(p.files) for p in control)
    stats.rewritten += [path for p in control for path, _, _ in p.files]
    log(
        f"extracted {stats.parts_read} parts in {time.monotonic() - t0:.1f}s: "
        f"{stats.files_written:,} files written ({stats.bytes_written / 2**20:,.0f} MiB)"
        + (
            f", {stats.files_kept:,} kept as they were, {stats.files_removed:,} removed"
            if delta
            else ""
        )
    )
    return stats


def _make_folders(backup: BaseBackup, to: Path) -> None:
    """Every folder that holds a member of some part, made before any part is extracted (a
    file's folder may come in another part than the file). The parts' folder entries then
    find them there, and set their modes and times."""
    folders = {
        os.path.dirname(os.path.normpath(name))
        for part in backup.parts
        for name in (*(f[0] for f in part.files), *part.others)
    }
    for folder in sorted(folders - {"", "."}):
        (to / folder).mkdir(mode=0o700, parents=True, exist_ok=True)


def _job(
    repo: Repository,
    record: ObjectRecord,
    to: Path,
    names: list[str] | None,
    n: int,
    of: int,
) -> Callable[[], str]:
    def run() -> str:
        t0 = time.monotonic()
        _extract_part(repo, record, to, names)
        what = "" if names is None else f", {len(names)} members"
        return (
            f"part {n}/{of} {record.key.rsplit('/', 1)[-1].split('.')[0]}: "
            f"{record.raw_bytes / 2**20:,.0f} "
            f"MiB{what} in {time.monotonic() - t0:.1f}s"
        )

    return run


def _in_parallel(jobs: list[Callable[[], str]], workers: int, log: Log) -> None:
    """Run ``jobs`` on ``workers`` threads, logging each one's line; the first failure is
    raised once the running jobs are done (the others are not started)."""
    failure: BaseException | None = None
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="extract") as pool:
        futures = [pool.submit(job) for job in jobs]
        for future in as_completed(futures):
            if future.cancelled():
                continue
            try:
                log(future.result())
            except BaseException as exc:
                if failure is None:
                    failure = exc
                    for other in futures:
                        other.cancel()
    if failure is not None:
        raise failure


def _extract_part(
    repo: Repository, record: ObjectRecord, to: Path, names: list[str] | None
) -> None:
    """Extract one part (only ``names`` of it when given) and check its stored bytes."""
    with open_stored(repo, record) as stored:
        extract_stored(repo, record, stored, to, names)


@contextlib.contextmanager
def open_stored(
    repo: Repository, record: ObjectRecord, progress: Progress | None = None
) -> Iterator[HashingReader]:
    """The stored bytes of ``record``, hashed as they are read."""
    local_path = getattr(repo.storage, "path", None)
    with (
        open(local_path(record.key), "rb", buffering=0)
        if local_path is not None
        else repo.storage.open(record.key)
    ) as f:
        yield HashingReader(f, progress)


def extract_stored(
    repo: Repository,
    record: ObjectRecord,
    stored: HashingReader,
    to: Path,
    members: list[str] | None = None,
) -> None:
    """Decrypt, decompress and extract the object ``stored`` reads (``record``'s) into
    ``to``, in this process (``untar``). The stored bytes are read to their end and checked
    against the catalog first: a damaged object is named as such, whatever else failed
    because of it."""
    name = record.key.rsplit("/", 1)[-1]
    failure: PgBackupError | None = None
    try:
        if record.encrypted:
            _extract_encrypted(repo, stored, to, name, members)
        else:
            _extract_zstd(stored, to, name, members)
    except PgBackupError as exc:
        failure = exc
    while stored.read(_CHUNK):  # the rest, if extracting stopped early
        pass
    check_stored(repo, record, stored)
    if failure is not None:
        raise failure


def _extract_zstd(src: Any, to: Path, name: str, members: list[str] | None) -> None:  # noqa: ANN401
    try:
        with zstandard.ZstdDecompressor().stream_reader(
            src, read_size=_CHUNK, read_across_frames=True, closefd=False
        ) as tar:
            untar.extract(tar, to, name, members)
    except zstandard.ZstdError as exc:
        raise PgBackupError(f"cannot decompress {name}: {exc} (the object is damaged)") from None


def _extract_encrypted(
    repo: Repository, stored: HashingReader, to: Path, name: str, members: list[str] | None
) -> None:
    """Decrypted in this thread too (``agefile``: 2.4 GiB/s a core, against 1.1 for the
    age command and two more trips through pipes)."""
    try:
        keys = agefile.secret_keys(repo.identities())  # read once, checked with its own errors
        _extract_zstd(agefile.AgeReader(stored, keys), to, name, members)
    except agefile.AgeError as exc:
        raise PgBackupError(f"cannot decrypt {name}: {exc}") from None


def check_stored(repo: Repository, record: ObjectRecord, stored: HashingReader) -> None:
    if stored.hash.hexdigest() != record.sha256 or stored.count != record.stored_bytes:
        raise IntegrityError(
            f"{record.key} in {repo.describe()} is damaged: sha256 "
            f"{stored.hash.hexdigest()} does not match the catalog's {record.sha256}"
        )


def empty_folder(folder: Path) -> None:
    for child in folder.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


# -- delta ---------------------------------------------------------------------------------
def system_identifier(data: Path) -> str | None:
    """The system identifier in a data directory's pg_control (its first 8 bytes), or None
    when it has none."""
    try:
        with open(data / CONTROL_FILE, "rb") as f:
            head = f.read(8)
    except FileNotFoundError:
        return None
    return str(int.from_bytes(head, sys.byteorder)) if len(head) == 8 else None


def _plan_delta(
    backup: BaseBackup,
    to: Path,
    log: Log,
    stats: ExtractStats,
    workers: int,
    record: dict[str, list],
) -> dict[str, list[str]]:
    """Compare ``to`` with the backup's index: remove what the backup lacks, and return for
    each data part the members to extract (files that differ or are missing, and
    directories that are missing). pg_control is removed first."""
    found = system_identifier(to)
    if found is None:
        raise PgBackupError(
            f"--delta: {to} has no {CONTROL_FILE}, so it cannot be checked to be a copy of "
            f"cluster {backup.cluster} (a restore into it may not have finished): restore "
            "into it with --force instead"
        )
    if found != backup.system_identifier:
        raise PgBackupError(
            f"--delta: {to} holds the cluster with system identifier {found}, and backup "
            f"{backup.label} is of {backup.system_identifier}: a delta restore only refreshes "
            "a copy of the same cluster (use --force to replace it)"
        )
    if backup.checksum_algorithm != "CRC32C":
        raise PgBackupError(
            f"--delta: backup {backup.label} has {backup.checksum_algorithm or 'no'} file "
            "checksums; a delta restore compares CRC32C (pg_basebackup's default)"
        )
    # From here on the folder cannot be started until the restore is complete.
    (to / CONTROL_FILE).unlink()
    index: dict[str, tuple[int, str, str]] = {}
    wanted_dirs: dict[str, tuple[str, str]] = {}  # path -> (part, its name in the part)
    for part in backup.parts:
        if part.control:
            continue
        for path, size, checksum in part.files:
            index[path] = (size, checksum, part.name)
        for other in part.others:
            wanted_dirs[os.path.normpath(other)] = (part.name, other)
    present: list[str] = []
    for root, dirs, files in os.walk(to):
        rel_root = os.path.relpath(root, to)
        for d in list(dirs):
            rel = d if rel_root == "." else f"{rel_root}/{d}"
            if rel not in wanted_dirs:
                path = Path(root, d)
                if path.is_symlink():
                    path.unlink()
                else:
                    stats.files_removed += sum(len(f) for _, _, f in os.walk(path))
                    shutil.rmtree(path)
                dirs.remove(d)
        for name in files:
            rel = name if rel_root == "." else f"{rel_root}/{name}"
            if rel in index:
                present.append(rel)
            else:
                os.unlink(os.path.join(root, name))
                stats.files_removed += 1
    vouched = {rel for rel in present if _vouched(to / rel, record.get(rel))}
    read = [rel for rel in present if rel not in vouched]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        same = list(pool.map(lambda rel: _unchanged(to / rel, *index[rel][:2]), read))
    kept = {rel for rel, ok in zip(read, same, strict=True) if ok}
    for rel in vouched:  # the content it was restored with: the checksum says
        size, checksum, _ = index[rel]
        entry = record[rel]
        if entry[2] == size and str(entry[5]).lower() == checksum.lower():
            kept.add(rel)
            stats.files_vouched += 1
    members: dict[str, list[str]] = {p.name: [] for p in backup.parts if not p.control}
    for path, (size, _, part) in index.items():
        if path in kept:
            stats.files_kept += 1
            continue
        with contextlib.suppress(FileNotFoundError):
            (to / path).unlink()
        members[part].append(path)
        stats.rewritten.append(path)
        stats.files_written += 1
        stats.bytes_written += size
    for d, (part, member) in wanted_dirs.items():
        if not (to / d).is_dir():
            members[part].append(member)
    log(
        f"delta: {len(kept):,} files match the backup ({stats.files_vouched:,} of them "
        f"vouched for by the last restore's record, not read), {stats.files_written:,} to "
        f"write, {stats.files_removed:,} removed (not in the backup)"
    )
    return members


def _unchanged(path: Path, size: int, checksum: str) -> bool:
    import google_crc32c

    try:
        if path.stat().st_size != size:
            return False
        crc = google_crc32c.Checksum()
        with open(path, "rb", buffering=0) as f:
            while chunk := f.read(_CHUNK):
                crc.update(chunk)
    except OSError:
        return False
    return crc.digest()[::-1].hex() == checksum.lower()


# -- the restore record ----------------------------------------------------------------------
# What a restore leaves next to the folder it restored (in ``.<folder>.run/``), so that a
# later delta restore need not read every file again: for each file written from the
# backup, its device, inode, size, mtime and ctime as the restore left them, and the
# CRC32C of its content (the backup's, from the index). A file that still has all five is
# the file the restore wrote: any write since, and any rename or copy over it, changes its
# ctime (which no program can set back) or its inode. Files the restore changed after
# extracting them (postgresql.auto.conf) are not in the record; and it is written only
# once the clock has moved past every ctime in it, so that a change in the same clock tick
# cannot keep one. Without a valid record (none, another folder, the clock went back), a
# delta restore reads and checksums every file, as pgBackRest's --delta does.
RECORD = "restored.json"
_RECORD_FORMAT = 1
_TICK_NS = 50_000_000  # beyond the kernel's coarse clock, which file times come from


def run_dir(to: Path) -> Path:
    """The folder next to a restored data directory for what the restore keeps outside it
    (the WAL spool, the restore record, a started server's socket)."""
    return to.parent / f".{to.name}.run"


def file_stats(to: Path, backup: BaseBackup) -> dict[str, list[int]]:
    """[device, inode, size, mtime_ns, ctime_ns] of each file of the backup's index in
    ``to`` (the restore takes them right after extracting)."""
    out: dict[str, list[int]] = {}
    for part in backup.parts:
        for path, _, _ in part.files:
            with contextlib.suppress(FileNotFoundError):
                st = os.lstat(to / path)
                out[path] = [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]
    return out


def write_record(to: Path, backup: BaseBackup, extracted: dict[str, list[int]], log: Log) -> int:
    """Write the restore record of ``to``: the files whose device, inode, size and mtime
    are still those ``file_stats`` saw right after the extraction; how many."""
    checksums = {path: c for part in backup.parts for path, _, c in part.files}
    now = file_stats(to, backup)
    files = {
        path: [*now[path], checksums[path]]
        for path, then in extracted.items()
        if path in now and now[path][:4] == then[:4] and checksums[path]
    }
    if files:
        newest = max(f[4] for f in files.values())
        coarse = all(f[4] % 1_000_000_000 == 0 for f in files.values())  # 1 s timestamps
        until = newest + (1_000_000_000 if coarse else 0) + _TICK_NS
        while (wait := until - time.time_ns()) > 0:
            time.sleep(wait / 1e9)
    folder = to.stat()
    doc = {
        "format": _RECORD_FORMAT,
        "backup": backup.label,
        "system_identifier": backup.system_identifier,
        "data_dir": [folder.st_dev, folder.st_ino],
        "written_ns": time.time_ns(),
        "files": files,
    }
    where = run_dir(to)
    tmp = where / f"{RECORD}.tmp-{os.getpid()}"
    try:
        if not where.is_dir():
            where.mkdir()
            hand_over(where)  # the restored server keeps its socket and log there
        with open(tmp, "w") as f:
            json.dump(doc, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, where / RECORD)
    except OSError as exc:  # the restore stands; a later --delta reads every file
        with contextlib.suppress(OSError):
            tmp.unlink()
        log(f"no restore record written ({exc}): a later --delta will read every file")
        return 0
    return len(files)


def take_record(to: Path, backup: BaseBackup) -> dict[str, list]:
    """The restore record of ``to`` when it is valid for it and ``backup``'s cluster (else
    nothing), removed: the files are about to change."""
    path = run_dir(to) / RECORD
    try:
        doc = json.loads(path.read_text())
        path.unlink()
    except (OSError, ValueError):
        return {}
    folder = to.stat()
    valid = (
        isinstance(doc, dict)
        and doc.get("format") == _RECORD_FORMAT
        and doc.get("data_dir") == [folder.st_dev, folder.st_ino]
        and doc.get("system_identifier") == backup.system_identifier
        and isinstance(doc.get("written_ns"), int)
        and doc["written_ns"] <= time.time_ns()  # else the clock went back: trust nothing
        and isinstance(doc.get("files"), dict)
    )
    return doc["files"] if valid else {}


def _vouched(path: Path, entry: list | None) -> bool:
    """Is ``path`` still the very file the record describes?"""
    if not isinstance(entry, list) or len(entry) != 6:
        return False
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns] == entry[:5]
