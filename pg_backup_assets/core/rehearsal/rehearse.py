"""One restore rehearsal: restore the offsite copy into a scratch server, recover it to a
restore point made for the purpose, verify it against what the source held at that point,
restore the week's logical dump too, time every phase, and leave nothing behind.

Scratch space is ``<scratch_dir or repository/.staging>/rehearsal-<cluster>``; one
rehearsal of a cluster runs at a time, and each first stops and removes whatever a killed
one left there.
"""

from __future__ import annotations

import datetime as dt
import io
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pg_backup_assets.core.base.restore import Target, restore
from pg_backup_assets.core.catalog import GLOBALS, RestorePoint, list_dump_sets
from pg_backup_assets.core.config import ClusterConfig, Config
from pg_backup_assets.core.dumps.restore import restore_dump
from pg_backup_assets.core.errors import PgBackupError
from pg_backup_assets.core.offsite.copy import ship_wal
from pg_backup_assets.core.offsite.store import offsite_repository
from pg_backup_assets.core.postgres.client import connect
from pg_backup_assets.core.postgres.local_cluster import LocalCluster
from pg_backup_assets.core.postgres.tables import table_state
from pg_backup_assets.core.progress import Log
from pg_backup_assets.core.rehearsal.checks import (
    TableRow,
    amcheck,
    checksums,
    compare_tables,
    smoke_queries,
)
from pg_backup_assets.core.rehearsal.reference import capture_reference
from pg_backup_assets.core.rehearsal.runbook import RUNBOOK, render_runbook
from pg_backup_assets.core.storage.repository import Repository
from pg_backup_assets.core.wal.archive import find
from pg_backup_assets.core.wal.names import Segment, format_lsn
from pg_backup_assets.core.wal.status import inspect_archive

REPORTS = "rehearsals"


@dataclass
class RehearsalReport:
    cluster: str
    week: str
    source: str  # "offsite" or "local"
    started_at: float = 0.0
    point: dict[str, Any] = field(default_factory=dict)
    backup: str = ""
    pg_major: int = 0
    wal: list[str] = field(default_factory=list)  # [first, last] segment the restore used
    wal_fetched_ahead: int = 0  # WAL files replay took from the restore's spool
    pinned: bool = False
    phases: dict[str, float] = field(default_factory=dict)
    rto_s: float | None = None  # None: not measured (the restore never got that far)
    rpo_s: float | None = None
    restored_bytes: int = 0
    tables: list[dict[str, Any]] = field(default_factory=list)
    checks: list[dict[str, Any]] = field(default_factory=list)  # amcheck, checksums, queries
    dump: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems

    @property
    def mismatches(self) -> int:
        return sum(1 for t in self.tables + self.dump.get("tables", []) if not t["ok"])

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RehearsalReport:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def week_of(day: dt.date) -> str:
    """The key of the week (starting on Sunday, as Dagster's weekly partitions) of ``day``."""
    return (day - dt.timedelta(days=(day.weekday() + 1) % 7)).isoformat()


def rehearse(config: Config, cluster_name: str, week: str, log: Log = print) -> RehearsalReport:
    """Rehearse a restore of ``cluster_name`` for the week starting ``week``."""
    cluster = config.cluster(cluster_name)
    repo = Repository.from_config(config)
    source = offsite_repository(config) if config.offsite else repo
    report = RehearsalReport(cluster.name, week, "offsite" if config.offsite else "local")
    report.started_at = time.time()
    with repo.lock(cluster.name, "rehearsal", config.timeouts.run_seconds, log):
        scratch = _clear_scratch(repo, cluster.name, log)
        servers: list[LocalCluster] = []
        try:
            _rehearse(config, cluster, repo, source, scratch, servers, report, log)
        except PgBackupError as exc:
            # A rehearsal that cannot restore has found what it exists to find.
            report.problems.append(str(exc).splitlines()[0])
        finally:
            for server in servers:
                server.stop(mode="immediate")
            shutil.rmtree(scratch, ignore_errors=True)
    report.phases["total_s"] = round(time.time() - report.started_at, 3)
    key = f"{cluster.name}/{REPORTS}/{week}/{report.point.get('name', 'none')}.json"
    repo.put_json(key, report.to_dict())
    if report.passed:
        # Refreshed where it is needed most: beside the copy a disaster restores from.
        runbook = render_runbook(config, cluster.name, report).encode()
        for store in {id(repo): repo, id(source): source}.values():
            with store.storage.writer(f"{cluster.name}/{RUNBOOK}") as f:
                f.write(runbook)
    verdict = "passed" if report.passed else f"FAILED ({len(report.problems)} problems)"
    log(f"rehearsal of {cluster.name} for the week of {week}: {verdict}")
    return report


def _rehearse(
    config: Config,
    cluster: ClusterConfig,
    repo: Repository,
    source: Repository,
    scratch: Path,
    servers: list[LocalCluster],
    report: RehearsalReport,
    log: Log,
) -> None:
    status = inspect_archive(repo, cluster, daily=config.retention.daily)
    report.rpo_s = round(_rpo(source, cluster.name), 1)
    name = f"rehearsal-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}"
    opts = config.rehearsal
    t0 = time.monotonic()
    reference = capture_reference(
        repo, cluster, name, opts.digests, opts.lock_timeout_ms, opts.lock_attempts, log
    )
    point = reference.point
    report.point = {
        "name": name,
        "lsn": format_lsn(point.lsn),
        "time": dt.datetime.fromtimestamp(point.time, dt.UTC).isoformat(),
    }
    report.pinned = reference.pinned
    report.phases["reference_s"] = round(reference.capture_s, 3)

    t0 = time.monotonic()
    segment = _wait_archived(repo, cluster, point, config.timeouts.archive_wait_seconds)
    if source is not repo:
        while not find(source, cluster.name, segment):
            ship_wal(repo, source, cluster.name)
    report.phases["ship_s"] = round(time.monotonic() - t0, 3)

    result = restore(
        source,
        cluster,
        config.source,
        scratch / "pitr",
        Target("name", name),
        start=True,
        force=True,
        log=log,
        source=report.source,
        archive_mode="off",
        s3_env=bool(config.offsite and config.offsite.s3),
    )
    servers.append(result.server)
    backup = result.backup
    report.backup = backup.label
    report.pg_major = backup.pg_major
    size = status.segment_size or 16 << 20
    report.wal = [Segment(backup.timeline, backup.start_lsn // size).name(size), segment]
    report.wal_fetched_ahead = result.wal_taken_ahead
    report.restored_bytes = backup.raw_bytes
    report.phases["fetch_s"] = round(result.fetch_extract_s, 3)
    report.phases["replay_s"] = round(result.replay_s or 0, 3)
    report.rto_s = round(result.rto_s, 3)

    t0 = time.monotonic()
    rows = compare_tables(result.dsn, reference.tables, reference.pinned)
    report.tables = [asdict(r) for r in rows]
    report.problems += [p for r in rows if (p := r.problem())]
    if opts.amcheck:
        _check(report, "pg_amcheck", *amcheck(result.dsn(), backup.pg_major))
    for query, ok, got in smoke_queries(result.dsn, _queries(config, cluster.name)):
        detail = f"{query.database}: {query.sql} returned {got!r}, expected {query.expect!r}"
        _check(report, "smoke query", ok, detail)
    result.server.stop()
    if backup.data_checksums:
        _check(report, "pg_checksums", *checksums(result.data_dir, result.server.bindir))
    report.phases["verify_s"] = round(time.monotonic() - t0, 3)

    t0 = time.monotonic()
    _rehearse_dump(source, cluster.name, report, scratch / "dump", servers, log)
    report.phases["dump_restore_s"] = round(time.monotonic() - t0, 3)


def _check(report: RehearsalReport, what: str, ok: bool, detail: str) -> None:
    report.checks.append({"check": what, "ok": ok, "detail": detail})
    if not ok:
        report.problems.append(f"{what}: {detail}")


def _queries(config: Config, cluster: str) -> list:
    return [q for q in config.rehearsal.queries if q.cluster in (None, cluster)]


def _rpo(source: Repository, cluster: str) -> float:
    """The data loss window if the cluster were lost now: the age of the newest WAL in the
    store a restore would use (offsite, when there is one)."""
    newest = max(
        (o.mtime for o in source.storage.list(f"{cluster}/wal/") if "/history/" not in o.key),
        default=None,
    )
    return time.time() - newest if newest is not None else float("inf")


def _wait_archived(
    repo: Repository, cluster: ClusterConfig, point: RestorePoint, timeout_s: float
) -> str:
    """Close the WAL segment holding the restore point; wait until wal-push archived it."""
    with connect(cluster.dsn, autocommit=True) as conn:
        (size,) = conn.execute(
            "SELECT setting::bigint * CASE unit WHEN 'B' THEN 1 WHEN 'MB' THEN 1048576 ELSE 1 "
            "END FROM pg_settings WHERE name = 'wal_segment_size'"
        ).fetchone()
        conn.execute("SELECT pg_switch_wal()")
    name = Segment(point.timeline, point.lsn // size).name(int(size))
    deadline = time.monotonic() + timeout_s
    while not find(repo, cluster.name, name):
        if time.monotonic() > deadline:
            raise PgBackupError(
                f"{name}, which holds restore point {point.name}, was not archived within "
                f"{timeout_s:.0f}s (timeouts.archive_wait_seconds): is archive_command working?"
            )
        time.sleep(0.2)
    return name


def _rehearse_dump(
    source: Repository,
    cluster: str,
    report: RehearsalReport,
    scratch: Path,
    servers: list[LocalCluster],
    log: Log,
) -> None:
    """Restore the week's newest logical dump into a new server; compare every table's rows
    with the counts taken in the dump's own snapshot."""
    week_start = dt.date.fromisoformat(report.week)
    week_end = (week_start + dt.timedelta(days=7)).isoformat()
    sets = [s for s in list_dump_sets(source, cluster) if report.week <= s.date < week_end]
    if not sets:
        report.problems.append(
            f"no logical dump of {cluster} in the week of {report.week} in the {report.source} "
            "store to rehearse"
        )
        return
    dump_set = sets[-1]
    server = LocalCluster(scratch)
    servers.append(server)
    server.init(fast=True).start()
    globals_sql = io.BytesIO()
    source.read_into(next(o for o in dump_set.objects if o.database == GLOBALS).record, globals_sql)
    # Roles first (so that owners exist); "already exists" for the bootstrap role is fine.
    subprocess.run(
        [str(server.bindir / "psql"), "-X", "-q", "-d", server.dsn(), "-f", "-"],
        input=globals_sql.getvalue(),
        capture_output=True,
        check=False,
    )
    rows: list[TableRow] = []
    for obj in dump_set.objects:
        if obj.database == GLOBALS:
            continue
        if obj.database != "postgres":
            with connect(server.dsn(), autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{obj.database}"')
        try:
            restore_dump(
                source, cluster, obj.database, server.dsn(obj.database), dump_set.date, log=log
            )
        except PgBackupError as exc:
            report.problems.append(f"restoring the dump of {obj.database}: {exc}")
            continue
        with connect(server.dsn(obj.database), autocommit=True) as conn:
            for table, count in obj.tables.items():
                try:
                    got = table_state(conn, table, digest=False).rows
                except Exception:  # noqa: BLE001 - missing table: reported as such
                    conn.rollback()
                    got = None
                rows.append(TableRow(obj.database, table, count, got, "rows", got == count))
    report.dump = {
        "set_id": dump_set.set_id,
        "date": dump_set.date,
        "tables": [asdict(r) for r in rows],
    }
    report.problems += [f"dump: {p}" for r in rows if (p := r.problem())]
    if not any(o.tables for o in dump_set.objects):
        report.problems.append(
            f"the dump {dump_set.set_id} has no row counts recorded (taken by an older version)"
        )


def _clear_scratch(repo: Repository, cluster: str, log: Log) -> Path:
    """This cluster's rehearsal scratch folder, emptied of what a killed rehearsal left."""
    scratch = repo.staging_base(scratch=True) / f"rehearsal-{cluster}"
    if scratch.exists():
        for pid_file in scratch.glob("**/postmaster.pid"):
            log(f"stopping the server a killed rehearsal left in {pid_file.parent}")
            LocalCluster(pid_file.parent.parent, data=pid_file.parent).stop(mode="immediate")
        shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    scratch.chmod(0o755)
    return scratch
