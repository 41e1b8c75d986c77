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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pg_backup_assets.core.codec import Discard
from pg_backup_assets.core.config import ClusterConfig
from pg_backup_assets.core.errors import CommandError, NotFoundError, PgBackupError
from pg_backup_assets.core.pg import (
    available_extensions,
    extensions,
    redact_dsn,
    server_facts,
    split_dsn,
    tool,
    with_dbname,
)
from pg_backup_assets.core.repository import ObjectRecord, Repository, record_dict

Log = Callable[[str], None]
GLOBALS = "globals"
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


@dataclass(frozen=True)
class DumpObject:
    database: str  # GLOBALS for the pg_dumpall --globals-only part
    record: ObjectRecord
    duration_s: float
    extensions: dict[str, str] = field(default_factory=dict)


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
                )
                for o in d["objects"]
            ),
        )


def check_date(date: str) -> str:
    if not _DATE.match(date):
        raise PgBackupError(f"invalid date {date!r}: expected YYYY-MM-DD")
    try:
        dt.date.fromisoformat(date)
    except ValueError:
        raise PgBackupError(f"invalid date {date!r}: no such day") from None
    return date


def _prefix(cluster: str) -> str:
    return f"{cluster}/dumps/"


def take_dump_set(repo: Repository, cluster: ClusterConfig, date: str, log: Log = print) -> DumpSet:
    """Dump every configured database (and the globals) of ``cluster`` as the set for ``date``."""
    check_date(date)
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
    prefix = f"{_prefix(cluster.name)}{date}/{set_id}"
    objects: list[DumpObject] = []
    with repo.new_set(prefix) as writer:
        for db in databases:
            db_dsn = with_dbname(cluster.dsn, db)
            exts = extensions(db_dsn)
            conninfo, env = split_dsn(db_dsn)
            # -Z0: pg_dump's own compression off; zstd in the codec does it better.
            args = [tool("pg_dump", facts.major), "-Fc", "-Z0", "--no-password", "-d", conninfo]
            t0 = time.monotonic()
            record = _stream_command(writer, f"{db}.dump", args, env, f"pg_dump of {db}", log)
            elapsed = time.monotonic() - t0
            log(
                f"dumped {db}: {record.raw_bytes} bytes -> {record.stored_bytes} stored "
                f"in {elapsed:.1f}s"
            )
            objects.append(DumpObject(db, record, elapsed, exts))
        conninfo, env = split_dsn(cluster.dsn)
        args = [tool("pg_dumpall", facts.major), "--globals-only", "--no-password", "-d", conninfo]
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


def _stream_command(writer, name: str, args: list[str], env: dict[str, str], what: str, log: Log):  # noqa: ANN001
    """Run a dump command and stream its stdout into the set as object ``name``."""
    with tempfile.TemporaryFile() as errf:
        proc = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=errf, env={**os.environ, **env}
        )
        last = [time.monotonic()]

        def progress(n: int) -> None:
            now = time.monotonic()
            if now - last[0] >= 10:
                last[0] = now
                log(f"{what}: {n / 2**20:.0f} MiB so far")

        try:
            record = writer.put_stream(name, proc.stdout, progress)
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


def list_dump_sets(repo: Repository, cluster: str) -> list[DumpSet]:
    """Every complete dump set of ``cluster``, oldest first."""
    sets = [DumpSet.from_dict(k, d) for k, d in repo.catalogs(_prefix(cluster))]
    sets.sort(key=lambda s: (s.date, s.set_id))
    return sets


def find_dump_set(repo: Repository, cluster: str, date: str | None = None) -> DumpSet:
    """The newest complete dump set (for ``date`` when given)."""
    sets = list_dump_sets(repo, cluster)
    if date is not None:
        check_date(date)
        sets = [s for s in sets if s.date == date]
    if not sets:
        when = f" for {date}" if date else ""
        raise NotFoundError(
            f"no logical dump of cluster {cluster!r}{when} in the repository at {repo.describe()}"
        )
    return sets[-1]


@dataclass(frozen=True)
class ObjectVerdict:
    database: str
    ok: bool
    message: str
    toc_entries: int = 0


def check_restorable(repo: Repository, dump_set: DumpSet) -> list[ObjectVerdict]:
    """Decrypt/decompress every object of the set; ``pg_restore --list`` each database dump."""
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
    return verdicts


def restore_dump(
    repo: Repository,
    cluster: str,
    database: str,
    into_dsn: str,
    date: str | None = None,
    tables: Sequence[str] = (),
    no_owner: bool = False,
    log: Log = print,
) -> DumpSet:
    """Restore one database's dump into ``into_dsn`` (only ``tables`` when given)."""
    dump_set = find_dump_set(repo, cluster, date)
    obj = dump_set.database(database)
    # A damaged object must never reach the target database: verify before streaming.
    repo.verify(obj.record)
    missing = sorted(set(obj.extensions) - available_extensions(into_dsn))
    if missing:
        raise PgBackupError(
            f"the target {redact_dsn(into_dsn)} lacks extensions the dump of {database} uses: "
            f"{', '.join(missing)}; install them on the target server first"
        )
    conninfo, env = split_dsn(into_dsn)
    args = [
        tool("pg_restore", dump_set.server_major),
        "--exit-on-error",
        "--no-password",
        "-d",
        conninfo,
    ]
    if no_owner:
        args.append("--no-owner")
    for t in tables:
        args += ["-t", t]
    log(
        f"restoring {database} from the {dump_set.date} dump ({dump_set.set_id}) "
        f"into {redact_dsn(into_dsn)}" + (f", tables {', '.join(tables)}" if tables else "")
    )
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(args, stdin=subprocess.PIPE, stderr=err, env={**os.environ, **env})
        try:
            complete = repo.read_into_process(obj.record, proc)
        finally:
            rc = proc.wait()
        err.seek(0)
        msg = err.read().decode(errors="replace").strip()
    if rc != 0:
        raise CommandError(
            f"pg_restore into {redact_dsn(into_dsn)} failed (exit {rc}): {msg[-2000:]}"
        )
    if not complete and not tables:
        raise CommandError("pg_restore stopped reading the dump before its end")
    return dump_set
