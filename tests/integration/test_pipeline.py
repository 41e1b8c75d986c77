"""The pipeline runs itself: jobs and schedules, cluster names Dagster can use, and the
alert sensor, evaluated the way the daemon evaluates them (``evaluate_tick``) on a
SQLite instance, over a real cluster archiving through wal-push."""

from __future__ import annotations

import datetime as dt
import shutil
from zoneinfo import ZoneInfo

import dagster as dg
import pytest
from dagster._core.definitions.freshness import FreshnessState, FreshnessStateChange
from dagster._core.test_utils import create_run_for_test

from pg_backup_assets.core.config import load_config
from pg_backup_assets.core.storage.repository import Repository
from pg_backup_assets.core.wal.archive import find
from pg_backup_assets.definitions import build_defs
from pg_backup_assets.defs.alerts.sensors import ALERT_SENSOR
from pg_backup_assets.defs.wal.sensors import WAL_ARCHIVE_SENSOR
from tests.conftest import Webhook, tick, write_config
from tests.integration.test_cli import pgbackup


def test_jobs_schedules_and_sensors_run_without_anyone_starting_them(workdir):
    extra = "schedules: {daily: '45 23 * * *', timezone: Europe/Berlin}\n"
    cfg = write_config(workdir, "host=127.0.0.1 port=1", extra=extra, start_date=None)
    defs = build_defs(str(cfg))
    repo_def = defs.get_repository_def()
    assert {s.name: s.default_status for s in repo_def.schedule_defs} == {
        f"main_{name}_schedule": dg.DefaultScheduleStatus.RUNNING
        for name in (
            "daily_backup",
            "restore_rehearsal",
            "weekly_retention",
            "monthly_retention",
            "yearly_retention",
        )
    }
    assert {s.name for s in repo_def.sensor_defs} == {"wal_archive_sensor", "alert_sensor"}
    assert all(s.default_status == dg.DefaultSensorStatus.RUNNING for s in repo_def.sensor_defs)
    daily = defs.resolve_job_def("main_daily_backup")
    assert {c.name for c in daily.asset_layer.asset_graph.asset_check_keys} >= {
        "dump_restorable",
        "base_backup_verified",
        "size_anomaly",
    }
    assert daily.tags["dagster/max_runtime"] == str(6 * 3600)

    # A tick at 23:45 in Berlin is still that day there (22:45 UTC).
    schedule = defs.resolve_schedule_def("main_daily_backup_schedule")
    assert (schedule.cron_schedule, schedule.execution_timezone) == ("45 23 * * *", "Europe/Berlin")
    when = dt.datetime.now(ZoneInfo("Europe/Berlin")).replace(hour=23, minute=45)
    with dg.instance_for_test() as instance:
        context = dg.build_schedule_context(
            instance=instance, repository_def=repo_def, scheduled_execution_time=when
        )
        [request] = schedule.evaluate_tick(context).run_requests
        assert request.partition_key == request.run_key == when.date().isoformat()

        # A run of that partition that has not finished: the tick skips, and says which.
        day = request.partition_key
        other = (when.date() - dt.timedelta(days=1)).isoformat()
        runs = {
            (status, partition): create_run_for_test(
                instance,
                job_name="main_daily_backup",
                status=status,
                tags={"dagster/partition": partition},
            )
            for status, partition in [
                (dg.DagsterRunStatus.STARTED, other),  # another day's: no matter
                (dg.DagsterRunStatus.FAILURE, day),  # finished: no matter
                (dg.DagsterRunStatus.STARTING, day),
            ]
        }
        starting = runs[(dg.DagsterRunStatus.STARTING, day)]
        result = schedule.evaluate_tick(context)
        assert result.run_requests == []
        assert f"run {starting.run_id} of main_daily_backup for {day} is starting" in (
            result.skip_message
        )
        instance.delete_run(starting.run_id)
        [request] = schedule.evaluate_tick(context).run_requests
    assert request.partition_key == when.date().isoformat()
    # A new deployment's partitions begin today, not at a fixed date long ago.
    assert daily.partitions_def.start.date() == dt.datetime.now(ZoneInfo("Europe/Berlin")).date()


def test_a_cluster_name_with_a_hyphen_is_backed_up(pg, database, workdir):
    cfg = write_config(workdir, pg.dsn(), [database], cluster="prod-eu")
    defs = build_defs(str(cfg))
    key = dg.AssetKey(["prod-eu", "logical_dump"])
    assert defs.resolve_assets_def(key).group_names_by_key[key] == "prod_eu"
    assert defs.resolve_job_def("prod_eu_daily_backup")
    result = dg.materialize(
        [*defs.assets, *defs.asset_checks],
        selection=dg.AssetSelection.assets(key) | dg.AssetSelection.checks_for_assets(key),
        partition_key="2026-11-26",
        resources=defs.resources,
        raise_on_error=False,
    )
    assert result.success
    proc = pgbackup("info", "--json", config=cfg)
    assert '"prod-eu"' in proc.stdout  # the repository keeps the config's name


class Alerts:
    """The alert sensor ticking on one instance, its cursor carried from tick to tick."""

    def __init__(self, defs: dg.Definitions, instance: dg.DagsterInstance, hook: Webhook):
        self.defs, self.instance, self.hook = defs, instance, hook
        self.cursor: str | None = None

    def tick(self) -> list[dict]:
        """One tick; the messages the webhook received during it."""
        before = len(self.hook.bodies)
        data = tick(self.defs, ALERT_SENSOR, self.instance, self.cursor)
        self.cursor = data.cursor
        return self.hook.bodies[before:]

    def waiting(self) -> int:
        import json

        return len(json.loads(self.cursor)["outbox"])


def failed_run(defs: dg.Definitions, instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    key = dg.AssetKey(["main", "logical_dump"])
    return dg.materialize(
        [*defs.assets, *defs.asset_checks],
        selection=dg.AssetSelection.assets(key),
        partition_key="2026-11-26",
        resources=defs.resources,
        instance=instance,
        raise_on_error=False,
        tags={"pgbackup/cluster": "main"},
    )


def test_alerts_reach_the_webhook_once_per_change(archiving, workdir):
    cluster, config = archiving
    hook = Webhook()
    try:
        cfg_text = config.read_text() + (
            f"alerts: {{webhook_url: '{hook.url}', ui_url: 'http://dagster:3000'}}\n"
        )
        config.write_text(cfg_text)
        # A second config of the same cluster whose dumps fail: runs that fail for real.
        broken_dir = workdir / "broken"
        broken_dir.mkdir()
        broken = write_config(broken_dir, cluster.dsn(), ["no_such_db"])
        broken.write_text(broken.read_text() + f"alerts: {{webhook_url: '{hook.url}'}}\n")
        defs, broken_defs = build_defs(str(config)), build_defs(str(broken))
        repo = Repository.from_config(load_config(config))
        segments = [cluster.switch_wal_and_wait_archived() for _ in range(4)]
        victim = segments[1]

        with dg.instance_for_test() as instance:
            alerts = Alerts(defs, instance, hook)
            # History from before the sensor's first tick is not replayed.
            [obj] = find(repo, "main", victim)
            repo.storage.delete(obj.key)
            tick(defs, WAL_ARCHIVE_SENSOR, instance)
            assert not failed_run(broken_defs, instance).success
            assert alerts.tick() == []

            # The gap is seen on every WAL tick, and told once.
            tick(defs, WAL_ARCHIVE_SENSOR, instance)
            [gap] = alerts.tick()
            assert (gap["event"], gap["check"], gap["severity"]) == (
                "check_failed",
                "wal_archive_contiguous",
                "ERROR",
            )
            assert victim in gap["description"] and gap["cluster"] == "main"
            assert gap["url"] == "http://dagster:3000/assets/main/wal_archive?view=checks"
            tick(defs, WAL_ARCHIVE_SENSOR, instance)
            tick(defs, WAL_ARCHIVE_SENSOR, instance)
            assert alerts.tick() == []

            # A failed run, once, with what failed.
            assert not failed_run(broken_defs, instance).success
            [run] = alerts.tick()
            assert run["event"] == "run_failed" and run["cluster"] == "main"
            assert "no_such_db" in run["description"] and run["run_id"]
            assert alerts.tick() == []

            # The webhook is down: the alert waits, then goes out once it is back.
            hook.status = 503
            assert not failed_run(broken_defs, instance).success
            alerts.tick()
            assert alerts.waiting() == 1
            hook.status = 204
            [late] = alerts.tick()
            assert late["event"] == "run_failed" and alerts.waiting() == 0
            assert alerts.tick() == []
            ids = [b["id"] for b in hook.bodies if b["event"] == "run_failed"]
            # Two failed runs, three posts: the one the webhook refused was posted again.
            assert len(ids) == 3 and len(set(ids)) == 2 and ids[1] == ids[2]

            # The segment is archived again: one recovery message.
            shutil.copy(cluster.data / "pg_wal" / victim, workdir / victim)
            assert pgbackup("wal-push", str(workdir / victim), config=config).returncode == 0
            tick(defs, WAL_ARCHIVE_SENSOR, instance)
            [back] = alerts.tick()
            assert (back["event"], back["severity"]) == ("check_recovered", "INFO")

            # A backup that stopped materializing: the freshness daemon's state change.
            key = dg.AssetKey(["main", "base_backup"])
            for old, new in ((FreshnessState.UNKNOWN, FreshnessState.FAIL),):
                instance._report_runless_asset_event(  # noqa: SLF001 - what the daemon calls
                    FreshnessStateChange(
                        key=key,
                        previous_state=old,
                        new_state=new,
                        state_change_timestamp=dt.datetime.now(dt.UTC).timestamp(),
                    )
                )
            [stale] = alerts.tick()
            assert (stale["event"], stale["asset"]) == ("asset_stale", "main/base_backup")
            assert alerts.tick() == []
    finally:
        hook.close()


@pytest.mark.parametrize("fmt", ["slack"])
def test_slack_format_and_mute(archiving, fmt):
    cluster, config = archiving
    hook = Webhook()
    try:
        config.write_text(
            config.read_text()
            + f"alerts: {{webhook_url: '{hook.url}', format: {fmt}, "
            + "mute: ['*:wal_archive_fresh']}\n"
        )
        defs = build_defs(str(config))
        repo = Repository.from_config(load_config(config))
        segments = [cluster.switch_wal_and_wait_archived() for _ in range(3)]
        with dg.instance_for_test() as instance:
            alerts = Alerts(defs, instance, hook)
            alerts.tick()
            [obj] = find(repo, "main", segments[1])
            repo.storage.delete(obj.key)
            tick(defs, WAL_ARCHIVE_SENSOR, instance)
            [message] = alerts.tick()
        assert list(message) == ["text"] and segments[1] in message["text"]
        assert "wal_archive_contiguous" in message["text"]
    finally:
        hook.close()
