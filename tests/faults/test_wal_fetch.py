"""restore_command: "not archived" is exit 1, and every other failure stops recovery (exit
126), because PostgreSQL reads any status up to 125 as "no such file" and may end a
recovery there, early and silently."""

from __future__ import annotations

import pytest

from pg_backup_assets import cli
from pg_backup_assets.core.config import load_config
from pg_backup_assets.core.postgres.local_cluster import free_port
from pg_backup_assets.core.storage.repository import Repository
from pg_backup_assets.core.wal.archive import find
from tests.faults.helpers import DeniedS3, fill, tmpfs
from tests.integration.test_cli import pgbackup

pytestmark = pytest.mark.slow


def offsite(config, endpoint: str) -> None:
    config.write_text(
        config.read_text()
        + f"offsite:\n  s3: {{bucket: b, endpoint_url: '{endpoint}', region: us-east-1, "
        + "max_attempts: 2}\n"
    )


def test_not_archived_exits_1(archiving, workdir):
    _, config = archiving
    proc = pgbackup("wal-fetch", "0000000100000000000000FE", str(workdir / "x"), config=config)
    assert proc.returncode == 1 and "is not in the archive" in proc.stderr


def test_s3_denied_or_down_is_fatal_when_the_local_copy_is_gone(archiving, workdir, monkeypatch):
    cluster, config = archiving
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-a-real-secret")
    segment = cluster.switch_wal_and_wait_archived()
    repo = Repository.from_config(load_config(config))
    [obj] = find(repo, "main", segment)
    repo.storage.delete(obj.key)
    denied = DeniedS3()
    try:
        offsite(config, denied.url)
        proc = pgbackup("wal-fetch", segment, str(workdir / "seg"), config=config)
        assert proc.returncode == 126, proc.stderr
        assert "AccessDenied" in proc.stderr and segment in proc.stderr
    finally:
        denied.close()
    config.write_text(config.read_text().replace(denied.url, f"http://127.0.0.1:{free_port()}"))
    proc = pgbackup("wal-fetch", segment, str(workdir / "seg"), config=config)
    assert proc.returncode == 126, proc.stderr
    assert "Could not connect" in proc.stderr or "failed" in proc.stderr
    assert not (workdir / "seg").exists()


def test_a_full_destination_is_fatal(archiving, workdir):
    cluster, config = archiving
    segment = cluster.switch_wal_and_wait_archived()
    with tmpfs(workdir / "small", 8) as small:
        fill(small, 64 << 10)
        proc = pgbackup("wal-fetch", segment, str(small / segment), config=config)
        assert proc.returncode == 126, proc.stderr
        assert "No space left on device" in proc.stderr
        assert not list(small.glob(f"*{segment}*"))  # no half-written file left behind


def test_bad_arguments_a_bad_config_and_a_bug_are_fatal(archiving, workdir, monkeypatch):
    cluster, config = archiving
    segment = cluster.switch_wal_and_wait_archived()
    assert pgbackup("wal-fetch", segment, config=config).returncode == 126  # no DEST
    broken = workdir / "broken.yaml"
    broken.write_text(config.read_text() + "surprise: 1\n")
    proc = pgbackup("wal-fetch", segment, str(workdir / "s"), config=broken)
    assert proc.returncode == 126 and "surprise" in proc.stderr

    def bug(*args: object) -> None:
        raise RuntimeError("an unexpected state")

    monkeypatch.setattr("pg_backup_assets.core.wal.archive.fetch", bug)
    rc = cli.main(["--config", str(config), "wal-fetch", segment, str(workdir / "s")])
    assert rc == 126
