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
from pathlib import Path
from typing import Any

from pg_backup_assets.core.catalog import BaseBackup, base_prefix, check_date
from pg_backup_assets.core.config import ClusterConfig
from pg_backup_assets.core.errors import CommandError, PgBackupError
from pg_backup_assets.core.postgres.client import (
    connect,
    redact_dsn,
    server_facts,
    split_dsn,
    tool,
)
from pg_backup_assets.core.progress import Log, ProgressLog
from pg_backup_assets.core.storage.repository import Repository
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
    prefix = f"{base_prefix(cluster.name)}{date}/{label}"
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
                data_bytes=sum(f["Size"] for f in manifest["Files"]),
            )
            writer.commit(backup.to_dict())
    log(
        f"base backup {label}: {backup.size_bytes:,} bytes stored in {backup.duration_s:.1f}s, "
        f"LSN {format_lsn(backup.start_lsn)}..{format_lsn(backup.stop_lsn)}"
    )
    return backup


def _run_with_progress(args: list[str], env: dict[str, str], out: Path, log: Log) -> None:
    progress = ProgressLog(log, "pg_basebackup, compressed", every_s=0)
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(args, stderr=err, env={**os.environ, **env})
        while True:
            try:
                proc.wait(timeout=10)
                break
            except subprocess.TimeoutExpired:
                progress(sum(p.stat().st_size for p in out.glob("*")) if out.exists() else 0)
        if proc.returncode != 0:
            err.seek(0)
            msg = err.read().decode(errors="replace").strip()
            raise CommandError(f"pg_basebackup failed (exit {proc.returncode}): {msg[-2000:]}")
