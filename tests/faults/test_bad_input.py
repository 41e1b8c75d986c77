"""Bad input: one clear line naming what is wrong, a non-zero exit, no traceback, and
nothing changed."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile

import pytest
import zstandard

from pg_backup_assets.core.base.backup import take_base_backup
from pg_backup_assets.core.catalog import list_base_backups
from pg_backup_assets.core.config import load_config
from pg_backup_assets.core.postgres.local_cluster import LocalCluster, free_port
from pg_backup_assets.core.storage.repository import Repository
from pg_backup_assets.core.wal.archive import find
from tests.conftest import write_config
from tests.faults.helpers import one_clear_line
from tests.integration.test_cli import pgbackup
from tests.integration.test_wal_archive import sql

pytestmark = pytest.mark.slow


def fails(*args: str, config, code: int = 1, env: dict | None = None) -> str:  # noqa: ANN001
    proc = pgbackup(*args, config=config, env=env)
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    return one_clear_line(proc.stderr)


@pytest.mark.parametrize(
    "yaml_text, named",
    [
        ("repository: r\nclusters: {main: {dsn: x, rpo_seconds: -5}}\n", "rpo_seconds"),
        ("repository: r\nclusters: {main: {dsn: x}}\nschedules: {daily: 'at two'}\n", "daily"),
        ("repository: r\nclusters: {main: {dsn: x}}\nrepository_mode: {files: '0777'}\n", "files"),
        ("repository: [r]\nclusters: {main: {dsn: x}}\n", "repository"),
        ("clusters: {main: {dsn: x}}\n", "repository"),
    ],
)
def test_malformed_config(workdir, yaml_text, named):
    config = workdir / "bad.yaml"
    config.write_text(yaml_text)
    assert named in fails("info", config=config, code=2)


def test_server_down_and_wrong_password(workdir):
    config = write_config(workdir, f"host=127.0.0.1 port={free_port()} user=postgres", None)
    line = fails("restore-point", "x", config=config)
    assert "cannot connect to" in line
    cluster = LocalCluster(workdir / "pg")
    cluster.init(fast=True).start()
    try:
        sql(cluster, "ALTER ROLE postgres PASSWORD 'right-one'")
        with open(cluster.data / "pg_hba.conf", "w") as f:
            f.write("host all all 127.0.0.1/32 scram-sha-256\nlocal all all trust\n")
        sql_local = cluster.data / "pg_hba.conf"
        assert sql_local.exists()
        cluster.stop()
        cluster.start()
        wrong = f"{cluster.dsn()} password=hunter2-wrong"
        config = write_config(workdir, wrong, ["postgres"])
        line = fails("restore-point", "x", config=config)
        assert "password authentication failed" in line and "hunter2" not in line
    finally:
        cluster.stop()


def test_wal_push_refuses_what_is_not_a_whole_segment_of_its_name(archiving, workdir):
    cluster, config = archiving
    name = cluster.switch_wal_and_wait_archived()
    real = (cluster.data / "pg_wal" / name).read_bytes()
    repo = Repository.from_config(load_config(config))
    cases = {
        "000000010000000000000050": (cluster.data / "postgresql.conf").read_bytes(),
        "000000010000000000000051": b"",
        "000000010000000000000052": real[: 1 << 20],
        "000000010000000000000053": real,  # another segment's content under this name
    }
    said = {}
    for target, data in cases.items():
        path = workdir / target
        path.write_bytes(data)
        said[target] = fails("wal-push", str(path), config=config)
        assert find(repo, "main", target) == []  # nothing archived
    assert "not a WAL file" in said["000000010000000000000050"]
    assert "is empty" in said["000000010000000000000051"]
    assert "truncated" in said["000000010000000000000052"]
    assert "not of 0/53000000 as its name says" in said["000000010000000000000053"]


def test_restore_refuses_impossible_requests_and_changes_nothing(archiving, workdir):
    cluster, config = archiving
    cfg = load_config(config)
    repo = Repository.from_config(cfg)
    backup = take_base_backup(repo, cfg.cluster("main"), "2026-11-26", lambda m: None)
    cluster.switch_wal_and_wait_archived()
    to = workdir / "restored"

    line = fails("restore", "--to", str(to), "--target-time", "2099-01-01T00:00:00Z", config=config)
    assert "is in the future" in line
    line = fails("restore", "--to", str(to), "--target-time", "2001-01-01T00:00:00Z", config=config)
    assert "no base backup finishes before" in line
    line = fails("restore", "--to", str(to), "--target-time", "tomorrow", config=config)
    assert "--target-time 'tomorrow'" in line
    assert not to.exists()
    line = fails("--cluster", "nope", "restore", "--to", str(to), config=config, code=2)
    assert "cluster 'nope' is not in the config" in line

    to.mkdir()
    (to / "precious").write_text("keep me")
    assert "is not empty" in fails("restore", "--to", str(to), config=config)
    assert (to / "precious").read_text() == "keep me"

    # A backup of another architecture or major version.
    catalog = repo.root / backup.catalog_key
    original = catalog.read_text()
    doc = json.loads(original)
    catalog.write_text(json.dumps({**doc, "architecture": "s390x"}))
    assert "s390x server" in fails("restore", "--to", str(workdir / "a"), config=config)
    catalog.write_text(json.dumps({**doc, "pg_major": 11}))
    assert "PostgreSQL 11" in fails("restore", "--to", str(workdir / "b"), "--start", config=config)
    catalog.write_text(original)
    assert not (workdir / "a").exists() and not (workdir / "b").exists()


def test_a_tar_member_escaping_the_target_is_refused(archiving, workdir):
    cluster, config = archiving
    cfg = load_config(config)
    repo = Repository.from_config(cfg)
    backup = take_base_backup(repo, cfg.cluster("main"), "2026-11-26", lambda m: None)
    cluster.switch_wal_and_wait_archived()
    # The same catalog entry, pointing at a tar someone crafted.
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as t:
        for name, data in [("PG_VERSION", b"15\n"), ("../../escaped", b"x")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    stored = zstandard.ZstdCompressor().compress(raw.getvalue())
    part = backup.parts[0].name  # one of its parts
    record = backup.objects[part]
    (repo.root / record.key).write_bytes(stored)
    doc = json.loads((repo.root / backup.catalog_key).read_text())
    doc["objects"][part].update(
        stored_bytes=len(stored), sha256=hashlib.sha256(stored).hexdigest(), raw_bytes=len(stored)
    )
    (repo.root / backup.catalog_key).write_text(json.dumps(doc))
    assert list_base_backups(repo, "main")[0].objects[part].sha256 == doc["objects"][part]["sha256"]

    to = workdir / "deep" / "restored"
    line = fails("restore", "--to", str(to), config=config)
    assert "has a member outside the folder it extracts into: ../../escaped" in line, line
    assert "nothing was restored" in line, line
    assert not (workdir / "escaped").exists() and not (workdir / "deep" / "escaped").exists()
    assert not any(to.iterdir())
    shutil.rmtree(to)
