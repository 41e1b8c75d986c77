"""A fleet under the daemon: two clusters on one database host, both backed up, their heavy
steps one at a time (the host's pool), everything Dagster records kept in PostgreSQL."""

from __future__ import annotations

import shutil

import dagster as dg
import psycopg
import pytest
import yaml
from dagster._core.instance.ref import InstanceRef
from dagster_docker import DockerRunLauncher

from pg_backup_assets.definitions import build_defs
from pg_backup_assets.defs.context import HOST_TAG
from tests.integration.conftest import CLUSTERS, FLEET_YAML, Fleet

HOST = "127.0.0.1"
POOL = f"pg_backup_heavy@{HOST}"
BACKUPS = ("logical_dump", "base_backup", "offsite_dump", "offsite_base_backup")

# One test process builds this file's shared fixture (`make test` runs two).
pytestmark = pytest.mark.xdist_group("fleet")


def test_the_fleet_yaml_is_an_instance_dagster_loads(tmp_path, monkeypatch):
    env = {
        "DAGSTER_PG_HOST": "dagster-db.internal",
        "DAGSTER_PG_PORT": "5432",
        "DAGSTER_PG_DB": "dagster",
        "DAGSTER_PG_USER": "dagster",
        "DAGSTER_PG_PASSWORD": "s3cr3t",
    }
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    shutil.copy(FLEET_YAML, tmp_path / "dagster.yaml")
    ref = InstanceRef.from_dir(str(tmp_path))  # checked against Dagster's instance schema
    assert ref.storage_data.module_name == "dagster_postgres"
    db = ref.storage_data.config_dict["postgres_db"]
    assert db["scheme"] == "postgresql+psycopg2"  # SQLAlchemy 2.1 needs it said
    assert isinstance(ref.run_coordinator, dg.QueuedRunCoordinator)
    [limit] = ref.settings["concurrency"]["runs"]["tag_concurrency_limits"]
    assert limit["key"] == HOST_TAG and limit["value"] == {"applyLimitPerUniqueValue": True}
    assert ref.settings["concurrency"]["pools"]["default_limit"] >= 1
    launcher = ref.run_launcher
    assert isinstance(launcher, DockerRunLauncher)
    # A run writes its events into the same database: it gets what the storage reads.
    storage_vars = {v["env"] for v in db.values() if isinstance(v, dict) and "env" in v}
    assert storage_vars == set(env) and storage_vars <= set(launcher.env_vars)
    assert "PGBACKUP_CONFIG" in launcher.env_vars
    assert "s3cr3t" not in yaml.safe_dump(ref.storage_data.config_dict)  # only its name


def pool_steps(fleet: Fleet) -> set[str]:
    """The steps that run in the host's pool, as the definitions declare them."""
    defs = build_defs(str(fleet.config))
    nodes = [a for a in defs.assets if isinstance(a, dg.AssetsDefinition)] + list(defs.asset_checks)
    return {n.node_def.name for n in nodes if n.node_def.pool == POOL}


def step_intervals(instance: dg.DagsterInstance, run_id: str, steps: set[str]) -> list:
    starts, ends = {}, {}
    types = {
        dg.DagsterEventType.STEP_START,
        dg.DagsterEventType.STEP_SUCCESS,
        dg.DagsterEventType.STEP_FAILURE,
    }
    for entry in instance.all_logs(run_id, of_type=types):
        if entry.step_key not in steps:
            continue
        kind = entry.dagster_event.event_type
        (starts if kind == dg.DagsterEventType.STEP_START else ends)[entry.step_key] = (
            entry.timestamp
        )
    return [(starts[k], ends[k], run_id, k) for k in starts]


@pytest.mark.slow
def test_two_clusters_on_one_host_are_backed_up_one_heavy_step_at_a_time(fleet):
    with dg.DagsterInstance.from_config(str(fleet.home)) as instance:
        runs = {c: instance.get_run_by_id(r) for c, r in fleet.runs.items()}
        for cluster, run in runs.items():
            assert run.status == dg.DagsterRunStatus.SUCCESS, (cluster, run.status)
            assert run.tags[HOST_TAG] == HOST
            for asset in BACKUPS:
                event = instance.get_latest_materialization_event(dg.AssetKey([cluster, asset]))
                assert event is not None and event.run_id == run.run_id, (cluster, asset)
                assert event.dagster_event.partition == fleet.today

        # Both runs were in progress at once (the run queue allows 2 per host)...
        records = [instance.get_run_record_by_id(r.run_id) for r in runs.values()]
        (a_start, a_end), (b_start, b_end) = sorted((r.start_time, r.end_time) for r in records)
        assert b_start < a_end, "the two daily backups never ran at the same time"

        # ...but their heavy steps took turns: the pool holds one slot per host.
        steps = pool_steps(fleet)
        assert {"crm__base_backup", "crm__offsite_dump", "app_eu__logical_dump"} <= steps
        assert "crm__offsite_wal" not in steps and "crm__retention_expiry" not in steps
        assert instance.event_log_storage.get_concurrency_info(POOL).slot_count == 1
        intervals = sorted(
            iv for r in runs.values() for iv in step_intervals(instance, r.run_id, steps)
        )
        # Every heavy step of both daily backups ran (the weekly rehearsal is not one of them).
        assert {iv[3] for iv in intervals} == {s for s in steps if "rehearsal" not in s}
        for earlier, later in zip(intervals, intervals[1:], strict=False):
            assert later[0] >= earlier[1], f"{earlier[3]} and {later[3]} overlapped"
        blocked = [
            e
            for r in runs.values()
            for e in instance.all_logs(r.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT)
            if f"blocked by limit for pool {POOL}" in (e.message or "")
        ]
        assert blocked, "no step ever waited for the host's pool"


@pytest.mark.slow
def test_the_fleet_instance_keeps_runs_events_and_ticks_in_postgresql(fleet):
    with psycopg.connect(fleet.storage_dsn) as conn:
        statuses = dict(conn.execute("SELECT run_id, status FROM runs").fetchall())
        assert {statuses.get(r) for r in fleet.runs.values()} == {"SUCCESS"}
        for cluster, run_id in fleet.runs.items():
            (materialized,) = conn.execute(
                "SELECT count(*) FROM event_logs WHERE run_id = %s "
                "AND dagster_event_type = 'ASSET_MATERIALIZATION'",
                (run_id,),
            ).fetchone()
            assert materialized >= len(BACKUPS), cluster
        # The daemon's own state: its heartbeats and the sensors' ticks.
        (daemons,) = conn.execute("SELECT count(*) FROM daemon_heartbeats").fetchone()
        (ticks,) = conn.execute("SELECT count(*) FROM job_ticks").fetchone()
        assert daemons > 0 and ticks > 0
    # Nothing went to SQLite beside it.
    assert not list(fleet.home.rglob("*.db")), list(fleet.home.rglob("*.db"))
    assert set(CLUSTERS) == set(fleet.runs)
