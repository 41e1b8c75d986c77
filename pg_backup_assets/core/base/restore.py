"""Point-in-time restore: pick the base backup for a target, extract it, write the
recovery settings, and (with ``start``) run the server until the target is reached."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from pg_backup_assets.core.base.extract import (
    ExtractStats,
    extract_parts,
    extract_stored,
    file_stats,
    open_stored,
    run_dir,
    write_record,
)
from pg_backup_assets.core.base.extract import empty_folder as _empty
from pg_backup_assets.core.catalog import BaseBackup, find_restore_point, list_base_backups
from pg_backup_assets.core.config import ClusterConfig
from pg_backup_assets.core.errors import NotFoundError, PgBackupError
from pg_backup_assets.core.postgres.client import bindir, dsn_at
from pg_backup_assets.core.postgres.local_cluster import LocalCluster, hand_over, hand_over_tree
from pg_backup_assets.core.progress import Log, ProgressLog
from pg_backup_assets.core.storage.repository import Repository
from pg_backup_assets.core.wal.archive import (
    ArchiveListing,
    list_archive,
    quote_setting,
    restore_command,
)
from pg_backup_assets.core.wal.names import Segment, find_gaps, format_lsn, parse_lsn, parse_segment
from pg_backup_assets.core.wal.prefetch import (
    Prefetcher,
    absent_histories,
    spool_restore_command,
    wal_to_replay,
)

TARGET_KINDS = ("time", "lsn", "xid", "name")


@dataclass(frozen=True)
class Target:
    kind: str  # time / lsn / xid / name / latest
    value: str = ""

    @classmethod
    def parse(cls, kind: str | None, value: str | None) -> Target:
        if kind is None:
            return cls("latest")
        if kind == "time":
            parse_time(value or "")
        elif kind == "lsn":
            try:
                parse_lsn(value or "")
            except ValueError as exc:
                raise PgBackupError(f"--target-lsn: {exc}") from None
        elif kind == "xid" and not (value or "").isdigit():
            raise PgBackupError(f"--target-xid {value!r}: expected a transaction id number")
        elif kind == "name" and not value:
            raise PgBackupError("--target-name needs a restore point name")
        elif kind not in TARGET_KINDS:
            raise PgBackupError(f"unknown recovery target kind {kind!r}")
        return cls(kind, value or "")

    def describe(self) -> str:
        return "the end of the archive" if self.kind == "latest" else f"{self.kind} {self.value}"

    def settings(self) -> dict[str, str]:
        if self.kind == "latest":
            return {}
        value = self.value
        if self.kind == "time":
            value = parse_time(value).isoformat(sep=" ")
        return {f"recovery_target_{self.kind}": quote_setting(value)}


def parse_time(value: str) -> dt.datetime:
    try:
        t = dt.datetime.fromisoformat(value.strip().replace(" UTC", "+00:00"))
    except ValueError:
        raise PgBackupError(
            f"--target-time {value!r}: expected an ISO 8601 time such as 2026-11-26T14:30:00Z"
        ) from None
    if t.tzinfo is None:
        raise PgBackupError(
            f"--target-time {value!r} has no time zone; add one (e.g. {value}Z for UTC or "
            f"{value}+01:00) so that the restore cannot land an hour off"
        )
    return t


def choose_backup(
    backups: list[BaseBackup], target: Target, target_lsn: int | None = None
) -> BaseBackup:
    """The newest backup that finished before ``target`` (``backups`` oldest first)."""
    if not backups:
        raise NotFoundError("there is no base backup to restore from")
    if target.kind == "latest" or (target.kind == "name" and target_lsn is None):
        # A restore point we did not record: the oldest backup replays the most WAL.
        return backups[-1] if target.kind == "latest" else backups[0]
    if target.kind == "time":
        when = parse_time(target.value).timestamp()
        ok = [b for b in backups if b.stop_time <= when]
        oldest = dt.datetime.fromtimestamp(backups[0].stop_time, dt.UTC).isoformat()
        why = f"the oldest restorable time is {oldest} (the end of backup {backups[0].label})"
    elif target.kind == "xid":
        xid = int(target.value)
        ok = [b for b in backups if b.next_xid <= xid]
        why = (
            f"the oldest backup ({backups[0].label}) covers transactions from {backups[0].next_xid}"
        )
    else:
        lsn = target_lsn if target_lsn is not None else parse_lsn(target.value)
        ok = [b for b in backups if b.stop_lsn <= lsn]
        why = f"the oldest restorable LSN is {format_lsn(backups[0].stop_lsn)}"
    if not ok:
        raise NotFoundError(f"no base backup finishes before {target.describe()}: {why}")
    return ok[-1]


@dataclass
class RestoreResult:
    backup: BaseBackup
    target: Target
    data_dir: Path
    fetch_extract_s: float
    replay_s: float | None = None
    reached_lsn: str | None = None
    reached_time: str | None = None
    stop_reason: str | None = None
    server: LocalCluster | None = None
    phases: dict[str, float] = field(default_factory=dict)
    cluster_dsn: str = ""  # the source's DSN: its user and credentials reach the copy too
    started_at: float | None = None  # time.monotonic() when fetching began
    usable_s: float | None = None  # from then until the started copy accepts writes
    # With ``start``: the WAL files replay was expected to ask for, and how many of them
    # were fetched ahead of it (the rest, and anything else, by restore_command's wal-fetch).
    wal_wanted: int = 0
    wal_fetched_ahead: int = 0
    wal_taken_ahead: int = 0  # of those, how many replay took from the spool
    extracted: ExtractStats | None = None  # files written (kept and removed: --delta)

    @property
    def rto_s(self) -> float:
        """Time to a usable server: everything from the first byte fetched (the syncs,
        ownership and settings between the phases too), or the phases without a start."""
        if self.usable_s is not None:
            return self.usable_s
        return self.fetch_extract_s + (self.replay_s or 0)

    def dsn(self, dbname: str | None = None) -> str:
        """How to reach the started copy: the source's user and password (the copy has the
        source's roles and pg_hba.conf), on the copy's loopback port."""
        if self.server is None:
            raise PgBackupError("the restored copy was not started")
        return dsn_at(self.cluster_dsn, self.server.port, dbname)


def restore(
    repo: Repository,
    cluster: ClusterConfig,
    config_path: Path,
    to: Path,
    target: Target,
    start: bool = False,
    force: bool = False,
    log: Log = print,
    timeout_s: float = 3600,
    source: str = "local",
    archive_mode: str = "off",
    s3_env: bool = False,
    workers: int | None = None,
    delta: bool = False,
) -> RestoreResult:
    """Restore from ``repo`` (the local repository, or the offsite one: ``source``).

    ``archive_mode`` (pgBackRest's name and meaning): ``off``, the copy never archives
    (a scratch or inspection copy must not push a new timeline into the source's
    repository); ``preserve``, it keeps the source's archive settings (a copy that is to
    replace the source archives its new timeline there). ``s3_env``: the restored server's
    restore_command may read S3, so it gets this process's AWS credentials. ``workers``:
    parts extracted at once (default: one per core). ``delta``: ``to`` holds an older copy
    of the same cluster; only what differs from the backup is written (pgBackRest's
    meaning). Everything is checked before anything in ``to`` is touched.
    """
    if archive_mode not in ARCHIVE_MODES:
        raise PgBackupError(
            f"--archive-mode {archive_mode!r}: expected one of {', '.join(ARCHIVE_MODES)}"
        )
    to = to.resolve()
    _check_target_dir(to, force or delta)
    _check_target_time(target)
    backups = list_base_backups(repo, cluster.name)
    point_lsn = None
    if target.kind == "name":
        point = find_restore_point(repo, cluster.name, target.value)
        if point is None:
            log(f"restore point {target.value!r} is not in the catalog: using the oldest backup")
        else:
            point_lsn = point.lsn
    backup = choose_backup(backups, target, point_lsn)
    _check_compatible(backup, start)
    needed_to = (
        point_lsn
        if point_lsn is not None
        else (parse_lsn(target.value) if target.kind == "lsn" else None)
    )
    listing = _check_wal(repo, cluster.name, backup, target, needed_to)
    span = f"{format_lsn(backup.start_lsn)}..{format_lsn(backup.stop_lsn)}"
    log(
        f"restoring {backup.label} (LSN {span}, {backup.size_bytes:,} bytes) into {to}, "
        f"recovering to {target.describe()}"
    )

    t0 = time.monotonic()
    if force and to.exists() and not delta:
        _empty(to)
    to.mkdir(parents=True, exist_ok=True)
    extracted = extract_backup(repo, backup, to, log, workers, delta)
    as_extracted = file_stats(to, backup)  # what the restore record vouches for, later
    with open(to / "backup_manifest", "wb") as f:
        repo.read_into(backup.objects["backup_manifest"], f)
    fetch_extract_s = time.monotonic() - t0

    fetch_wal = restore_command(config_path, cluster.name, source)
    # With the server to start: fetch the WAL replay will ask for while the rest is
    # prepared and while replay runs.
    spool = (
        Prefetcher(
            repo,
            wal_to_replay(listing, backup.start_lsn, needed_to),
            run_dir(to) / "wal-spool",
            own=hand_over,
            absent=absent_histories(listing),
        )
        if start
        else contextlib.nullcontext()
    )
    with spool as prefetch:
        command = spool_restore_command(prefetch.spool, fetch_wal) if start else fetch_wal
        settings = {
            "restore_command": quote_setting(command),
            "recovery_target_action": "'promote'",
            "recovery_target_timeline": "'latest'",
            **target.settings(),
            **({"archive_mode": "'off'"} if archive_mode == "off" else {}),
        }
        with open(to / "postgresql.auto.conf", "a") as f:
            f.write(f"\n# written by pgbackup restore of {backup.label}\n")
            f.writelines(f"{k} = {v}\n" for k, v in settings.items())
        (to / "recovery.signal").touch()
        hand_over_tree(to)
        os.chmod(to, 0o700)
        # What tar wrote sits in the page cache: make it durable before saying "restored".
        subprocess.run(["sync", "-f", str(to)], check=False)
        if backup.parts:  # a later --delta reads only what changed since
            write_record(to, backup, as_extracted, log)
        result = RestoreResult(
            backup,
            target,
            to,
            fetch_extract_s,
            cluster_dsn=cluster.dsn,
            started_at=t0,
            extracted=extracted,
        )
        result.phases["fetch_extract_s"] = fetch_extract_s
        log(
            f"extracted in {fetch_extract_s:.1f}s; recovery settings written to "
            "postgresql.auto.conf"
        )
        if not start:
            return result
        root = getattr(repo.storage, "root", None)
        # A folder store: the restored server's OS user reads WAL from it (every folder).
        folders = list(Path(root).joinpath(cluster.name, "wal").glob("**/")) if root else []
        _start_and_wait(result, config_path, log, timeout_s, s3_env, folders)
        _unspool_restore_command(to, command, fetch_wal)
        result.wal_wanted = len(prefetch.wanted)
        result.wal_fetched_ahead = len(prefetch.fetched)
        missed = ", ".join(sorted(prefetch.failed))
        log(
            f"WAL: {len(prefetch.fetched)} of {len(prefetch.wanted)} files fetched ahead "
            "of replay" + (f"; not fetched ahead: {missed}" if missed else "")
        )
    result.wal_taken_ahead = prefetch.taken  # known once the spool is closed
    return result


def _unspool_restore_command(to: Path, spooled: str, plain: str) -> None:
    """Once recovery is over the spool is gone: the copy's restore_command (should it ever
    recover from the archive again) goes back to plain ``wal-fetch``."""
    conf = to / "postgresql.auto.conf"
    text = conf.read_text()
    new = text.replace(quote_setting(spooled), quote_setting(plain))
    if new == text:
        return
    tmp = conf.with_name(f".{conf.name}.pgbackup")
    with open(tmp, "w") as f:
        f.write(new)
        f.flush()
        os.fsync(f.fileno())
    shutil.copymode(conf, tmp)
    hand_over(tmp)
    os.replace(tmp, conf)


ARCHIVE_MODES = ("off", "preserve")


def _check_target_time(target: Target) -> None:
    if target.kind != "time":
        return
    when = parse_time(target.value)
    now = dt.datetime.now(dt.UTC)
    if when > now + dt.timedelta(minutes=1):
        raise PgBackupError(
            f"--target-time {target.value} is in the future (it is now "
            f"{now:%Y-%m-%d %H:%M:%S} UTC): there is nothing to recover up to it yet; leave "
            "the target out to recover to the end of the archive"
        )


def _check_target_dir(to: Path, force: bool) -> None:
    """A new or empty folder; with ``force`` a non-empty one (emptied later, once every
    check has passed), but never one a server is running in."""
    pid = _live_postmaster(to)
    if pid is not None:
        raise PgBackupError(
            f"a PostgreSQL server is running in {to} (postmaster.pid: process {pid}); stop it "
            "before restoring into that folder"
        )
    if to.exists() and any(to.iterdir()) and not force:
        raise PgBackupError(
            f"{to} is not empty; restore into an empty or new folder (or pass --force to "
            "delete what is in it first)"
        )


def _live_postmaster(data: Path) -> int | None:
    try:
        pid = int((data / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid  # alive, another user's
    return pid


def _check_compatible(backup: BaseBackup, start: bool) -> None:
    here = platform.machine()
    if backup.architecture not in (here, "unknown"):
        raise PgBackupError(
            f"backup {backup.label} is from a {backup.architecture} server; this machine is "
            f"{here}. Physical backups restore only on the same architecture: use a logical "
            "dump (restore-dump) to move across"
        )
    if start:
        binaries = bindir(backup.pg_major)
        if not (binaries / "postgres").exists() or f"/{backup.pg_major}/" not in f"{binaries}/":
            raise PgBackupError(
                f"backup {backup.label} is PostgreSQL {backup.pg_major}; this machine has no "
                f"PostgreSQL {backup.pg_major} server binaries to start it with (physical "
                "backups only restore on the same major version)"
            )


def _check_wal(
    repo: Repository, cluster: str, backup: BaseBackup, target: Target, needed_to: int | None
) -> ArchiveListing:
    """Refuse, before any work, a restore that the archive cannot complete; the listing."""
    listing = list_archive(repo, cluster)
    size = listing.segment_size
    if size is None:
        raise PgBackupError(
            f"no WAL is archived for cluster {cluster}: backup {backup.label} needs the WAL "
            f"from {format_lsn(backup.start_lsn)} to {format_lsn(backup.stop_lsn)} to be consistent"
        )
    gaps = find_gaps((o.name for o in listing.segments), listing.histories, size, backup.start_lsn)
    last_needed = Segment(backup.timeline, backup.stop_lsn // size)
    if needed_to is not None:
        last_needed = Segment(backup.timeline, max(needed_to, backup.stop_lsn) // size)
    newest = listing.newest_segment
    if newest is None or newest.name[8:] < last_needed.name(size)[8:]:
        have = newest.name if newest else "none"
        raise PgBackupError(
            f"the WAL archive ends at {have}, before {last_needed.name(size)}, which the restore "
            f"to {target.describe()} needs"
        )
    for first, last in gaps.missing:
        if target.kind == "latest" or parse_segment(first, size).segno <= last_needed.segno:
            raise PgBackupError(
                f"WAL segment {first}{'' if first == last else '..' + last} is missing from the "
                f"archive, and the restore of {backup.label} to {target.describe()} needs it; "
                "choose a target before the gap (e.g. --target-lsn) or a newer backup"
            )
    return listing


def extract_backup(
    repo: Repository,
    backup: BaseBackup,
    to: Path,
    log: Log,
    workers: int | None = None,
    delta: bool = False,
) -> ExtractStats:
    """Decrypt, decompress and extract a base backup into ``to`` (stored: age(zstd(tar))).

    A backup in parts is extracted by ``workers`` at once (see extract.py), with ``delta``
    into an older copy of the same cluster. A backup in one stream (``base.tar``): its
    stored bytes are hashed while it is extracted; if they do not match the catalog, or
    anything else fails, what was extracted is removed again and the restore fails.
    """
    if backup.parts:
        return extract_parts(repo, backup, to, log, workers, delta)
    if delta:
        raise PgBackupError(
            f"--delta: backup {backup.label} is one stream (base.tar), without the index of "
            "files a delta restore compares: restore it with --force instead"
        )
    record = backup.objects["base.tar"]
    if record.encrypted:
        repo.identities()  # fail before anything is written
    log(f"extracting {record.stored_bytes / 2**20:,.0f} MiB (compressed)")
    progress = ProgressLog(log, "extracting", record.stored_bytes, every_s=5)
    try:
        with open_stored(repo, record, progress) as stored:
            extract_stored(repo, record, stored, to)
    except PgBackupError as exc:
        _empty(to)
        raise type(exc)(f"{exc}; nothing was restored into {to}") from None
    return ExtractStats(parts=1, parts_read=1, bytes_written=backup.raw_bytes)


_STOP_RE = re.compile(r"LOG:\s+(recovery stopping .*)")
_LAST_TX_RE = re.compile(r"last completed transaction was at log time (.+)")
_MISSING_RE = re.compile(r"wal-fetch: ([0-9A-F]{24}) is not in the archive")


# What the restored server's restore_command needs to read S3, and nothing more: the
# postmaster's environment reaches every process it starts.
_AWS_ENV = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_CA_BUNDLE",
)


def _start_and_wait(
    result: RestoreResult,
    config_path: Path,
    log: Log,
    timeout_s: float,
    s3_env: bool,
    wal_folders: list[Path],
) -> None:
    to = result.data_dir
    server = LocalCluster(run_dir(to), major=result.backup.pg_major, data=to)
    server.adopt(owned=True)  # restore() handed the folder over
    if not server.readable_by_server(Path(config_path)):
        raise PgBackupError(
            f"the server's OS user cannot read {config_path}, which its restore_command needs"
        )
    folder = server.unreadable_folder(wal_folders)
    if folder is not None:
        raise PgBackupError(
            f"the server's OS user cannot read {folder}, where its restore_command fetches "
            "WAL: give it access (repository_mode.group, with that user in the group)"
        )
    log(f"starting the restored server on port {server.port} (log: {server.logfile})")
    t0 = time.monotonic()
    try:
        aws = {k: os.environ[k] for k in _AWS_ENV if s3_env and k in os.environ}
        server.start(timeout=int(timeout_s), env=aws)
        copy = dsn_at(result.cluster_dsn, server.port)
        deadline = time.monotonic() + timeout_s
        while True:
            with psycopg.connect(copy, autocommit=True, connect_timeout=10) as conn:
                if not conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
                    lsn = conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
                    break
            if time.monotonic() > deadline:
                raise PgBackupError(f"recovery did not finish within {timeout_s:.0f}s")
            time.sleep(0.2)
    except BaseException as exc:
        # Recovery may end in FATAL after the server first accepted connections; and an
        # interrupted restore must not leave a server running that nobody knows of.
        server.stop(mode="immediate")
        if not isinstance(exc, (PgBackupError, OSError, psycopg.Error)):
            raise
        log_text = server.logfile.read_text(errors="replace") if server.logfile.exists() else ""
        missing = _MISSING_RE.findall(log_text)
        if "recovery ended before configured recovery target was reached" in log_text:
            what = f"; WAL segment {missing[-1]} is not in the archive" if missing else ""
            raise PgBackupError(
                f"recovery ended before reaching {result.target.describe()}{what}. The partial "
                f"restore is left in {to} for inspection"
            ) from None
        raise PgBackupError(f"{exc}\nThe partial restore is left in {to}") from None
    result.replay_s = time.monotonic() - t0
    result.phases["replay_s"] = result.replay_s
    if result.started_at is not None:
        result.usable_s = time.monotonic() - result.started_at
        result.phases["usable_s"] = result.usable_s
    text = server.logfile.read_text(errors="replace")
    stops = _STOP_RE.findall(text)
    last_tx = _LAST_TX_RE.findall(text)
    result.stop_reason = stops[-1] if stops else None
    result.reached_time = last_tx[-1].strip() if last_tx else None
    result.reached_lsn = str(lsn)
    result.server = server
    log(
        f"recovered to {result.reached_lsn} (last transaction {result.reached_time or 'n/a'}) "
        f"in {result.replay_s:.1f}s; the server runs on port {server.port}"
    )
