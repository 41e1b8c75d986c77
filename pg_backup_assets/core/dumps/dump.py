"""Logical dumps: ``pg_dump -Fc`` per database plus ``pg_dumpall --globals-only``.

Each day's dumps form one set under ``<cluster>/dumps/<date>/<set id>/``; its catalog
entry records per-database sizes, checksums, durations and installed extensions.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import subprocess
import tempfile
import time
from dataclasses import dataclass

import psycopg

from pg_backup_assets.core.catalog import (
    GLOBALS,
    DumpObject,
    DumpSet,
    check_date,
    dump_prefix,
    record_verification,
)
from pg_backup_assets.core.config import ClusterConfig
from pg_backup_assets.core.errors import CommandError, PgBackupError
from pg_backup_assets.core.postgres.client import (
    connect,
    extensions,
    redact_dsn,
    server_facts,
    split_dsn,
    tool,
    with_dbname,
)
from pg_backup_assets.core.postgres.tables import table_state, user_tables
from pg_backup_assets.core.progress import Log, ProgressLog
from pg_backup_assets.core.storage.codec import Discard
from pg_backup_assets.core.storage.repository import Repository


def take_dump_set(
    repo: Repository,
    cluster: ClusterConfig,
    date: str,
    log: Log = print,
    lock_wait_s: int = 300,
    run_lock_wait_s: float = 6 * 3600,
) -> DumpSet:
    """Dump every configured database (and the globals) of ``cluster`` as the set for ``date``.

    ``lock_wait_s``: how long pg_dump may wait for a table lock (an open ALTER TABLE, say)
    before it gives up, instead of waiting for ever. One dump set of a cluster at a time:
    a second one waits up to ``run_lock_wait_s`` for the first.
    """
    check_date(date)
    with repo.lock(cluster.name, "logical_dump", run_lock_wait_s, log):
        repo.sweep_unfinished_sets(dump_prefix(cluster.name), log)
        return _take_dump_set(repo, cluster, date, log, lock_wait_s)


def _take_dump_set(
    repo: Repository, cluster: ClusterConfig, date: str, log: Log, lock_wait_s: int
) -> DumpSet:
    lock_wait = f"--lock-wait-timeout={lock_wait_s * 1000}"  # milliseconds
    facts = server_facts(cluster.dsn)
    databases = cluster.databases or facts.databases
    missing = sorted(set(databases) - set(facts.databases))
    if missing:
        raise PgBackupError(
            f"clusters.{cluster.name}.databases lists {', '.join(missing)}, which the server at "
            f"{redact_dsn(cluster.dsn)} does not have (it has: {', '.join(facts.databases)})"
        )
    started = time.time()
    set_id = dt.datetime.fromtimestamp(started, dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    prefix = f"{dump_prefix(cluster.name)}{date}/{set_id}"
    objects: list[DumpObject] = []
    with repo.new_set(prefix) as writer:
        for db in databases:
            db_dsn = with_dbname(cluster.dsn, db)
            exts = extensions(db_dsn)
            conninfo, env = split_dsn(db_dsn)
            t0 = time.monotonic()
            # pg_dump runs in a snapshot exported by a transaction that counts every table's
            # rows in that same snapshot: what a restore of the dump must hold, exactly.
            with connect(db_dsn) as snap:
                snap.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
                snap.read_only = True
                snap.execute(f"SET lock_timeout = {lock_wait_s * 1000}")
                snapshot = snap.execute("SELECT pg_export_snapshot()").fetchone()[0]
                # -Z0: pg_dump's own compression off; zstd in the codec does it better.
                args = [tool("pg_dump", facts.major), "-Fc", "-Z0", lock_wait, "--no-password"]
                args += [f"--snapshot={snapshot}", "-d", conninfo]
                try:
                    record = _stream_command(
                        writer, f"{db}.dump", args, env, f"pg_dump of {db}", log
                    )
                    counts = {t: table_state(snap, t, digest=False).rows for t in user_tables(snap)}
                except CommandError as exc:
                    raise _lock_wait_error(exc, db, lock_wait_s) from None
                except psycopg.errors.LockNotAvailable:
                    raise CommandError(
                        f"counting the rows of {db} waited {lock_wait_s}s "
                        "(timeouts.lock_wait_seconds) for a table lock and gave up"
                    ) from None
            elapsed = time.monotonic() - t0
            log(
                f"dumped {db}: {record.raw_bytes} bytes -> {record.stored_bytes} stored "
                f"in {elapsed:.1f}s ({len(counts)} tables, {sum(counts.values()):,} rows)"
            )
            objects.append(DumpObject(db, record, elapsed, exts, counts))
        conninfo, env = split_dsn(cluster.dsn)
        args = [tool("pg_dumpall", facts.major), "--globals-only", lock_wait, "--no-password"]
        args += ["-d", conninfo]
        t0 = time.monotonic()
        record = _stream_command(writer, "globals.sql", args, env, "pg_dumpall --globals-only", log)
        objects.append(DumpObject(GLOBALS, record, time.monotonic() - t0))
        dump_set = DumpSet(
            cluster=cluster.name,
            date=date,
            set_id=set_id,
            catalog_key=f"{prefix}/catalog.json",
            started_at=started,
            finished_at=time.time(),
            server_version=facts.version,
            server_major=facts.major,
            system_identifier=facts.system_identifier,
            objects=tuple(objects),
        )
        writer.commit(dump_set.to_dict())
    return dump_set


def _lock_wait_error(exc: CommandError, db: str, lock_wait_s: int) -> CommandError:
    """pg_dump reports its lock wait running out as a statement timeout on LOCK TABLE."""
    m = re.search(r"Query was: LOCK TABLE (\S+)", str(exc))
    if not m or "statement timeout" not in str(exc):
        return exc
    return CommandError(
        f"pg_dump of {db} waited {lock_wait_s}s (timeouts.lock_wait_seconds) for a lock on "
        f"{m.group(1)} and gave up: another session holds a conflicting lock on it (see "
        "pg_locks); back up again when it is released"
    )


def _stream_command(writer, name: str, args: list[str], env: dict[str, str], what: str, log: Log):  # noqa: ANN001
    """Run a dump command and stream its stdout into the set as object ``name``."""
    with tempfile.TemporaryFile() as errf:
        proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=errf, env={**os.environ, **env}
        )
        try:
            record = writer.put_stream(name, proc.stdout, ProgressLog(log, what))
        finally:
            proc.stdout.close()
            rc = proc.wait()
        if rc != 0:
            errf.seek(0)
            # The object was written from a failed dump: remove it with the set.
            raise CommandError(
                f"{what} failed (exit {rc}): {errf.read().decode(errors='replace').strip()[-2000:]}"
            )
    return record


@dataclass(frozen=True)
class ObjectVerdict:
    database: str
    ok: bool
    message: str
    toc_entries: int = 0


def check_restorable(repo: Repository, dump_set: DumpSet) -> list[ObjectVerdict]:
    """Decrypt/decompress every object of the set; ``pg_restore --list`` each database dump.
    The verdict is recorded beside the set."""
    verdicts = []
    for obj in dump_set.objects:
        try:
            if obj.database == GLOBALS:
                n = repo.read_into(obj.record, Discard()).raw_bytes
                verdicts.append(ObjectVerdict(GLOBALS, True, f"globals: {n} bytes of SQL"))
                continue
            with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
                args = [tool("pg_restore", dump_set.server_major), "--list"]
                proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=out, stderr=err)
                try:
                    repo.read_into_process(obj.record, proc)
                finally:
                    rc = proc.wait()
                if rc != 0:
                    err.seek(0)
                    msg = err.read().decode(errors="replace").strip()[-500:]
                    verdicts.append(ObjectVerdict(obj.database, False, f"pg_restore --list: {msg}"))
                    continue
                out.seek(0)
                entries = sum(
                    1 for line in out.read().decode().splitlines() if line and line[0] != ";"
                )
            verdicts.append(
                ObjectVerdict(obj.database, True, f"{obj.database}: {entries} TOC entries", entries)
            )
        except PgBackupError as exc:
            verdicts.append(ObjectVerdict(obj.database, False, str(exc)))
    failed = [v.message for v in verdicts if not v.ok]
    # Recorded beside the set, as for base backups: retention promotes verified sets only.
    record_verification(repo, dump_set, not failed, "; ".join(failed) or "every object read back")
    return verdicts
