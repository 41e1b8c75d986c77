"""The alert sensor: tells a person, once, when a check turns red (runless evaluations of
the WAL sensor included), when a run fails, and when a backup goes stale; and once more
when it recovers. Works on the default SQLite instance: it reads check execution records
per check, run failures and freshness states, never a global event-log cursor.
"""

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from urllib.parse import quote

import dagster as dg
from dagster._core.definitions.freshness import FreshnessState

from pg_backup_assets.core.alerts import Alert, deliver, muted
from pg_backup_assets.core.config import Alerts
from pg_backup_assets.defs.context import CLUSTER_TAG
from pg_backup_assets.defs.resources import PgBackupResource

ALERT_SENSOR = "alert_sensor"
OUTBOX_LIMIT = 1000  # undelivered alerts kept for retries; the oldest go first beyond it
_PAGE = 100


@dataclass
class _State:
    """The sensor's cursor: what it has read and told, and what still waits to go out."""

    started: bool = False
    check_ids: dict[str, int] = field(default_factory=dict)  # check key -> newest id read
    failing: set[str] = field(default_factory=set)  # "check key|partition" alerted as red
    run_failure_id: int = 0  # newest RUN_FAILURE storage id read
    stale: set[str] = field(default_factory=set)  # asset keys alerted as stale
    outbox: list[dict] = field(default_factory=list)

    @classmethod
    def load(cls, cursor: str | None) -> "_State":
        if not cursor:
            return cls()
        d = json.loads(cursor)
        return cls(
            True,
            d["check_ids"],
            set(d["failing"]),
            d["run_failure_id"],
            set(d["stale"]),
            d["outbox"],
        )

    def dump(self) -> str:
        return json.dumps(
            {
                "check_ids": self.check_ids,
                "failing": sorted(self.failing),
                "run_failure_id": self.run_failure_id,
                "stale": sorted(self.stale),
                "outbox": self.outbox[-OUTBOX_LIMIT:],
            }
        )


def build_alert_sensor(interval_s: int) -> dg.SensorDefinition:
    @dg.sensor(
        name=ALERT_SENSOR,
        minimum_interval_seconds=interval_s,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Sends failed checks, failed runs and stale backups to alerts.webhook_url "
        "(and the log): once when they break, once when they recover.",
    )
    def alert_sensor(
        context: dg.SensorEvaluationContext, pgbackup: PgBackupResource
    ) -> dg.SensorResult:
        cfg = pgbackup.config().alerts
        state = _State.load(context.cursor)
        instance = context.instance
        # Every check and every asset with a freshness policy of this code location.
        graph = context.repository_def.asset_graph
        check_keys = sorted(graph.asset_check_keys)
        freshness_keys = [k for k in graph.get_all_asset_keys() if graph.get(k).freshness_policy]
        new = [
            *_check_alerts(instance, check_keys, state, cfg),
            *_run_alerts(instance, state, cfg),
            *_freshness_alerts(instance, freshness_keys, state, cfg),
        ]
        state.started = True
        told = [a for a in new if not muted(a, cfg.mute)]
        for alert in told:
            context.log.warning(f"alert: {alert.summary()}")
        state.outbox += [a.payload("json") for a in told]
        sent, error = 0, None
        if cfg.webhook_url and state.outbox:
            waiting = [Alert.from_dict(d) for d in state.outbox]
            sent, error = deliver(cfg.webhook_url, cfg.format, waiting)
            state.outbox = state.outbox[sent:]
            if error:
                context.log.warning(
                    f"alert delivery failed ({error}); {len(state.outbox)} alerts wait for "
                    "the next tick"
                )
        elif not cfg.webhook_url:
            state.outbox = []  # no webhook configured: the log is where alerts go
        return dg.SensorResult(
            cursor=state.dump(),
            skip_reason=f"{len(told)} new alerts ({len(new) - len(told)} muted), {sent} "
            f"delivered, {len(state.outbox)} waiting",
        )

    return alert_sensor


def _check_alerts(
    instance: dg.DagsterInstance, keys: Sequence[dg.AssetCheckKey], state: _State, cfg: Alerts
) -> Iterator[Alert]:
    storage = instance.event_log_storage
    for key in keys:
        name = key.to_user_string()
        if not state.started:
            # A fresh sensor starts from now: it does not replay old history.
            latest = storage.get_asset_check_execution_history(key, limit=1)
            state.check_ids[name] = latest[0].id if latest else 0
            continue
        seen = state.check_ids.get(name, 0)
        records = _newer_executions(storage, key, seen)
        for record in records:
            if record.status.value not in ("SUCCEEDED", "FAILED") or record.event is None:
                continue  # planned, not evaluated yet
            evaluation = record.event.get_dagster_event().event_specific_data
            which = f"{name}|{record.partition or ''}"
            failed = record.status.value == "FAILED"
            if failed == (which in state.failing):
                continue  # still red (already told), or still green
            if failed:
                state.failing.add(which)
            else:
                state.failing.discard(which)
            yield Alert.new(
                "check_failed" if failed else "check_recovered",
                evaluation.severity.value if failed else "INFO",
                evaluation.description or "",
                source=str(record.id),
                cluster=key.asset_key.path[0],
                asset=key.asset_key.to_user_string(),
                check=key.name,
                partition=record.partition,
                run_id=record.run_id or None,
                url=_asset_url(cfg, key.asset_key, "checks"),
            )
        if records:
            state.check_ids[name] = max(r.id for r in records)


def _newer_executions(storage, key: dg.AssetCheckKey, seen: int) -> list:  # noqa: ANN001
    """Executions of a check with an id above ``seen``, oldest first."""
    out, cursor = [], None
    while True:
        page = storage.get_asset_check_execution_history(key, limit=_PAGE, cursor=cursor)
        newer = [r for r in page if r.id > seen]
        out += newer
        if len(newer) < _PAGE:
            return sorted(out, key=lambda r: r.id)
        cursor = page[-1].id


def _run_alerts(instance: dg.DagsterInstance, state: _State, cfg: Alerts) -> Iterator[Alert]:
    failure = dg.DagsterEventType.RUN_FAILURE
    if not state.started:
        latest = instance.fetch_run_status_changes(failure, limit=1).records
        state.run_failure_id = latest[0].storage_id if latest else 0
        return
    while True:
        page = instance.fetch_run_status_changes(
            dg.RunStatusChangeRecordsFilter(failure, after_storage_id=state.run_failure_id),
            limit=_PAGE,
            ascending=True,
        ).records
        for record in page:
            state.run_failure_id = record.storage_id
            run = instance.get_run_by_id(record.run_id)
            if run is None:
                continue
            yield Alert.new(
                "run_failed",
                "ERROR",
                _why_run_failed(instance, run.run_id, record.event_log_entry.message),
                source=run.run_id,
                cluster=run.tags.get(CLUSTER_TAG),
                partition=run.tags.get("dagster/partition"),
                job=run.job_name,
                run_id=run.run_id,
                url=f"{cfg.ui_url}/runs/{run.run_id}" if cfg.ui_url else None,
            )
        if len(page) < _PAGE:
            return


def _why_run_failed(instance: dg.DagsterInstance, run_id: str, message: str) -> str:
    steps = []
    for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_FAILURE):
        event = entry.get_dagster_event()
        error = event.step_failure_data.error
        while error is not None and error.cause is not None:
            error = error.cause  # Dagster's wrapper first; the engine's own message last
        text = error.message.strip().splitlines()[0] if error and error.message else ""
        steps.append(f"{event.step_key}: {text}")
    return "; ".join(steps) or message or "the run failed"


def _freshness_alerts(
    instance: dg.DagsterInstance, keys: Sequence[dg.AssetKey], state: _State, cfg: Alerts
) -> Iterator[Alert]:
    records = instance.get_freshness_state_records(list(keys))
    for key in keys:
        record = records.get(key)
        if record is None:
            continue
        name = key.to_user_string()
        stale = record.freshness_state == FreshnessState.FAIL
        fresh = record.freshness_state == FreshnessState.PASS
        if stale and name not in state.stale:
            state.stale.add(name)
            event, severity = "asset_stale", "ERROR"
            text = "no successful backup within its freshness window (a day and a run's time)"
        elif fresh and name in state.stale:
            state.stale.discard(name)
            event, severity, text = "asset_fresh", "INFO", "backed up again"
        else:
            continue
        yield Alert.new(
            event,
            severity,
            text,
            source=f"{name}|{record.updated_at.isoformat()}",
            cluster=key.path[0],
            asset=name,
            url=_asset_url(cfg, key),
        )


def _asset_url(cfg: Alerts, key: dg.AssetKey, view: str | None = None) -> str | None:
    if not cfg.ui_url:
        return None
    path = "/".join(quote(p, safe="") for p in key.path)
    return f"{cfg.ui_url}/assets/{path}" + (f"?view={view}" if view else "")
