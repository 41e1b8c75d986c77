"""Physical base backups: ``pg_basebackup`` in tar format, stored in parts (see parts.py)
or as one server-zstd stream, plus the ``backup_manifest``, encrypted and checksummed into
the repository.

A backup lives under ``<cluster>/base/<day>/<label>/``; its ``catalog.json`` is written
last, so a backup that did not finish is never visible as one.
"""

from __future__ import annotations

import datetime as dt
import functools
import io
import json
import os
import re
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from pg_backup_assets.core.base.parts import (
    PartEncoder,
    Splitter,
    encoder_threads,
    index,
    wide_pipe,
)
from pg_backup_assets.core.catalog import CONTROL_FILE, BaseBackup, Part, base_prefix, check_date
from pg_backup_assets.core.config import BaseBackupLayout, ClusterConfig
from pg_backup_assets.core.errors import CommandError, PgBackupError
from pg_backup_assets.core.postgres.client import (
    connect,
    redact_dsn,
    server_facts,
    split_dsn,
    tool,
)
from pg_backup_assets.core.progress import Log, ProgressLog
from pg_backup_assets.core.storage.base import CHUNK
from pg_backup_assets.core.storage.repository import ObjectRecord, Repository
from pg_backup_assets.core.tools import require_zstd, stop
from pg_backup_assets.core.wal.names import format_lsn, parse_lsn


def _server_details(dsn: str) -> dict[str, Any]:
    with connect(dsn, autocommit=True) as conn:
        version = conn.execute("SELECT version()").fetchone()[0]
        checksums = conn.execute("SHOW data_checksums").fetchone()[0] == "on"
        tablespaces = conn.execute(
            "SELECT count(*) FROM pg_tablespace WHERE spcname NOT IN ('pg_default', 'pg_global')"
        ).fetchone()[0]
    m = re.search(r" on ([A-Za-z0-9_]+)-", version)
    return {
        "architecture": m.group(1) if m else "unknown",
        "data_checksums": checksums,
        "tablespaces": tablespaces,
    }


def _next_xid(dsn: str) -> int:
    with connect(dsn, autocommit=True) as conn:
        # Without taking an xid itself: the next one to be assigned.
        return int(conn.execute("SELECT pg_snapshot_xmax(pg_current_snapshot())").fetchone()[0])


def take_base_backup(
    repo: Repository,
    cluster: ClusterConfig,
    date: str,
    log: Log = print,
    archive_wait_s: int = 600,
    lock_wait_s: float = 6 * 3600,
    layout: BaseBackupLayout | None = None,
) -> BaseBackup:
    """pg_basebackup of ``cluster`` (fast checkpoint, tar) for ``date``: in parts, each
    compressed here (zstd), or with ``layout.parts`` off as one server-zstd stream.

    One base backup of a cluster at a time: a second one waits up to ``lock_wait_s`` for
    the first. ``archive_wait_s``: how long pg_basebackup may wait at its end for the
    server to archive the backup's last WAL segment; a server whose archiving is broken
    would otherwise keep it waiting for ever.
    """
    check_date(date)
    with repo.lock(cluster.name, "base_backup", lock_wait_s, log):
        repo.sweep_unfinished_sets(base_prefix(cluster.name), log)
        return _take_base_backup(repo, cluster, date, log, archive_wait_s, layout)


def _take_base_backup(
    repo: Repository,
    cluster: ClusterConfig,
    date: str,
    log: Log,
    archive_wait_s: int,
    layout: BaseBackupLayout | None,
) -> BaseBackup:
    facts = server_facts(cluster.dsn)
    details = _server_details(cluster.dsn)
    if details["tablespaces"]:
        raise PgBackupError(
            f"cluster {cluster.name} uses {details['tablespaces']} extra tablespaces; base "
            "backups of clusters with tablespaces are not supported yet (logical dumps are)"
        )
    start = time.time()
    # Microseconds: two backups of a cluster in one second never share a folder.
    stamp = dt.datetime.fromtimestamp(start, dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    label = f"pgbackup-{cluster.name}-{stamp}"
    prefix = f"{base_prefix(cluster.name)}{date}/{label}"
    # The application name finds this backup's walsender in pg_stat_activity.
    conninfo, env = split_dsn(cluster.dsn, application_name=label)
    layout = layout or BaseBackupLayout()
    with repo.staging() as staging, repo.new_set(prefix) as writer:
        log(f"pg_basebackup of {cluster.name} ({redact_dsn(cluster.dsn)}) as {label}")
        pgbb = [tool("pg_basebackup", facts.major), "-Ft", "-X", "none", "-c", "fast"]
        login = ["-l", label, "--no-password", "-d", conninfo]
        run = functools.partial(
            _run_bounded,
            env=env,
            log=log,
            dsn=cluster.dsn,
            label=label,
            archive_wait_s=archive_wait_s,
        )
        if layout.parts:
            objects, parts, checksums, manifest_bytes = _store_parts(
                repo, writer, staging, [*pgbb, "-D", "-", *login], run, layout, log
            )
            compression = (
                f"zstd level {repo.codec.level} (client), {len(parts)} parts of "
                f"{layout.part_size_mib} MiB"
            )
        else:
            objects, manifest_bytes = _store_single(repo, writer, staging, pgbb, login, run)
            parts, checksums, compression = (), "", "zstd level 3 (server)"
        manifest = json.loads(manifest_bytes)
        ranges = manifest["WAL-Ranges"]
        stop = time.time()
        next_xid = _next_xid(cluster.dsn)
        objects["backup_manifest"] = writer.put_stream(
            "backup_manifest", io.BytesIO(manifest_bytes)
        )
        backup = BaseBackup(
            cluster=cluster.name,
            date=date,
            label=label,
            catalog_key=f"{prefix}/catalog.json",
            start_lsn=parse_lsn(ranges[0]["Start-LSN"]),
            stop_lsn=parse_lsn(ranges[-1]["End-LSN"]),
            timeline=ranges[-1]["Timeline"],
            start_time=start,
            stop_time=stop,
            next_xid=next_xid,
            pg_major=facts.major,
            pg_version=facts.version,
            system_identifier=facts.system_identifier,
            architecture=details["architecture"],
            data_checksums=details["data_checksums"],
            compression=compression,
            objects=objects,
            stored_time=time.time(),
            data_bytes=sum(f["Size"] for f in manifest["Files"]),
            parts=parts,
            checksum_algorithm=checksums if parts else "",
        )
        writer.commit(backup.to_dict())
    log(
        f"base backup {label}: {backup.size_bytes:,} bytes stored in {backup.duration_s:.1f}s, "
        f"LSN {format_lsn(backup.start_lsn)}..{format_lsn(backup.stop_lsn)}"
    )
    return backup


def _store_parts(
    repo: Repository,
    writer: Any,
    staging: Path,
    args: list[str],
    run: Callable[..., None],
    layout: BaseBackupLayout,
    log: Log,
) -> tuple[dict[str, ObjectRecord], tuple[Part, ...], str, bytes]:
    """pg_basebackup's plain tar stream cut into parts, each encoded by a process of its
    own and stored; (objects, the index, its checksum algorithm, the manifest)."""
    require_zstd()  # before pg_basebackup starts
    threads = encoder_threads()
    splitter = Splitter(
        lambda name: PartEncoder(name, staging, repo.codec, threads), layout.part_size_mib << 20
    )
    try:
        run(args, measure=lambda: splitter.bytes_read, consume=splitter.split)
        if splitter.manifest is None:
            raise PgBackupError("pg_basebackup's stream held no backup_manifest")
        if splitter.control is None:
            raise PgBackupError(f"pg_basebackup's stream held no {CONTROL_FILE}")
        encoders = splitter.encoders()
        objects = {e.name: writer.put_encoded(e.name, e.path, e.result()) for e in encoders}
    except BaseException:
        for e in splitter.encoders():
            e.kill()
        raise
    parts, checksums = index(encoders, json.loads(splitter.manifest))
    log(f"stored {len(parts)} parts ({splitter.bytes_read / 2**20:,.0f} MiB of tar)")
    return objects, parts, checksums, splitter.manifest


def _store_single(
    repo: Repository,
    writer: Any,
    staging: Path,
    pgbb: list[str],
    login: list[str],
    run: Callable[..., None],
) -> tuple[dict[str, ObjectRecord], bytes]:
    """The layout before parts: one server-zstd tar stream, the object ``base.tar``."""
    out = staging / "backup"
    # zstd on the server, in parallel where the server's libzstd allows it; its output
    # goes to a staging folder (a compressed tar cannot carry the manifest on stdout).
    args = [*pgbb, "-D", str(out), "--compress=server-zstd:level=3,workers=2", *login]
    tar = out / "base.tar.zst"

    def sizes() -> int:
        return sum(p.stat().st_size for p in out.glob("*")) if out.exists() else 0

    objects = {}
    if repo.codec.encrypted:
        # Encrypted while pg_basebackup writes it, not in a second pass afterwards;
        # its file is only a scratch copy then (the object we store is fsynced).
        objects["base.tar"] = _store_while_written(
            writer, tar, lambda: run([*args, "--no-sync"], measure=sizes)
        )
    else:  # moved into the repository as pg_basebackup wrote (and fsynced) it
        run(args, measure=sizes)
        objects["base.tar"] = writer.put_file("base.tar", tar, precompressed=True)
    unexpected = sorted(set(os.listdir(out)) - {"base.tar.zst", "backup_manifest"})
    if unexpected:
        raise PgBackupError(f"pg_basebackup wrote unexpected files: {', '.join(unexpected)}")
    return objects, (out / "backup_manifest").read_bytes()


def _store_while_written(writer: Any, path: Path, produce: Callable[[], None]) -> ObjectRecord:
    """Run ``produce``, which writes ``path``, while a thread reads ``path`` as it grows
    and stores it as ``base.tar``; the stored object once both are done."""
    source = GrowingFile(path)
    outcome: dict[str, Any] = {}

    def store() -> None:
        try:
            outcome["record"] = writer.put_stream("base.tar", source, precompressed=True)
        except BaseException as exc:  # handed to the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=store, name="store base.tar")
    thread.start()
    try:
        try:
            produce()
        except BaseException:
            source.abandon()
            raise
        source.complete()
    finally:
        thread.join()
        source.close()
    if "error" in outcome:
        raise outcome["error"]
    record = outcome["record"]
    if record.raw_bytes != path.stat().st_size:  # every byte written was read
        raise PgBackupError(
            f"{path.name}: {record.raw_bytes:,} bytes stored, but pg_basebackup wrote "
            f"{path.stat().st_size:,}; the backup was not kept"
        )
    return record


class GrowingFile:
    """A file read while another process still writes it: at its current end ``read``
    waits for more, until the writer is ``complete`` (then the rest, and the end) or
    ``abandon``ed (then it raises)."""

    POLL_S = 0.02

    def __init__(self, path: Path):
        self.path = path
        self._file: BinaryIO | None = None
        self._done = threading.Event()
        self._complete = False

    def complete(self) -> None:
        self._complete = True
        self._done.set()

    def abandon(self) -> None:
        self._done.set()

    def read(self, n: int = -1) -> bytes:
        n = CHUNK if n is None or n < 0 else n
        while True:
            if self._file is None:
                try:
                    self._file = open(self.path, "rb")  # noqa: SIM115 - closed by close()
                except FileNotFoundError:
                    self._wait_or_end(missing=True)
                    continue
            data = self._file.read(n)
            if data:
                return data
            if self._wait_or_end():
                return self._file.read(n)  # what was written before the writer finished

    def _wait_or_end(self, missing: bool = False) -> bool:
        """True once the writer is done (the end is final); wait a little otherwise."""
        if self._done.is_set():
            if not self._complete:
                raise PgBackupError(f"{self.path.name}: its writer failed")
            if missing:
                raise PgBackupError(f"{self.path.name} was never written")
            return True
        self._done.wait(self.POLL_S)
        return False

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


_WAITING_FOR_ARCHIVE = "waiting for wal archiving to finish"  # pg_stat_progress_basebackup


def _run_bounded(
    args: list[str],
    env: dict[str, str],
    measure: Callable[[], int],
    log: Log,
    dsn: str,
    label: str,
    archive_wait_s: float,
    consume: Callable[[BinaryIO], None] | None = None,
) -> None:
    """Run pg_basebackup with progress lines (``measure``: bytes so far); stop it if the
    server's archiving keeps it waiting longer than ``archive_wait_s``, and say what
    pg_stat_archiver knows. ``consume``: reads its stdout, on a thread of its own."""
    progress = ProgressLog(log, "pg_basebackup" if consume else "pg_basebackup, compressed")
    waiting_since: float | None = None
    started = time.monotonic()
    outcome: dict[str, BaseException] = {}
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            args,
            stdout=subprocess.PIPE if consume else None,
            stderr=err,
            env={**os.environ, **env},
        )
        reader = None
        if consume is not None:
            wide_pipe(proc.stdout)

            def read() -> None:
                try:
                    consume(proc.stdout)
                except BaseException as exc:  # handed to the caller's thread
                    outcome["error"] = exc
                    try:  # pg_basebackup's own failure ends its stream too: it says why
                        proc.wait(timeout=5)
                    except subprocess.TimeoutExpired:  # nobody reads its stream any more
                        outcome["stopped"] = exc
                        proc.kill()

            reader = threading.Thread(target=read, name="pg_basebackup stream")
            reader.start()
        try:
            while True:
                try:
                    proc.wait(timeout=2)
                    break
                except subprocess.TimeoutExpired:
                    progress(measure())
                if _phase(dsn, label) != _WAITING_FOR_ARCHIVE:
                    waiting_since = None
                    continue
                waiting_since = waiting_since or time.monotonic()
                if time.monotonic() - waiting_since > archive_wait_s:
                    stop(proc)
                    raise CommandError(
                        f"pg_basebackup waited {archive_wait_s:.0f}s "
                        "(timeouts.archive_wait_seconds) for the server to archive its last "
                        f"WAL segment and was stopped: {_archiver_state(dsn)}. Fix "
                        "archive_command (the server log says why it fails), then back up again"
                    )
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if reader is not None:
                reader.join()
                proc.stdout.close()
        if proc.returncode != 0 and "stopped" not in outcome:
            err.seek(0)
            msg = err.read().decode(errors="replace").strip()
            raise CommandError(f"pg_basebackup failed (exit {proc.returncode}): {msg[-2000:]}")
        if "error" in outcome:
            raise outcome["error"]
    log(f"{PGBB_DONE} in {time.monotonic() - started:.1f}s")


PGBB_DONE = "pg_basebackup finished"  # a log line; benchmarks time the phases by it


def _phase(dsn: str, label: str) -> str | None:
    """The phase of this backup in pg_stat_progress_basebackup, if it is running."""
    try:
        with connect(dsn, autocommit=True) as conn:
            row = conn.execute(
                "SELECT p.phase FROM pg_stat_progress_basebackup p "
                "JOIN pg_stat_activity a USING (pid) WHERE a.application_name = %s",
                (label,),
            ).fetchone()
    except PgBackupError:
        return None  # the server is busy or briefly unreachable: judge at the next poll
    return row[0] if row else None


def _archiver_state(dsn: str) -> str:
    with connect(dsn, autocommit=True) as conn:
        failed, wal, at, archived = conn.execute(
            "SELECT failed_count, last_failed_wal, last_failed_time, last_archived_wal "
            "FROM pg_stat_archiver"
        ).fetchone()
    if not failed:
        return f"pg_stat_archiver shows no failure (last archived: {archived or 'none'})"
    return (
        f"pg_stat_archiver shows {failed} failures, the last for {wal} at {at:%Y-%m-%d %H:%M:%S%z} "
        f"(last archived: {archived or 'none'})"
    )
