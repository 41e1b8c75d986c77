"""WAL archiving through `pgbackup wal-push` on real PostgreSQL 15 servers."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import psycopg
import pytest

from pg_backup_assets.core.config import load_config
from pg_backup_assets.core.postgres.local_cluster import LocalCluster, as_server_user, hand_over
from pg_backup_assets.core.storage.repository import Repository
from pg_backup_assets.core.wal.archive import find, list_archive, quote_setting, restore_command
from pg_backup_assets.core.wal.status import inspect_archive
from pg_backup_assets.definitions import build_defs
from pg_backup_assets.defs.check_names import WAL_ARCHIVE_CONTIGUOUS, WAL_ARCHIVE_FRESH
from pg_backup_assets.defs.wal.sensors import WAL_ARCHIVE_SENSOR
from tests.conftest import archiving_settings, tick, write_config
from tests.integration.test_cli import pgbackup


def sql(cluster: LocalCluster, query: str, dbname: str = "postgres"):
    with psycopg.connect(cluster.dsn(dbname), autocommit=True) as conn:
        cur = conn.execute(query)
        return cur.fetchall() if cur.description else None


def switch_and_wait_archived(cluster: LocalCluster, timeout: float = 60) -> str:
    """Close the current segment and wait until the archiver has pushed it."""
    return cluster.switch_wal_and_wait_archived(timeout)


def pgbench(cluster: LocalCluster, *args: str) -> None:
    subprocess.run(
        [str(cluster.bindir / "pgbench"), *args, cluster.dsn()], check=True, capture_output=True
    )


def repo_of(config: Path) -> Repository:
    return Repository.from_config(load_config(config))


def run_sensor(config: Path):  # noqa: ANN201
    with dg.instance_for_test() as instance:
        return tick(build_defs(str(config)), WAL_ARCHIVE_SENSOR, instance)


def check_evaluations(result) -> dict[str, dg.AssetCheckEvaluation]:  # noqa: ANN001
    return {e.check_name: e for e in result.asset_events if isinstance(e, dg.AssetCheckEvaluation)}


def test_every_segment_under_load_is_archived_and_fetchable(archiving, workdir):
    cluster, config = archiving
    pgbench(cluster, "-i", "-s", "10", "-q")
    pgbench(cluster, "-c", "2", "-t", "2000", "-n")
    last = switch_and_wait_archived(cluster)

    repo = repo_of(config)
    status = inspect_archive(repo, load_config(config).cluster("main"))
    assert status.contiguous.passed, status.contiguous.message
    assert status.gaps.first == "000000010000000000000001"
    assert status.gaps.last == last
    assert status.fresh.passed, status.fresh.message
    info = json.loads(pgbackup("info", "--json", config=config).stdout)["clusters"]["main"]["wal"]
    assert (info["first"], info["last"], info["gaps"]) == (status.gaps.first, last, [])
    assert info["count"] == len(status.listing.segments)

    # Every segment still in pg_wal comes back byte for byte through wal-fetch.
    compared = 0
    fetched = workdir / "fetched"
    fetched.mkdir()
    for obj in status.listing.segments:
        original = cluster.data / "pg_wal" / obj.name
        if not original.exists():
            continue
        proc = pgbackup("wal-fetch", obj.name, str(fetched / obj.name), config=config)
        assert proc.returncode == 0, proc.stderr
        assert (fetched / obj.name).read_bytes() == original.read_bytes()
        compared += 1
    assert compared >= 5


def test_missing_segment_fails_the_sensors_contiguity_check(archiving):
    cluster, config = archiving
    pgbench(cluster, "-i", "-s", "5", "-q")
    switch_and_wait_archived(cluster)
    result = run_sensor(config)
    checks = check_evaluations(result)
    assert checks[WAL_ARCHIVE_CONTIGUOUS].passed, checks[WAL_ARCHIVE_CONTIGUOUS].description
    observation = next(e for e in result.asset_events if isinstance(e, dg.AssetObservation))
    assert observation.asset_key == dg.AssetKey(["main", "wal_archive"])
    assert observation.metadata["segments"].value >= 4

    victim = "000000010000000000000003"
    [obj] = find(repo_of(config), "main", victim)
    repo_of(config).storage.delete(obj.key)
    result = run_sensor(config)
    checks = check_evaluations(result)
    assert not checks[WAL_ARCHIVE_CONTIGUOUS].passed
    assert victim in checks[WAL_ARCHIVE_CONTIGUOUS].description
    assert checks[WAL_ARCHIVE_CONTIGUOUS].metadata["missing_segments"].value == 1
    # The gap cuts PITR across it: one fresh base backup is requested, keyed on the gap
    # so that Dagster launches it once however many ticks see the same gap.
    [request] = result.run_requests
    assert request.job_name == "main_base_backup"
    assert request.partition_key == dt.datetime.now(dt.UTC).date().isoformat()  # taken today
    assert victim in request.run_key
    assert run_sensor(config).run_requests[0].run_key == request.run_key


def test_failing_archive_command_is_seen_and_nothing_is_lost(workdir):
    cluster = LocalCluster(workdir / "pg")
    config = write_config(workdir, cluster.dsn(), ["postgres"], rpo_seconds=1)
    cluster.init(archiving_settings(config), fast=True).start()
    try:
        sql(cluster, "CREATE TABLE t AS SELECT g FROM generate_series(1, 100000) g")
        switch_and_wait_archived(cluster)
        # The repository becomes read-only: every wal-push fails, PostgreSQL keeps the WAL.
        wal_dir = workdir / "repo" / "main" / "wal"
        modes = {p: p.stat().st_mode for p in [wal_dir, *wal_dir.iterdir()]}
        for p in modes:
            p.chmod(stat.S_IMODE(modes[p]) & ~0o222)
        try:
            for _ in range(3):
                sql(cluster, "INSERT INTO t SELECT g FROM generate_series(1, 100000) g")
                sql(cluster, "SELECT pg_switch_wal()")
            deadline = time.monotonic() + 30
            while not sql(cluster, "SELECT failed_count FROM pg_stat_archiver")[0][0]:
                assert time.monotonic() < deadline, "archive_command never failed"
                time.sleep(0.2)
            time.sleep(1.5)  # let the newest archived segment age past rpo_seconds=1
            checks = check_evaluations(run_sensor(config))
            fresh = checks[WAL_ARCHIVE_FRESH]
            assert not fresh.passed
            assert (
                "stale" in fresh.description and "archive_command is failing" in fresh.description
            )
        finally:
            for p, mode in modes.items():
                p.chmod(stat.S_IMODE(mode))
        last = switch_and_wait_archived(cluster)
        status = inspect_archive(repo_of(config), load_config(config).cluster("main"))
        assert status.contiguous.passed, status.contiguous.message
        assert status.gaps.first == "000000010000000000000001" and status.gaps.last == last
        assert status.pending_segments == 0
    finally:
        cluster.stop()


def test_duplicate_push_same_content_ok_different_content_refused(archiving, workdir):
    cluster, config = archiving
    segment = switch_and_wait_archived(cluster)
    original = cluster.data / "pg_wal" / segment
    copy = workdir / segment
    shutil.copy(original, copy)
    os.chmod(copy, 0o644)
    proc = pgbackup("wal-push", str(copy), config=config)
    assert proc.returncode == 0, proc.stderr

    [before] = find(repo_of(config), "main", segment)
    with open(copy, "r+b") as f:
        f.seek(8192)
        f.write(b"\x01different\x02")
    proc = pgbackup("wal-push", str(copy), config=config)
    assert proc.returncode != 0
    assert segment in proc.stderr and "different content" in proc.stderr
    [after] = find(repo_of(config), "main", segment)
    assert after == before
    fetched = workdir / "back"
    assert pgbackup("wal-fetch", segment, str(fetched), config=config).returncode == 0
    assert fetched.read_bytes() == original.read_bytes()


# What the per-WAL-file commands must not import: heavy libraries ever, and the config's
# parsing once the config is cached.
HEAVY = {"dagster", "boto3", "botocore", "pandas", "psycopg"}
PARSING = {"yaml", "argparse", "dataclasses", "pg_backup_assets.core.config"}


def test_wal_fetch_missing_and_corrupt(archiving, workdir):
    cluster, config = archiving
    segment = switch_and_wait_archived(cluster)
    proc = pgbackup("wal-fetch", "00000009.history", str(workdir / "h"), config=config)
    assert proc.returncode == 1 and not (workdir / "h").exists()

    [obj] = find(repo_of(config), "main", segment)
    path = workdir / "repo" / obj.key
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))
    proc = pgbackup("wal-fetch", segment, str(workdir / "seg"), config=config)
    # Above 125: PostgreSQL stops recovery instead of ending it early at this segment.
    assert proc.returncode == 126
    assert segment in proc.stderr and "damaged" in proc.stderr
    assert not (workdir / "seg").exists()


def test_wal_fetch_stays_lean(archiving, workdir):
    """restore_command runs once per WAL file: with its config cached, wal-fetch restores a
    file from the local repository (and says "not archived") without a YAML parser,
    argparse or the config's dataclasses, and without dagster, boto3, pandas or psycopg."""
    cluster, config = archiving
    segment = switch_and_wait_archived(cluster)
    probe = (
        "import sys\n"
        "from pg_backup_assets.cli import main\n"
        f"rc = main(['--config', {str(config)!r}, 'wal-fetch', sys.argv[1], sys.argv[2]])\n"
        "print(rc, ' '.join(sorted(sys.modules)))\n"
    )
    calls = [(segment, "a", "0"), (segment, "b", "0"), ("00000009.history", "c", "1")]
    for i, (name, dest, want) in enumerate(calls):
        proc = subprocess.run(
            [sys.executable, "-c", probe, name, str(workdir / dest)], capture_output=True, text=True
        )
        rc, modules = proc.stdout.split(" ", 1)
        assert rc == want, proc.stderr
        modules = set(modules.split())
        assert {m.split(".")[0] for m in modules} & HEAVY == set()
        if i > 0:  # the first call of this OS user parsed the config and cached it
            assert modules & PARSING == set(), modules & PARSING
    original = (cluster.data / "pg_wal" / segment).read_bytes()
    assert (workdir / "a").read_bytes() == (workdir / "b").read_bytes() == original
    assert not (workdir / "c").exists()


def test_bad_wal_push_input_is_refused(archiving, workdir):
    _, config = archiving
    stray = workdir / "postgresql.conf"
    stray.write_text("x")
    proc = pgbackup("wal-push", str(stray), config=config)
    assert proc.returncode == 1 and "not a WAL file name" in proc.stderr
    proc = pgbackup("wal-push", str(workdir / "000000010000000000000077"), config=config)
    assert proc.returncode == 1 and "cannot read" in proc.stderr


@pytest.mark.slow
def test_gap_logic_follows_a_timeline_switch(archiving, workdir):
    """Promote a restored copy: timeline 2 continues the archive; gaps are named on it."""
    primary, config = archiving
    sql(primary, "CREATE TABLE marker AS SELECT 1 AS v")
    copy = LocalCluster(workdir / "copy")
    copy.base.mkdir()
    copy.base.chmod(0o755)
    hand_over(copy.base)
    as_server_user(
        [
            str(primary.bindir / "pg_basebackup"),
            "-D",
            str(copy.data),
            "-d",
            primary.dsn(),
            "-X",
            "none",
            "-c",
            "fast",
        ]
    )
    sql(primary, "INSERT INTO marker VALUES (2)")
    switch_and_wait_archived(primary)
    primary.stop()  # the old primary is gone; the copy takes over the cluster's archive

    (copy.data / "recovery.signal").touch()
    copy.adopt({"restore_command": quote_setting(restore_command(config))}).start()
    try:
        deadline = time.monotonic() + 60
        while sql(copy, "SELECT pg_is_in_recovery()")[0][0]:
            # Replays the archive, then waits for more WAL: promote it.
            if time.monotonic() > deadline:
                raise AssertionError(copy.log_tail(20))
            if (
                sql(copy, "SELECT count(*) FROM pg_stat_activity")[0][0]
                and (sql(copy, "SELECT pg_last_wal_replay_lsn() IS NOT NULL")[0][0])
            ):
                sql(copy, "SELECT pg_promote(true, 60)")
            time.sleep(0.2)
        assert sql(copy, "SELECT count(*) FROM marker")[0][0] == 2
        sql(copy, "INSERT INTO marker SELECT g FROM generate_series(3, 50000) g")
        for _ in range(3):
            switch_and_wait_archived(copy)
            sql(copy, "INSERT INTO marker SELECT g FROM generate_series(1, 1000) g")

        listing = list_archive(repo_of(config), "main")
        assert 2 in listing.histories
        # After the failover the cluster's DSN points at the promoted copy.
        promoted = dataclasses.replace(load_config(config).cluster("main"), dsn=copy.dsn())
        status = inspect_archive(repo_of(config), promoted)
        assert status.gaps.timeline == 2
        assert status.contiguous.passed, status.contiguous.message
        assert status.gaps.first.startswith("00000001") and status.gaps.last.startswith("00000002")

        tl2 = sorted(o.name for o in listing.segments if o.name.startswith("00000002"))
        victim = tl2[1]
        [obj] = find(repo_of(config), "main", victim)
        repo_of(config).storage.delete(obj.key)
        status = inspect_archive(repo_of(config), promoted)
        assert status.gaps.missing == [(victim, victim)]
    finally:
        copy.stop()


def test_wal_push_stays_lean(archiving, workdir):
    """archive_command runs once per segment: wal-push must not load dagster, boto3, pandas
    or psycopg, and once its config is cached, no YAML parser, argparse or dataclasses
    either (measured cost: see BENCHMARKS.md)."""
    cluster, config = archiving
    segment = switch_and_wait_archived(cluster)
    copy = workdir / segment
    shutil.copy(cluster.data / "pg_wal" / segment, copy)
    probe = (
        "import sys\n"
        "from pg_backup_assets.cli import main\n"
        f"assert main(['--config', {str(config)!r}, 'wal-push', {str(copy)!r}]) == 0\n"
        "print(' '.join(sorted(sys.modules)))\n"
    )
    for call in ("first", "cached"):  # the first call of this config parses it
        proc = subprocess.run(
            [str(Path(sys.executable)), "-c", probe], capture_output=True, text=True, check=True
        )
        modules = set(proc.stdout.split())
        assert {m.split(".")[0] for m in modules} & HEAVY == set()
        assert "pg_backup_assets.core.wal.archive" in modules  # it did push (sync mode)
        if call == "cached":
            assert modules & PARSING == set()
