"""Soak: minutes of sustained pgbench load while WAL is archived, a base backup is taken
and WAL is shipped offsite, all at once. Afterwards every segment the server produced is
archived locally and offsite, and a point-in-time recovery from the offsite copy returns
every committed row."""

from __future__ import annotations

import os
import subprocess
import threading
import time

import psycopg
import pytest

from pg_backup_assets.core.base.backup import take_base_backup
from pg_backup_assets.core.base.restore import Target, restore
from pg_backup_assets.core.config import load_config
from pg_backup_assets.core.offsite.copy import copy_set, ship_wal, wal_pending
from pg_backup_assets.core.offsite.store import offsite_repository
from pg_backup_assets.core.postgres.local_cluster import LocalCluster
from pg_backup_assets.core.storage.repository import Repository
from pg_backup_assets.core.wal.archive import list_archive
from pg_backup_assets.core.wal.names import find_gaps, parse_segment
from tests.conftest import archiving_settings, make_bucket, write_config

pytestmark = pytest.mark.slow
LOAD_S = int(os.environ.get("PGBACKUP_SOAK_SECONDS", "120"))


def totals(dsn: str) -> tuple[int, int]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT count(*), coalesce(sum(delta), 0) FROM pgbench_history"
        ).fetchone()


def test_sustained_load_with_backup_and_shipping(workdir, s3_endpoint):
    bucket = make_bucket(s3_endpoint)
    cluster = LocalCluster(workdir / "pg")
    extra = f"offsite:\n  s3: {{bucket: {bucket}, endpoint_url: '{s3_endpoint}'}}\n"
    config = write_config(workdir, cluster.dsn(), ["postgres"], extra=extra)
    cfg = load_config(config)
    repo, offsite = Repository.from_config(cfg), offsite_repository(cfg)
    # Small segments: more of them per minute, more archive_command calls under load.
    cluster.init({**archiving_settings(config), "checkpoint_timeout": "'30s'"}, fast=True).start()
    try:
        pgbench = str(cluster.bindir / "pgbench")
        subprocess.run(
            [pgbench, "-i", "-s", "10", "-q", cluster.dsn()], check=True, capture_output=True
        )
        load = subprocess.Popen(
            [pgbench, "-c", "2", "-j", "2", "-T", str(LOAD_S), "-n", cluster.dsn()],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        stop = threading.Event()
        shipped: list[int] = []
        errors: list[BaseException] = []

        def shipper() -> None:
            while not stop.is_set():
                try:
                    shipped.append(ship_wal(repo, offsite, "main").objects)
                except BaseException as exc:  # noqa: BLE001 - reported below
                    errors.append(exc)
                stop.wait(5)

        thread = threading.Thread(target=shipper)
        thread.start()
        time.sleep(min(20, LOAD_S / 4))
        backup = take_base_backup(repo, cfg.cluster("main"), "2026-11-26", lambda m: None)
        copied = copy_set(repo, offsite, backup.objects.values(), backup.catalog_key, 0)
        assert copied.ok, copied.mismatches
        assert load.wait(timeout=LOAD_S + 120) == 0, load.stderr.read()
        stop.set()
        thread.join()
        assert not errors, errors
        count, total = totals(cluster.dsn())
        assert count > 1000  # the load was real
        last = cluster.switch_wal_and_wait_archived(timeout=300)
        while wal_pending(repo, offsite, "main").pending:
            ship_wal(repo, offsite, "main")

        # Every segment from the first to the last: archived, and offsite.
        listing = list_archive(repo, "main")
        size = listing.segment_size
        gaps = find_gaps((o.name for o in listing.segments), listing.histories, size)
        assert gaps.contiguous, gaps.describe()
        first = parse_segment(gaps.first, size).segno
        assert parse_segment(last, size).segno - first + 1 == gaps.count
        assert gaps.count > 20 and sum(shipped) > 0
        remote = {o.key for o in offsite.storage.list("main/wal/")}
        assert all(o.key in remote for o in listing.objects)

        # Point-in-time recovery, from the offsite copy, to the end: every committed row.
        result = restore(
            offsite,
            cfg.cluster("main"),
            config,
            workdir / "pitr",
            Target("latest"),
            start=True,
            source="offsite",
            s3_env=True,
        )
        try:
            assert result.backup.label == backup.label
            assert totals(result.server.dsn()) == (count, total)
        finally:
            result.server.stop()
    finally:
        cluster.stop()
