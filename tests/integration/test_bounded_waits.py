"""Nothing waits for ever: a locked table stops a dump, broken archiving stops a base
backup, each after its configured time and with a message that says why."""

from __future__ import annotations

import faulthandler
import signal
import time

import psycopg
import pytest

from pg_backup_assets.core.base.backup import take_base_backup
from pg_backup_assets.core.catalog import list_base_backups, list_dump_sets
from pg_backup_assets.core.config import load_config
from pg_backup_assets.core.dumps.dump import take_dump_set
from pg_backup_assets.core.errors import CommandError
from pg_backup_assets.core.postgres.local_cluster import LocalCluster
from pg_backup_assets.core.storage.repository import Repository
from tests.conftest import write_config


def test_a_dump_gives_up_on_a_table_locked_too_long(pg, database, workdir):
    cfg = load_config(write_config(workdir, pg.dsn(), [database]))
    repo = Repository.from_config(cfg)
    with psycopg.connect(pg.dsn(database)) as holder:
        holder.execute("LOCK TABLE ledger IN ACCESS EXCLUSIVE MODE")  # an ALTER TABLE, say
        t0 = time.monotonic()
        with pytest.raises(CommandError, match="timeouts.lock_wait_seconds") as exc:
            take_dump_set(
                repo, cfg.cluster("main"), "2026-11-26", log=lambda m: None, lock_wait_s=1
            )
        waited = time.monotonic() - t0
    assert f"pg_dump of {database} waited 1s" in str(exc.value)
    assert "a lock on public.ledger" in str(exc.value)
    assert waited < 60  # it gave up; without the bound it would wait for the lock holder
    assert list_dump_sets(repo, "main") == []  # nothing half-made is listed


@pytest.mark.parametrize("sigterm", ["default", "ignored"])
def test_a_base_backup_stops_when_archiving_is_broken(workdir, sigterm):
    """``ignored``: as in a Dagster run started in the background by a shell without job
    control (SIGINT ignored; Dagster gives SIGTERM SIGINT's handler): pg_basebackup inherits
    an ignored SIGTERM, and the backup must still stop."""
    cluster = LocalCluster(workdir / "pg")
    config = write_config(workdir, cluster.dsn(), ["postgres"])
    cluster.init({"archive_mode": "on", "archive_command": "'false'"}, fast=True).start()
    before = signal.getsignal(signal.SIGTERM)
    if sigterm == "ignored":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    faulthandler.dump_traceback_later(120, exit=True)  # a hang fails this test, not the run
    try:
        cfg = load_config(config)
        repo = Repository.from_config(cfg)
        with pytest.raises(CommandError) as exc:
            take_base_backup(repo, cfg.cluster("main"), "2026-11-26", lambda m: None, 3)
        message = str(exc.value)
        assert "timeouts.archive_wait_seconds" in message
        assert "pg_stat_archiver shows" in message and "failures, the last for 0000000" in message
        assert list_base_backups(repo, "main") == []
        assert not any((workdir / "repo" / ".staging").iterdir())  # scratch removed
    finally:
        faulthandler.cancel_dump_traceback_later()
        signal.signal(signal.SIGTERM, before)
        cluster.stop()
