"""Physical base backups: ``pg_basebackup`` in tar format, server-side zstd, plus the
``backup_manifest``, encrypted and checksummed into the repository.

A backup lives under ``<cluster>/base/<day>/<label>/``; its ``catalog.json`` is written
last, so a backup that did not finish is never visible as one.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pg_backup_assets.core.config import ClusterConfig
from pg_backup_assets.core.dumps import Log, check_date
from pg_backup_assets.core.errors import CommandError, NotFoundError, PgBackupError
from pg_backup_assets.core.pg import connect, redact_dsn, server_facts, split_dsn, tool
from pg_backup_assets.core.repository import ObjectRecord, Repository, record_dict
from pg_backup_assets.core.wal import format_lsn, parse_lsn

VERIFIED = "verified.json"


@dataclass(frozen=True)
class BaseBackup:
    cluster: str
    date: str
    label: str
    catalog_key: str
    start_lsn: int
    stop_lsn: int
    timeline: int
    start_time: float
    stop_time: float
    next_xid: int  # the next transaction id when the backup finished
    pg_major: int
    pg_version: str
    system_identifier: str
    architecture: str
    data_checksums: bool
    compression: str
    objects: dict[str, ObjectRecord]  # "base.tar", "backup_manifest"
    tier: str = "daily"

    @property
    def size_bytes(self) -> int:
        return sum(o.stored_bytes for o in self.objects.values())

    stored_time: float = 0.0  # when every object was durable in the repository

    @property
    def duration_s(self) -> float:
        """Wall time from start to the backup being stored (what the asset took)."""
        return max(self.stored_time, self.stop_time) - self.start_time

    @property
    def prefix(self) -> str:
        return self.catalog_key.rsplit("/", 1)[0]

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "base_backup",
            "cluster": self.cluster,
            "date": self.date,
            "label": self.label,
            "start_lsn": format_lsn(self.start_lsn),
            "stop_lsn": format_lsn(self.stop_lsn),
            "timeline": self.timeline,
            "start_time": self.start_time,
            "stop_time": self.stop_time,
            "next_xid": self.next_xid,
            "pg_major": self.pg_major,
            "pg_version": self.pg_version,
            "system_identifier": self.system_identifier,
            "architecture": self.architecture,
            "data_checksums": self.data_checksums,
            "compression": self.compression,
            "tier": self.tier,
            "stored_time": self.stored_time,
            "objects": {k: record_dict(v) for k, v in self.objects.items()},
        }

    @classmethod
    def from_dict(cls, key: str, d: dict[str, Any]) -> BaseBackup:
        return cls(
            cluster=d["cluster"],
            date=d["date"],
            label=d["label"],
            catalog_key=key,
            start_lsn=parse_lsn(d["start_lsn"]),
            stop_lsn=parse_lsn(d["stop_lsn"]),
            timeline=d["timeline"],
            start_time=d["start_time"],
            stop_time=d["stop_time"],
            next_xid=d["next_xid"],
            pg_major=d["pg_major"],
            pg_version=d["pg_version"],
            system_identifier=d["system_identifier"],
            architecture=d["architecture"],
            data_checksums=d["data_checksums"],
            compression=d["compression"],
            objects={k: ObjectRecord.from_dict(v) for k, v in d["objects"].items()},
            tier=d.get("tier", "daily"),
            stored_time=d.get("stored_time", 0.0),
        )


def _prefix(cluster: str) -> str:
    return f"{cluster}/base/"


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
    repo: Repository, cluster: ClusterConfig, date: str, log: Log = print
) -> BaseBackup:
    """pg_basebackup of ``cluster`` (fast checkpoint, tar, server-side zstd) for ``date``."""
    check_date(date)
    facts = server_facts(cluster.dsn)
    details = _server_details(cluster.dsn)
    if details["tablespaces"]:
        raise PgBackupError(
            f"cluster {cluster.name} uses {details['tablespaces']} extra tablespaces; base "
            "backups of clusters with tablespaces are not supported yet (logical dumps are)"
        )
    start = time.time()
    stamp = dt.datetime.fromtimestamp(start, dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    label = f"pgbackup-{cluster.name}-{stamp}"
    prefix = f"{_prefix(cluster.name)}{date}/{label}"
    # zstd on the server, in parallel where the server's libzstd allows it; its output
    # goes to a staging folder (a compressed tar cannot carry the manifest on stdout).
    compression = "server-zstd:level=3,workers=2"
    conninfo, env = split_dsn(cluster.dsn)
    with repo.staging() as staging:
        out = staging / "backup"
        args = [
            tool("pg_basebackup", facts.major),
            "-D",
            str(out),
            "-Ft",
            "-X",
            "none",
            "-c",
            "fast",
            f"--compress={compression}",
            "-l",
            label,
            "--no-password",
            "-d",
            conninfo,
        ]
        log(f"pg_basebackup of {cluster.name} ({redact_dsn(cluster.dsn)}) as {label}")
        _run_with_progress(args, env, out, log)
        manifest = json.loads((out / "backup_manifest").read_text())
        ranges = manifest["WAL-Ranges"]
        stop = time.time()
        next_xid = _next_xid(cluster.dsn)
        unexpected = sorted(set(os.listdir(out)) - {"base.tar.zst", "backup_manifest"})
        if unexpected:
            raise PgBackupError(f"pg_basebackup wrote unexpected files: {', '.join(unexpected)}")
        objects = {}
        with repo.new_set(prefix) as writer:
            objects["base.tar"] = writer.put_file(
                "base.tar", out / "base.tar.zst", precompressed=True
            )
            objects["backup_manifest"] = writer.put_file("backup_manifest", out / "backup_manifest")
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
                compression="zstd level 3 (server)",
                objects=objects,
                stored_time=time.time(),
            )
            writer.commit(backup.to_dict())
    log(
        f"base backup {label}: {backup.size_bytes:,} bytes stored in {backup.duration_s:.1f}s, "
        f"LSN {format_lsn(backup.start_lsn)}..{format_lsn(backup.stop_lsn)}"
    )
    return backup


def _run_with_progress(args: list[str], env: dict[str, str], out: Path, log: Log) -> None:
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(args, stderr=err, env={**os.environ, **env})
        while True:
            try:
                proc.wait(timeout=10)
                break
            except subprocess.TimeoutExpired:
                size = sum(p.stat().st_size for p in out.glob("*")) if out.exists() else 0
                log(f"pg_basebackup: {size / 2**20:.0f} MiB compressed so far")
        if proc.returncode != 0:
            err.seek(0)
            msg = err.read().decode(errors="replace").strip()
            raise CommandError(f"pg_basebackup failed (exit {proc.returncode}): {msg[-2000:]}")


def list_base_backups(repo: Repository, cluster: str) -> list[BaseBackup]:
    """Every complete base backup of ``cluster``, oldest first."""
    backups = [BaseBackup.from_dict(k, d) for k, d in repo.catalogs(_prefix(cluster))]
    backups.sort(key=lambda b: (b.stop_lsn, b.label))
    return backups


def find_base_backup(repo: Repository, cluster: str, date: str) -> BaseBackup:
    """The newest base backup taken for partition ``date``."""
    found = [b for b in list_base_backups(repo, cluster) if b.date == check_date(date)]
    if not found:
        raise NotFoundError(
            f"no base backup of cluster {cluster!r} for {date} in the repository at "
            f"{repo.describe()}"
        )
    return found[-1]


def verification(repo: Repository, backup: BaseBackup) -> dict[str, Any] | None:
    key = f"{backup.prefix}/{VERIFIED}"
    return repo.get_json(key) if repo.storage.exists(key) else None


def record_verification(repo: Repository, backup: BaseBackup, ok: bool, detail: str) -> None:
    repo.put_json(
        f"{backup.prefix}/{VERIFIED}", {"ok": ok, "verified_at": time.time(), "detail": detail}
    )


@dataclass(frozen=True)
class RestorePoint:
    name: str
    lsn: int
    time: float
    timeline: int


def create_restore_point(repo: Repository, cluster: ClusterConfig, name: str) -> RestorePoint:
    """``pg_create_restore_point(name)``, recorded in the catalog for restores to target."""
    if not re.match(r"^[A-Za-z0-9_.:-]{1,63}$", name):
        raise PgBackupError(
            f"invalid restore point name {name!r}: use up to 63 letters, digits, '_', '.', ':', '-'"
        )
    key = f"{cluster.name}/restore_points/{name}.json"
    if repo.storage.exists(key):
        raise PgBackupError(f"restore point {name!r} already exists for cluster {cluster.name}")
    with connect(cluster.dsn, autocommit=True) as conn:
        lsn = conn.execute("SELECT pg_create_restore_point(%s)", (name,)).fetchone()[0]
        tli = conn.execute("SELECT timeline_id FROM pg_control_checkpoint()").fetchone()[0]
        # Make the record durable in the archive promptly.
        conn.execute("SELECT pg_switch_wal()")
    point = RestorePoint(name, parse_lsn(str(lsn)), time.time(), int(tli))
    repo.put_json(
        key, {"name": name, "lsn": format_lsn(point.lsn), "time": point.time, "timeline": tli}
    )
    return point


def find_restore_point(repo: Repository, cluster: str, name: str) -> RestorePoint | None:
    key = f"{cluster}/restore_points/{name}.json"
    if not repo.storage.exists(key):
        return None
    d = repo.get_json(key)
    return RestorePoint(d["name"], parse_lsn(d["lsn"]), d["time"], d["timeline"])
