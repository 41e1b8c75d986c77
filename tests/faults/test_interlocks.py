"""Interlocks: one backup of a cluster at a time, restores that keep away from running
servers and from the source's archive, WAL from another cluster refused, a repository
only its users can read, verification that neither gives up at one blink nor fills the
disk WAL archiving needs."""

from __future__ import annotations

import grp
import os
import stat
import threading
import time

import psycopg
import pytest

from pg_backup_assets.core.base.backup import take_base_backup
from pg_backup_assets.core.base.restore import Target, restore
from pg_backup_assets.core.base.verify import verify_base_backup
from pg_backup_assets.core.catalog import list_base_backups, verification
from pg_backup_assets.core.config import load_config
from pg_backup_assets.core.dumps.dump import take_dump_set
from pg_backup_assets.core.locks import LockTimeoutError
from pg_backup_assets.core.postgres.local_cluster import LocalCluster
from pg_backup_assets.core.storage.repository import Repository
from pg_backup_assets.core.wal.archive import find, list_archive
from pg_backup_assets.core.wal.status import inspect_archive
from tests.faults.helpers import tmpfs
from tests.integration.test_cli import pgbackup
from tests.integration.test_wal_archive import sql

pytestmark = pytest.mark.slow
DAY = "2026-11-26"


def quiet(_: str) -> None:
    pass


def setup(config):  # noqa: ANN001, ANN201
    cfg = load_config(config)
    return cfg, Repository.from_config(cfg)


def test_one_base_backup_of_a_cluster_at_a_time(archiving):
    _, config = archiving
    cfg, repo = setup(config)
    held = r"another base_backup of cluster main is running \(pid"
    with repo.lock("main", "base_backup", 1, quiet), pytest.raises(LockTimeoutError, match=held):
        take_base_backup(repo, cfg.cluster("main"), DAY, quiet, lock_wait_s=1)
    assert list_base_backups(repo, "main") == []

    released = []

    def hold() -> None:
        with repo.lock("main", "base_backup", 1, quiet):
            time.sleep(2)
            released.append(time.time())

    holder = threading.Thread(target=hold)
    holder.start()
    time.sleep(0.3)
    first = take_base_backup(repo, cfg.cluster("main"), DAY, quiet, lock_wait_s=60)
    holder.join()
    assert first.start_time >= released[0]  # it waited for the holder, then ran
    second = take_base_backup(repo, cfg.cluster("main"), DAY, quiet)
    assert first.label != second.label and first.prefix != second.prefix
    assert [b.label for b in list_base_backups(repo, "main")] == [first.label, second.label]


def test_restore_refuses_a_folder_a_server_runs_in(archiving):
    cluster, config = archiving
    cfg, repo = setup(config)
    take_base_backup(repo, cfg.cluster("main"), DAY, quiet)
    before = sorted(p.name for p in cluster.data.iterdir())
    proc = pgbackup("restore", "--to", str(cluster.data), "--force", config=config)
    assert proc.returncode == 1
    assert "a PostgreSQL server is running in" in proc.stderr
    assert sorted(p.name for p in cluster.data.iterdir()) == before
    assert sql(cluster, "SELECT 1") == [(1,)]


def test_a_restored_copy_archives_only_when_told_to(archiving, workdir):
    primary, config = archiving
    cfg, repo = setup(config)
    sql(primary, "CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g")
    take_base_backup(repo, cfg.cluster("main"), DAY, quiet)
    primary.switch_wal_and_wait_archived()

    # Default (off): restored without --start, then started by hand as an operator would.
    scratch = restore(repo, cfg.cluster("main"), config, workdir / "scratch", Target("latest"))
    assert scratch.server is None
    copy = LocalCluster(workdir / "scratch-run", data=workdir / "scratch").adopt().start()
    try:
        wait_promoted(copy)
        assert sql(copy, "SHOW archive_mode") == [("off",)]
        sql(copy, "INSERT INTO t SELECT g FROM generate_series(1, 100000) g")
        sql(copy, "SELECT pg_switch_wal()")
        time.sleep(1)
    finally:
        copy.stop()
    assert not [o for o in list_archive(repo, "main").objects if o.name.startswith("00000002")]

    # preserve: a copy that replaces the source archives its new timeline there.
    keeper = restore(
        repo,
        cfg.cluster("main"),
        config,
        workdir / "keeper",
        Target("latest"),
        start=True,
        archive_mode="preserve",
    )
    try:
        assert sql(keeper.server, "SHOW archive_mode") == [("on",)]
        keeper.server.switch_wal_and_wait_archived()
        assert 2 in list_archive(repo, "main").histories
        # The source still runs on timeline 1: its checks follow it, not the copy's.
        primary.switch_wal_and_wait_archived()
        status = inspect_archive(repo, cfg.cluster("main"))
        assert status.gaps.timeline == 1
        assert status.contiguous.passed, status.contiguous.message
        assert status.gaps.last.startswith("00000001")
        assert status.fresh.passed, status.fresh.message
    finally:
        keeper.server.stop()


def wait_promoted(cluster: LocalCluster, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while sql(cluster, "SELECT pg_is_in_recovery()")[0][0]:
        assert time.monotonic() < deadline, cluster.log_tail(20)
        time.sleep(0.2)


def test_wal_of_another_cluster_is_refused(archiving, workdir):
    primary, config = archiving
    primary.switch_wal_and_wait_archived()
    other = LocalCluster(workdir / "other")
    other.init(fast=True).start()
    try:
        sql(other, "CREATE TABLE x AS SELECT g FROM generate_series(1, 10000) g")
        name = sql(other, "SELECT pg_walfile_name(pg_current_wal_insert_lsn())")[0][0]
        sql(other, "SELECT pg_switch_wal()")
        stray = workdir / name
        stray.write_bytes((other.data / "pg_wal" / name).read_bytes())
    finally:
        other.stop()
    _, repo = setup(config)
    before = find(repo, "main", name)
    proc = pgbackup("wal-push", str(stray), config=config)
    assert proc.returncode == 1
    assert "system identifier" in proc.stderr and "nothing was archived" in proc.stderr
    assert find(repo, "main", name) == before


def test_the_repository_is_readable_by_its_users_only(archiving, pg, database, workdir):
    cluster, config = archiving
    config.write_text(config.read_text() + "repository_mode: {group: postgres}\n")
    cfg, repo = setup(config)
    take_dump_set(repo, cfg.cluster("main"), DAY, quiet)  # as this (root) process
    cluster.switch_wal_and_wait_archived()  # wal-push as the postgres user, umask 0077
    gid = grp.getgrnam("postgres").gr_gid
    checked = 0
    for path in (workdir / "repo" / "main").rglob("*"):
        st = path.stat()
        want = 0o750 if path.is_dir() else 0o640
        assert (stat.S_IMODE(st.st_mode), st.st_gid) == (want, gid), path
        checked += 1
    assert checked > 5
    globals_sql = next((workdir / "repo" / "main" / "dumps").rglob("globals.sql*"))
    assert not stat.S_IMODE(globals_sql.stat().st_mode) & 0o004  # role hashes: not for all


def test_verification_tries_again_before_recording_a_failure(archiving):
    cluster, config = archiving
    cfg, repo = setup(config)
    backup = take_base_backup(repo, cfg.cluster("main"), DAY, quiet)
    # The WAL the backup needs is away for a moment (a store that blinked).
    obj = list_archive(repo, "main").segments[-1]
    path, away = repo.root / obj.key, repo.root / f"{obj.key}.away"
    os.rename(path, away)
    threading.Timer(1.0, os.rename, (away, path)).start()
    lines: list[str] = []
    verdict = verify_base_backup(repo, "main", backup, lines.append, retry_pause_s=3)
    assert verdict.ok, verdict.message
    assert any("trying again" in line for line in lines)
    assert verification(repo, backup)["ok"]


def test_verification_refuses_to_fill_its_scratch_space(archiving, workdir):
    cluster, config = archiving
    sql(cluster, "CREATE TABLE big AS SELECT g, md5(g::text) FROM generate_series(1, 400000) g")
    with tmpfs(workdir / "scratch", 16) as scratch:
        config.write_text(config.read_text() + f"scratch_dir: {scratch}\n")
        cfg, repo = setup(config)
        backup = take_base_backup(repo, cfg.cluster("main"), DAY, quiet)
        verdict = verify_base_backup(repo, "main", backup, quiet, retry_pause_s=0)
        assert not verdict.ok
        assert "scratch space" in verdict.message and str(scratch) in verdict.message
        assert "set scratch_dir" in verdict.message
        assert not list(scratch.iterdir())
    # ... and nothing was extracted beside the repository instead.
    assert not list((workdir / "repo" / ".staging").glob("pgbackup-*/data"))


def test_password_is_not_what_psycopg_echoes(workdir):
    # libpq's parse error quotes the text around the fault: here, the password.
    config = workdir / "c.yaml"
    config.write_text(
        f"repository: {workdir}/repo\nclusters:\n  main:\n"
        '    dsn: "host=127.0.0.1 password=\'hunter2"\n'
    )
    proc = pgbackup("restore-point", "x", config=config)
    assert proc.returncode == 2 and "hunter2" not in proc.stderr + proc.stdout
    assert "invalid dsn" in proc.stderr
    with pytest.raises(psycopg.ProgrammingError):  # the DSN really is one libpq refuses
        psycopg.conninfo.conninfo_to_dict("host=127.0.0.1 password='hunter2")
