"""The WAL archive: ``wal-push`` (archive_command) and ``wal-fetch`` (restore_command).

This module is on PostgreSQL's hot path: archive_command runs once per segment, serially,
so it imports nothing heavy (no psycopg, no dagster, no boto3).

Layout under ``<cluster>/wal/``::

    <first 16 chars of the name>/<name>-<sha256 of the raw file>.zst[.age]   segments,
                                                                   .partial, .backup
    history/<TLI>.history-<sha256>.zst[.age]                       timeline histories
    history/<TLI>.history.json                                     its switch points (plain)

The raw sha256 in the object name lets a retried push tell "same content, already
archived" from "different content" without the decryption key, and lets wal-fetch check
the decoded file end to end.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import BinaryIO, NamedTuple

from pg_backup_assets.core.errors import IntegrityError, NotFoundError, PgBackupError
from pg_backup_assets.core.storage.base import fsync_dir
from pg_backup_assets.core.storage.codec import decode, encode, sha256_of
from pg_backup_assets.core.storage.repository import Repository
from pg_backup_assets.core.wal.names import (
    SegmentHeader,
    Switch,
    is_segment_name,
    parse_history,
    read_segment_header,
    wal_file_kind,
)


class ArchiveConflictError(PgBackupError):
    """A different file with the same WAL name is already archived."""


class Pushed(NamedTuple):
    """What ``push`` did: ``outcome`` is 'archived' or 'already archived'; ``key`` and
    ``stored_bytes`` name the durable object that holds the file."""

    outcome: str
    key: str
    stored_bytes: int


class WalObject(NamedTuple):
    name: str  # the WAL file name PostgreSQL uses
    kind: str  # segment / history / partial / backup
    key: str
    raw_sha256: str
    stored_bytes: int
    mtime: float


def wal_prefix(cluster: str) -> str:
    return f"{cluster}/wal/"


def _folder(cluster: str, name: str, kind: str) -> str:
    sub = "history" if kind == "history" else name[:16]
    return f"{wal_prefix(cluster)}{sub}/"


def _parse_key(key: str) -> tuple[str, str] | None:
    """(WAL name, raw sha256) from an object key, or None for other files."""
    base = key.rsplit("/", 1)[-1]
    if base.endswith(".zst.age"):
        stem = base[: -len(".zst.age")]
    elif base.endswith(".zst"):
        stem = base[: -len(".zst")]
    else:
        return None  # not an object of ours: a stray or moved-aside file
    if "-" not in stem:
        return None
    name, _, digest = stem.rpartition("-")
    if len(digest) != 64:
        return None
    return name, digest


def _open_source(path: Path) -> BinaryIO:
    try:
        return open(path, "rb")
    except OSError as exc:
        raise PgBackupError(f"wal-push: cannot read {path}: {exc.strerror}") from None


def find(repo: Repository, cluster: str, name: str) -> list[WalObject]:
    """Every archived object for WAL file ``name`` (normally zero or one)."""
    kind = wal_file_kind(name)
    out = []
    for info in repo.storage.list(f"{_folder(cluster, name, kind)}{name}-"):
        parsed = _parse_key(info.key)
        if parsed and parsed[0] == name:
            out.append(WalObject(name, kind, info.key, parsed[1], info.size, info.mtime))
    return out


def push(
    repo: Repository, cluster: str, path: str | os.PathLike[str], hash_aside: bool = True
) -> Pushed:
    """Archive one WAL file durably; what was done and the object that holds it.

    ``hash_aside``: hash the file on a thread of its own while compressing it (the
    synchronous call: a shorter wait when a core is free); the background pusher, whose
    workers keep the cores busy, hashes in the worker (measured: 9 % less CPU per segment).

    Raises ArchiveConflictError when the name is archived with different content (the
    archived copy is left untouched), and PgBackupError on any other failure, so that
    PostgreSQL keeps the file and retries.
    """
    src = Path(path)
    name = src.name
    try:
        kind = wal_file_kind(name)
    except ValueError as exc:
        raise PgBackupError(f"wal-push: {exc}") from None
    info = _archive_info(repo, cluster)
    header = _check_source(src, name, kind, cluster, info)
    existing = find(repo, cluster, name)
    if existing:
        # A retry (PostgreSQL re-runs archive_command after a crash) or a conflict.
        with _open_source(src) as f:
            digest, _ = sha256_of(f)
        same = [o for o in existing if o.raw_sha256 == digest]
        if same:
            if kind == "history":
                _write_history_switches(repo, cluster, name, src)
            return Pushed("already archived", same[0].key, same[0].stored_bytes)
        raise ArchiveConflictError(
            f"wal-push: {name} is already archived in {repo.describe()} with different content "
            f"(archived sha256 {existing[0].raw_sha256}, this file {digest}); the archived "
            "copy is kept. Another cluster may be archiving into this repository: give each "
            "cluster its own name in the config"
        )
    # One pass: compress, encrypt and hash together, then name the object after the hash.
    folder = _folder(cluster, name, kind)
    suffix = repo.codec.suffix
    encoded: list = []
    with (
        _open_source(src) as f,
        repo.storage.writer(
            f"{folder}{name}.incoming{suffix}",
            final_key=lambda: f"{folder}{name}-{encoded[0].raw_sha256}{suffix}",
        ) as out,
    ):
        encoded.append(encode(f, out, repo.codec, stored_sha256=False, hash_aside=hash_aside))
    if kind == "history":
        _write_history_switches(repo, cluster, name, src)
    elif header is not None and "system_identifier" not in info:
        # Recorded once: the segment size lets the gap checks name segments while the
        # server is down; the system identifier tells this cluster's WAL from another's.
        repo.put_json(
            _archive_info_key(cluster),
            {
                "segment_size": header.segment_size,
                "system_identifier": str(header.system_identifier),
            },
        )
    key = f"{folder}{name}-{encoded[0].raw_sha256}{suffix}"
    return Pushed("archived", key, encoded[0].stored_bytes)


def _archive_info(repo: Repository, cluster: str) -> dict:
    key = _archive_info_key(cluster)
    return repo.get_json(key) if repo.storage.exists(key) else {}


def _check_source(
    src: Path, name: str, kind: str, cluster: str, info: dict
) -> SegmentHeader | None:
    """Refuse what is not this cluster's whole WAL segment (``.history`` and ``.backup``
    files are text and carry no header)."""
    if kind not in ("segment", "partial"):
        return None
    with _open_source(src) as f:
        head = f.read(64)
        size = os.fstat(f.fileno()).st_size
    try:
        header = read_segment_header(name, head, size)
    except ValueError as exc:
        raise PgBackupError(f"wal-push: {exc}; nothing was archived") from None
    archived_sysid = info.get("system_identifier")
    if archived_sysid is not None and archived_sysid != str(header.system_identifier):
        raise PgBackupError(
            f"wal-push: {name} comes from the cluster with system identifier "
            f"{header.system_identifier}, but cluster {cluster!r} of this repository has "
            f"{archived_sysid}: another cluster is archiving under the name {cluster!r} (give "
            "each cluster its own name in the config), or the cluster was re-initialised "
            "(archive it under a new name); nothing was archived"
        )
    return header


def _archive_info_key(cluster: str) -> str:
    return f"{wal_prefix(cluster)}archive.json"


def recorded_segment_size(repo: Repository, cluster: str) -> int | None:
    """The server's WAL segment size as the first wal-push of a segment recorded it."""
    return _archive_info(repo, cluster).get("segment_size")


def is_segment_object(key: str) -> bool:
    """Is this archive object a whole WAL segment (not a .history/.partial/.backup file)?"""
    parsed = _parse_key(key)
    return bool(parsed) and is_segment_name(parsed[0])


def _write_history_switches(repo: Repository, cluster: str, name: str, src: Path) -> None:
    # The switch points, in the clear, so that gap checks need no decryption key.
    tli = int(name[:8], 16)
    switches = parse_history(tli, src.read_text(errors="replace"))
    key = f"{wal_prefix(cluster)}history/{name}.json"
    repo.put_json(
        key, {"timeline": tli, "switches": [[s.parent, s.child, s.lsn] for s in switches]}
    )


def fetch(repo: Repository, cluster: str, name: str, dest: str | os.PathLike[str]) -> int:
    """Restore WAL file ``name`` to ``dest`` (restore_command). Returns its size.

    NotFoundError when it is not archived (PostgreSQL probes for files that may not
    exist); IntegrityError when it exists but does not decode to its recorded sha256.
    """
    try:
        wal_file_kind(name)
    except ValueError as exc:
        raise NotFoundError(f"wal-fetch: {exc}") from None
    found = find(repo, cluster, name)
    if not found:
        raise NotFoundError(f"wal-fetch: {name} is not in the archive at {repo.describe()}")
    if len(found) > 1:
        raise IntegrityError(
            f"wal-fetch: {name} is archived {len(found)} times with different content: "
            + ", ".join(o.key for o in found)
        )
    obj = found[0]
    target = Path(dest)
    tmp = target.with_name(f".{target.name}.pgbackup-{os.getpid()}")
    try:
        with open(tmp, "wb") as out:
            size = read_checked(repo, obj, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
        fsync_dir(target.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return size


def read_checked(repo: Repository, obj: WalObject, out: BinaryIO) -> int:
    """Decode an archived WAL object into ``out``; IntegrityError unless what it decodes to
    has the sha256 its name records. Returns the WAL file's size."""
    with repo.storage.open(obj.key) as f:
        decoded = decode(
            f,
            out,
            name=obj.key,
            encrypted=obj.key.endswith(".age"),
            identities=repo.identities() if obj.key.endswith(".age") else (),
        )
    if decoded.raw_sha256 != obj.raw_sha256:
        raise IntegrityError(
            f"{obj.key} is damaged: it decodes to sha256 {decoded.raw_sha256}, "
            f"not the archived {obj.raw_sha256}"
        )
    return decoded.raw_bytes


class ArchiveListing(NamedTuple):
    segments: list[WalObject]
    histories: dict[int, list[Switch]]  # timeline -> its ancestry, oldest switch first
    other: list[WalObject]  # .partial and .backup files
    segment_size: int | None  # as recorded by the first wal-push of a segment
    history_files: list[WalObject]  # the .history objects

    @property
    def objects(self) -> list[WalObject]:
        """Every archived WAL object: segments, .history, .partial and .backup files."""
        return self.segments + self.history_files + self.other

    @property
    def newest_segment(self) -> WalObject | None:
        return max(self.segments, key=lambda o: o.name[8:] + o.name[:8], default=None)

    @property
    def newest_timeline(self) -> int:
        """The highest timeline among the segments and the histories (1 when empty): the
        one a recovery with ``recovery_target_timeline = 'latest'`` follows."""
        segments = {int(o.name[:8], 16) for o in self.segments}
        return max(segments | set(self.histories), default=1)

    @property
    def total_bytes(self) -> int:
        return sum(o.stored_bytes for o in self.objects)


def list_archive(repo: Repository, cluster: str) -> ArchiveListing:
    segments, other, history_files = [], [], []
    histories: dict[int, list[Switch]] = {}
    segment_size = None
    for info in repo.storage.list(wal_prefix(cluster)):
        if info.key == _archive_info_key(cluster):
            segment_size = repo.get_json(info.key)["segment_size"]
            continue
        if info.key.endswith(".history.json"):
            doc = repo.get_json(info.key)
            histories[doc["timeline"]] = [Switch(*s) for s in doc["switches"]]
            continue
        parsed = _parse_key(info.key)
        if not parsed:
            continue
        name, digest = parsed
        try:
            kind = wal_file_kind(name)
        except ValueError:
            continue
        obj = WalObject(name, kind, info.key, digest, info.size, info.mtime)
        {"segment": segments, "history": history_files}.get(kind, other).append(obj)
    return ArchiveListing(segments, histories, other, segment_size, history_files)


def pgbackup_executable() -> str:
    """The ``pgbackup`` script of this installation (beside the running interpreter)."""
    import shutil

    beside = Path(sys.executable).parent / "pgbackup"
    if beside.exists():
        return str(beside)
    found = shutil.which("pgbackup")
    if not found:
        raise PgBackupError("the pgbackup command is not installed (pip install pg-backup-assets)")
    return found


def archive_command(config_path: str | os.PathLike[str], cluster: str | None = None) -> str:
    """The ``archive_command`` setting that archives through ``pgbackup wal-push``; with
    ``archive.async`` preceded by a shell check that answers, without an interpreter, a
    call whose file the background pusher has already made durable (``pgbackup
    archive-command`` prints it)."""
    plain = _command(config_path, cluster, "wal-push %p")
    from pg_backup_assets.core.config import load_config
    from pg_backup_assets.core.wal.spool import done_check_command

    config = load_config(config_path, need_dsn_secrets=False)
    if not config.archive.asynchronous:
        return plain
    spool = config.archive.spool(config.repository, config.cluster(cluster).name)
    return done_check_command(str(spool), str(config.repository), plain)


def archiving_settings(
    config_path: str | os.PathLike[str], cluster: str | None = None
) -> dict[str, str]:
    """postgresql.conf settings that archive every WAL file through ``pgbackup wal-push``."""
    return {
        "archive_mode": "on",
        "archive_command": quote_setting(archive_command(config_path, cluster)),
    }


def quote_setting(value: str) -> str:
    """A string as a postgresql.conf value."""
    return "'" + value.replace("'", "''") + "'"


def restore_command(
    config_path: str | os.PathLike[str], cluster: str | None = None, source: str = "local"
) -> str:
    """The ``restore_command`` setting that restores through ``pgbackup wal-fetch``."""
    return _command(config_path, cluster, f"wal-fetch --source {source} %f %p")


def command_word(text: str) -> str:
    """``text`` as one word of an archive_command or restore_command: shell-quoted, and
    its ``%`` written ``%%`` (PostgreSQL reads %p, %f and %r in the command)."""
    import shlex

    return shlex.quote(text).replace("%", "%%")


def _command(config_path: str | os.PathLike[str], cluster: str | None, tail: str) -> str:
    parts = [pgbackup_executable(), "--config", str(Path(config_path).resolve())]
    if cluster:
        parts += ["--cluster", cluster]
    return " ".join(command_word(p) for p in parts) + " " + tail
