"""SIGKILL at random moments (the run worker and its children die at once): no partial
object is ever listed as a backup or an archived segment, the next run succeeds, and
`pgbackup verify` is clean afterwards."""

from __future__ import annotations

import random
import shutil
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from pg_backup_assets.core.catalog import find_base_backup, list_base_backups, list_dump_sets
from pg_backup_assets.core.config import load_config
from pg_backup_assets.core.offsite.copy import verify_copies
from pg_backup_assets.core.offsite.store import offsite_repository
from pg_backup_assets.core.postgres.local_cluster import LocalCluster
from pg_backup_assets.core.storage.codec import Discard
from pg_backup_assets.core.storage.repository import CATALOG, Repository
from pg_backup_assets.core.wal.archive import find, read_checked
from tests.conftest import _reachable_tmpdir, archiving_settings, make_bucket, write_config
from tests.faults.helpers import PYTHON, engine, kill_at
from tests.integration.test_cli import BIN, pgbackup

# One test process builds this file's shared fixture (`make test` runs two).
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("crashes")]
SEED = 20261129  # the "random" moments are the same on every run, and differ from each other


@pytest.fixture(scope="module")
def loaded(s3_endpoint) -> Iterator[tuple[LocalCluster, Path]]:
    """An archiving cluster with ~60 MiB of incompressible data, an S3 offsite store."""
    workdir = _reachable_tmpdir("pgba-crash-")
    cluster = LocalCluster(workdir / "pg")
    bucket = make_bucket(s3_endpoint)
    extra = f"offsite:\n  s3: {{bucket: {bucket}, endpoint_url: '{s3_endpoint}'}}\n"
    config = write_config(workdir, cluster.dsn(), ["postgres"], extra=extra)
    try:
        cluster.init(archiving_settings(config), fast=True).start()
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            conn.execute("CREATE EXTENSION pgcrypto")
            conn.execute(
                "CREATE TABLE blob AS SELECT g, gen_random_bytes(1000) AS b "
                "FROM generate_series(1, 60000) g"
            )
        cluster.switch_wal_and_wait_archived()
        yield cluster, config
    finally:
        cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def moments(n: int, low: float, high: float, salt: str) -> list[float]:
    rnd = random.Random(f"{SEED}:{salt}")
    return sorted(rnd.uniform(low, high) for _ in range(n))


def unfinished_sets(root: Path) -> list[Path]:
    return [d for d in root.glob("*/*") if d.is_dir() and not (d / CATALOG).exists()]


def test_killed_base_backups(loaded):
    cluster, config = loaded
    repo = Repository.from_config(load_config(config))
    done = len(list_base_backups(repo, "main"))
    killed = 0
    for delay in moments(4, 0.1, 1.2, "base"):
        finished = kill_at(engine("base_backup", config), delay) == 0
        done, killed = done + finished, killed + (not finished)
        assert len(list_base_backups(repo, "main")) == done, f"killed at {delay:.2f}s"
    assert killed >= 2  # most moments fall inside the backup
    # The next backup runs, and clears what the killed ones left.
    assert kill_at(engine("base_backup", config), 300) == 0
    assert len(list_base_backups(repo, "main")) == done + 1
    assert unfinished_sets(repo.root / "main" / "base") == []
    assert not list((repo.root / ".staging").glob("pgbackup-*"))
    proc = pgbackup("verify", config=config)
    assert proc.returncode == 0, proc.stderr


def test_killed_dumps(loaded):
    _, config = loaded
    repo = Repository.from_config(load_config(config))
    done = len(list_dump_sets(repo, "main"))
    killed = 0
    for delay in moments(4, 0.1, 1.0, "dump"):
        finished = kill_at(engine("dump", config), delay) == 0
        done, killed = done + finished, killed + (not finished)
        assert len(list_dump_sets(repo, "main")) == done, f"killed at {delay:.2f}s"
    assert killed >= 2
    assert kill_at(engine("dump", config), 300) == 0
    assert len(list_dump_sets(repo, "main")) == done + 1
    assert unfinished_sets(repo.root / "main" / "dumps") == []
    assert pgbackup("verify", config=config).returncode == 0


def test_killed_wal_push(loaded, workdir):
    cluster, _ = loaded
    # A repository of its own, so that every push is a new one.
    config = write_config(workdir, cluster.dsn(), ["postgres"])
    repo = Repository.from_config(load_config(config))
    name = cluster.switch_wal_and_wait_archived()
    segment = workdir / name
    segment.write_bytes((cluster.data / "pg_wal" / name).read_bytes())
    push = [str(BIN / "pgbackup"), "--config", str(config), "wal-push", str(segment)]
    for delay in moments(6, 0.005, 0.25, "wal"):
        kill_at(push, delay)
        for obj in find(repo, "main", name):  # nothing, or a whole and right segment
            assert read_checked(repo, obj, Discard()) == segment.stat().st_size
    assert kill_at(push, 60) == 0
    [obj] = find(repo, "main", name)
    assert read_checked(repo, obj, Discard()) == segment.stat().st_size
    assert pgbackup("verify", config=config).returncode == 0


def test_killed_offsite_uploads(loaded):
    _, config = loaded
    cfg = load_config(config)
    repo, offsite = Repository.from_config(cfg), offsite_repository(cfg)
    if not list_base_backups(repo, "main"):
        assert kill_at(engine("base_backup", config), 300) == 0
    backup = find_base_backup(repo, "main", "2026-11-26")
    expected = [(r.key, r.sha256) for r in backup.objects.values()]
    for delay in moments(4, 0.05, 1.0, "offsite"):
        kill_at(engine("offsite_base_backup", config), delay)
        present = {o.key for o in offsite.storage.list("main/base/")}
        # What is visible is whole; the catalog entry only once every object is there.
        assert not verify_copies(offsite, [e for e in expected if e[0] in present])
        if backup.catalog_key in present:
            assert all(k in present for k, _ in expected)
    assert kill_at(engine("offsite_base_backup", config), 300) == 0
    assert not verify_copies(offsite, expected)
    assert offsite.storage.exists(backup.catalog_key)
    proc = pgbackup("verify", "--source", "offsite", config=config)
    assert proc.returncode == 0, proc.stderr


def test_the_child_runner_really_runs_the_engine(loaded):
    # The kills above prove something only if the child does the work when left alone.
    _, config = loaded
    assert kill_at([PYTHON, "-m", "tests.faults.child", "nonsense", str(config)], 60) != 0
