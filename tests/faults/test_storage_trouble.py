"""Storage trouble: a full repository, an S3 endpoint that is down, a read-only repository.
Nothing archived is corrupted, PostgreSQL keeps what it could not archive, and work resumes
when the trouble ends."""

from __future__ import annotations

import subprocess

import dagster as dg
import psycopg
import pytest

from pg_backup_assets.core.config import load_config
from pg_backup_assets.core.postgres.local_cluster import LocalCluster
from pg_backup_assets.core.storage.repository import Repository
from pg_backup_assets.core.wal.archive import list_archive
from pg_backup_assets.core.wal.status import inspect_archive
from pg_backup_assets.definitions import build_defs
from pg_backup_assets.defs.check_names import OFFSITE_WAL_FRESH
from pg_backup_assets.defs.offsite.sensors import OFFSITE_WAL_SENSOR
from tests.conftest import TcpProxy, archiving_settings, make_bucket, tick, write_config
from tests.faults.helpers import fill, one_clear_line, tmpfs, wait_until
from tests.integration.test_cli import pgbackup
from tests.integration.test_wal_archive import sql

pytestmark = pytest.mark.slow


def test_a_full_repository_keeps_wal_in_pg_wal_until_there_is_room(workdir):
    with tmpfs(workdir / "repo", 96) as repo_dir:
        cluster = LocalCluster(workdir / "pg")
        config = write_config(workdir, cluster.dsn(), ["postgres"])
        cluster.init(archiving_settings(config), fast=True).start()
        try:
            sql(cluster, "CREATE EXTENSION pgcrypto")
            cluster.switch_wal_and_wait_archived()
            ballast = fill(repo_dir, 256 << 10)
            # Incompressible WAL that cannot fit in what is left.
            sql(
                cluster,
                "CREATE TABLE r AS SELECT gen_random_bytes(1000) FROM generate_series(1, 20000)",
            )
            stuck = sql(cluster, "SELECT pg_walfile_name(pg_current_wal_insert_lsn())")[0][0]
            sql(cluster, "SELECT pg_switch_wal()")
            wait_until(
                "archive_command to fail",
                lambda: sql(cluster, "SELECT failed_count FROM pg_stat_archiver")[0][0] > 0,
            )
            assert (cluster.data / "pg_wal" / "archive_status" / f"{stuck}.ready").exists()
            repo = Repository.from_config(load_config(config))
            assert stuck not in {o.name for o in list_archive(repo, "main").segments}
            assert pgbackup("verify", config=config).returncode == 0  # nothing corrupt

            ballast.unlink()  # room again: archiving resumes by itself
            cluster.switch_wal_and_wait_archived(timeout=120)
            assert stuck in {o.name for o in list_archive(repo, "main").segments}
            status = inspect_archive(repo, load_config(config).cluster("main"))
            assert status.contiguous.passed, status.contiguous.message
            assert pgbackup("verify", config=config).returncode == 0
        finally:
            cluster.stop()


def test_s3_down_turns_offsite_wal_red_and_local_archiving_goes_on(archiving, s3_endpoint):
    cluster, config = archiving
    bucket = make_bucket(s3_endpoint)
    proxy = TcpProxy(int(s3_endpoint.rsplit(":", 1)[1]))
    try:
        config.write_text(
            config.read_text()
            + f"offsite:\n  s3: {{bucket: {bucket}, endpoint_url: 'http://127.0.0.1:{proxy.port}',"
            + " max_attempts: 2}\n"
        )
        defs = build_defs(str(config))
        proxy.cut()
        cluster.switch_wal_and_wait_archived()  # local archiving does not need S3
        with dg.instance_for_test() as instance:
            data = tick(defs, OFFSITE_WAL_SENSOR, instance)
            [fresh] = [e for e in data.asset_events if e.check_name == OFFSITE_WAL_FRESH]
            assert not fresh.passed and "cannot tell what is offsite" in fresh.description
            assert not data.run_requests
            key = dg.AssetKey(["main", "offsite_wal"])
            down = dg.materialize(
                [*defs.assets, *defs.asset_checks],
                selection=dg.AssetSelection.assets(key),
                resources=defs.resources,
                instance=instance,
                raise_on_error=False,
            )
            assert not down.success  # and the alert sensor reports the failed run

            proxy.restore()
            data = tick(defs, OFFSITE_WAL_SENSOR, instance)
            [request] = data.run_requests
            up = dg.materialize(
                [*defs.assets, *defs.asset_checks],
                selection=dg.AssetSelection.assets(key),
                resources=defs.resources,
                instance=instance,
                raise_on_error=False,
            )
            assert up.success
            data = tick(defs, OFFSITE_WAL_SENSOR, instance)
            [fresh] = [e for e in data.asset_events if e.check_name == OFFSITE_WAL_FRESH]
            assert fresh.passed, fresh.description
    finally:
        proxy.close()


def test_a_read_only_repository_is_one_clear_line(workdir, pg):
    with tmpfs(workdir / "repo", 8) as repo_dir:
        config = write_config(workdir, pg.dsn(), ["postgres"])
        subprocess.run(["mount", "-o", "remount,ro", str(repo_dir)], check=True)
        proc = pgbackup("restore-point", "before-upgrade", config=config)
        assert proc.returncode == 1
        line = one_clear_line(proc.stderr)
        assert "Read-only file system" in line and str(repo_dir) in line
        with psycopg.connect(pg.dsn(), autocommit=True) as conn:  # the server is fine
            assert conn.execute("SELECT 1").fetchone() == (1,)
