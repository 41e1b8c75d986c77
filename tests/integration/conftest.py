"""The fleet: two clusters on one database host, backed up by a real ``dagster-daemon`` over
a Dagster instance that keeps everything in PostgreSQL and is configured by
``deploy/dagster.fleet.yaml`` (without its Docker run launcher: runs start as processes
here). Shared, session-wide, by the fleet tests and the UI test: the daemon phase runs once.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import psycopg
import pytest
import yaml
from dagster_graphql import DagsterGraphQLClient, DagsterGraphQLClientError

from pg_backup_assets.core.config import dagster_name
from pg_backup_assets.core.postgres.local_cluster import LocalCluster, free_port, hand_over
from pg_backup_assets.core.wal.archive import archiving_settings
from tests.conftest import REPO_ROOT, _reachable_tmpdir, make_bucket, stop_session
from tests.integration.test_daemon import daemon, wait_for

BIN = Path(sys.executable).parent
FLEET_YAML = REPO_ROOT / "deploy" / "dagster.fleet.yaml"
CLUSTERS = ("app-eu", "crm")  # a '-' in a name becomes '_' in Dagster's group and job names
DAYS_BEFORE = 2  # the partitions begin two days ago: the UI shows days not backed up too


@dataclass
class Fleet:
    base: Path
    home: Path  # DAGSTER_HOME
    config: Path  # PGBACKUP_CONFIG
    storage_dsn: str  # Dagster's own database
    ui_url: str  # the webserver, still running for the UI test
    runs: dict[str, str]  # cluster -> the run id of its daily backup
    today: str
    start_date: str
    daemon_log: Path


def daily_job(cluster: str) -> str:
    return f"{dagster_name(cluster)}_daily_backup"


def fleet_config(base: Path, clusters: dict[str, LocalCluster], s3: str, start: str) -> Path:
    bucket = make_bucket(s3)
    cfg = {
        "repository": str(base / "repo"),
        "clusters": {
            "app-eu": {
                "dsn": clusters["app-eu"].dsn(),
                "databases": ["postgres"],
                "owners": ["dba@example.com", "team:platform"],
                "description": "The EU application database",
                "tags": {"env": "prod", "tier": "gold"},
            },
            "crm": {
                "dsn": clusters["crm"].dsn(),
                "databases": ["postgres"],
                "owners": ["team:sales-ops"],
                "tags": {"env": "prod"},
            },
        },
        "offsite": {"s3": {"bucket": bucket, "endpoint_url": s3, "region": "us-east-1"}},
        # The test starts the daily backups itself, both at once, as the Launchpad would;
        # the schedules start the same runs at their own time (here: never during a test).
        "schedules": {"daily": "0 3 1 1 *", "weekly": "0 4 1 1 *", "start_date": start},
        # A few observations of each WAL archive while the backups run.
        "sensors": {"wal_archive_interval_seconds": 15},
    }
    (base / "repo").mkdir()
    hand_over(base / "repo")  # wal-push writes into it as the postgres user
    path = base / "pgbackup.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def instance_yaml(home: Path) -> None:
    """deploy/dagster.fleet.yaml as it is, less the Docker run launcher."""
    settings = yaml.safe_load(FLEET_YAML.read_text())
    del settings["run_launcher"]
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump(settings))


@contextlib.contextmanager
def webserver(home: Path, config: Path, log: Path) -> Iterator[str]:
    """``dagster-webserver`` on a free loopback port; yields its URL once it answers."""
    port = free_port()
    env = {**os.environ, "DAGSTER_HOME": str(home), "PGBACKUP_CONFIG": str(config)}
    args = ["-h", "127.0.0.1", "-p", str(port), "-w", str(REPO_ROOT / "workspace.yaml")]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(BIN / "dagster-webserver"), *args],
            cwd=REPO_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            wait_for("the webserver", lambda: _answers(url + "/server_info"), 120, log)
            yield url
        finally:
            stop_session(proc, 30)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5):
            return True
    except OSError:
        return False


# The run's steps one after another in its run worker, rather than a process per step: the
# pool is claimed the same way (Dagster's ActiveExecution, either executor), and the test
# is twenty Python start-ups shorter.
IN_PROCESS = {"execution": {"config": {"in_process": {}}}}


def submit(ui_url: str, job: str, partition: str, log: Path) -> str:
    """Start a run through the webserver, as the Launchpad does (once the code is loaded)."""
    client = DagsterGraphQLClient("127.0.0.1", port_number=int(ui_url.rsplit(":", 1)[1]))

    def attempt() -> str | None:
        try:
            return client.submit_job_execution(
                job, run_config=IN_PROCESS, tags={"dagster/partition": partition}
            )
        except DagsterGraphQLClientError:
            return None  # the code location is still loading

    return wait_for(f"{job} submitted", attempt, 120, log)


@pytest.fixture(scope="session")
def fleet(s3_endpoint) -> Iterator[Fleet]:  # noqa: ANN001
    base = _reachable_tmpdir("pgba-fleet-")
    storage = LocalCluster(base / "dagster-pg")
    servers = {name: LocalCluster(base / name) for name in CLUSTERS}
    today = dt.datetime.now(dt.UTC).date().isoformat()
    start = (dt.date.fromisoformat(today) - dt.timedelta(days=DAYS_BEFORE)).isoformat()
    try:
        storage.init(fast=True).start()
        with psycopg.connect(storage.dsn(), autocommit=True) as conn:
            conn.execute("CREATE DATABASE dagster")
        config = fleet_config(base, servers, s3_endpoint, start)
        for name, server in servers.items():
            server.init(archiving_settings(config, name), fast=True).start()
        home = base / "dagster_home"
        instance_yaml(home)
        log = base / "daemon.log"
        with pytest.MonkeyPatch.context() as env, contextlib.ExitStack() as daemon_running:
            # What the fleet yaml reads from the environment, for this process (the test
            # reads the instance too) and the daemon's and webserver's, until teardown.
            for var, value in {
                "DAGSTER_PG_HOST": "127.0.0.1",
                "DAGSTER_PG_PORT": str(storage.port),
                "DAGSTER_PG_DB": "dagster",
                "DAGSTER_PG_USER": "postgres",
                "DAGSTER_PG_PASSWORD": "unused-on-trust",
            }.items():
                env.setenv(var, value)
            # The daemon loads the code while the webserver does; it stops once the backups
            # are done, and the UI test sees a fleet at rest.
            daemon_running.enter_context(daemon(home, config, log))
            with (
                webserver(home, config, base / "webserver.log") as ui_url,
                dg.DagsterInstance.from_config(str(home)) as instance,
            ):
                runs = {c: submit(ui_url, daily_job(c), today, log) for c in CLUSTERS}

                def finished() -> bool:
                    return all(instance.get_run_by_id(r).is_finished for r in runs.values())

                wait_for("both daily backups", finished, 600, log)
                daemon_running.close()
                yield Fleet(
                    base, home, config, storage.dsn("dagster"), ui_url, runs, today, start, log
                )
    finally:
        for server in (*servers.values(), storage):
            server.stop(mode="immediate")
        shutil.rmtree(base, ignore_errors=True)
