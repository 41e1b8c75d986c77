"""The pipeline runs itself: a real `dagster-daemon run` over the project's workspace, a
real PostgreSQL cluster archiving through wal-push, a local S3 endpoint as the offsite
store and a loopback HTTP server as the alert webhook. Nothing here calls an asset, a
check or a sensor: the test only changes the world (a deleted WAL segment) and watches
what the daemon makes of it, through the instance and the webhook."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import dagster as dg
import pytest

from pg_backup_assets.core.config import load_config
from pg_backup_assets.core.offsite.copy import wal_pending
from pg_backup_assets.core.offsite.store import offsite_repository
from pg_backup_assets.core.postgres.local_cluster import LocalCluster
from pg_backup_assets.core.storage.repository import Repository
from pg_backup_assets.core.wal.archive import find
from tests.conftest import (
    REPO_ROOT,
    Webhook,
    archiving_settings,
    make_bucket,
    stop_session,
    write_config,
)

BIN = Path(sys.executable).parent
TICK_S = 5  # every sensor's interval in this test
WAL_CONTIGUOUS = dg.AssetCheckKey(dg.AssetKey(["main", "wal_archive"]), "wal_archive_contiguous")


@contextlib.contextmanager
def daemon(home: Path, config: Path, log: Path) -> Iterator[subprocess.Popen]:
    env = {**os.environ, "DAGSTER_HOME": str(home), "PGBACKUP_CONFIG": str(config)}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(BIN / "dagster-daemon"), "run", "-w", str(REPO_ROOT / "workspace.yaml")],
            cwd=REPO_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            yield proc
        finally:
            stop_session(proc, 60)


def wait_for(what: str, fn: Callable[[], object], timeout: float, log: Path) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(1)
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-60:])
    raise AssertionError(f"timed out waiting for {what}; daemon log:\n{tail}")


def runs_of(instance: dg.DagsterInstance, job: str) -> list[dg.DagsterRun]:
    return list(instance.get_runs(filters=dg.RunsFilter(job_name=job)))


def finished(instance: dg.DagsterInstance, job: str, tag: str | None = None) -> dg.DagsterRun:
    for run in runs_of(instance, job):
        if tag and tag not in run.tags.get("pgbackup/reason", ""):
            continue
        if run.is_finished:
            return run
    return None


@pytest.mark.slow
def test_the_daemon_backs_up_ships_wal_and_alerts_once(workdir, s3_endpoint):
    cluster = LocalCluster(workdir / "pg")
    bucket = make_bucket(s3_endpoint)
    hook = Webhook()
    extra = f"""offsite:
  s3: {{bucket: {bucket}, endpoint_url: '{s3_endpoint}', region: us-east-1}}
schedules: {{daily: '* * * * *', timezone: UTC}}
sensors:
  wal_archive_interval_seconds: {TICK_S}
  offsite_wal_interval_seconds: {TICK_S}
  alert_interval_seconds: {TICK_S}
alerts: {{webhook_url: '{hook.url}', ui_url: 'http://dagster.example:3000'}}
"""
    config = write_config(workdir, cluster.dsn(), ["postgres"], extra=extra, start_date=None)
    home = workdir / "dagster_home"
    home.mkdir()
    shutil.copy(REPO_ROOT / "dagster.yaml", home / "dagster.yaml")
    log = workdir / "daemon.log"
    today = dt.datetime.now(dt.UTC).date().isoformat()
    cluster.init(archiving_settings(config), fast=True).start()
    try:
        with daemon(home, config, log) as proc, dg.DagsterInstance.from_config(str(home)) as inst:
            # 1. The schedule takes today's backups; the offsite copies follow in that run.
            run = wait_for(
                "the scheduled backup", lambda: finished(inst, "main_daily_backup"), 240, log
            )
            assert run.status == dg.DagsterRunStatus.SUCCESS, f"run {run.run_id} {run.status}"
            assert run.tags["dagster/partition"] == today
            for asset in ("logical_dump", "base_backup", "offsite_dump", "offsite_base_backup"):
                event = inst.get_latest_materialization_event(dg.AssetKey(["main", asset]))
                assert event is not None, asset
                assert event.dagster_event.partition == today, asset

            # 2. A deleted archived segment: red within the next sensor evaluations.
            segments = [cluster.switch_wal_and_wait_archived() for _ in range(3)]
            assert len(set(segments)) == 3, segments
            victim = segments[1]
            repo = Repository.from_config(load_config(config))
            [obj] = find(repo, "main", victim)
            seen = {
                r.id
                for r in inst.event_log_storage.get_asset_check_execution_history(
                    WAL_CONTIGUOUS, limit=50
                )
            }
            repo.storage.delete(obj.key)

            def evaluations_since():  # noqa: ANN202
                records = inst.event_log_storage.get_asset_check_execution_history(
                    WAL_CONTIGUOUS, limit=50
                )
                return sorted((r for r in records if r.id not in seen), key=lambda r: r.id)

            wait_for("two WAL sensor evaluations", lambda: len(evaluations_since()) >= 2, 60, log)
            first_two = evaluations_since()[:2]
            red = [r for r in first_two if r.status.value == "FAILED"]
            assert red, [
                (
                    r.status.value,
                    r.create_timestamp,
                    r.event.dagster_event.event_specific_data.description,
                )
                for r in evaluations_since()
            ]
            assert victim in red[0].event.dagster_event.event_specific_data.description

            # 3. Exactly one alert names the segment, however many ticks see the gap.
            def gap_alerts():  # noqa: ANN202
                return [
                    b
                    for b in hook.bodies
                    if b.get("check") == "wal_archive_contiguous" and victim in b["description"]
                ]

            wait_for("the gap alert", gap_alerts, 60, log)
            count = len(evaluations_since())
            wait_for(
                "three more evaluations", lambda: len(evaluations_since()) >= count + 3, 60, log
            )
            time.sleep(2 * TICK_S)  # at least one more alert sensor tick
            [alert] = gap_alerts()
            assert alert["event"] == "check_failed" and alert["severity"] == "ERROR"
            assert alert["cluster"] == "main" and alert["asset"] == "main/wal_archive"
            assert alert["url"] == "http://dagster.example:3000/assets/main/wal_archive?view=checks"

            # 4. The gap's base backup run, in today's partition, succeeds.
            gap_run = wait_for(
                "the gap's base backup run",
                lambda: finished(inst, "main_base_backup", victim),
                240,
                log,
            )
            assert gap_run.status == dg.DagsterRunStatus.SUCCESS
            assert gap_run.tags["dagster/partition"] == today

            # 5. Pending WAL reaches the offsite store.
            cluster.switch_wal_and_wait_archived()
            offsite = offsite_repository(load_config(config))
            shipped = lambda: wal_pending(repo, offsite, "main").pending == 0  # noqa: E731
            wait_for("WAL offsite", shipped, 120, log)
            failed = [b for b in hook.bodies if b["event"] == "run_failed"]
            assert not failed, [b for b in hook.bodies if b["event"] != "check_recovered"]

            # 6. The daemon stops cleanly.
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]
            # The webhook's URL is a secret (its path is the token): never in the log.
            assert "s3cr3t" not in log.read_text()
    finally:
        cluster.stop()
        hook.close()
