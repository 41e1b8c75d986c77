"""What runs when: per cluster, the jobs the schedules and sensors launch."""

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from zoneinfo import ZoneInfo

import dagster as dg

from pg_backup_assets.core.config import Schedules
from pg_backup_assets.core.rehearsal.rehearse import week_of
from pg_backup_assets.defs.context import HOST_TAG, ClusterContext
from pg_backup_assets.defs.jobs import AssetJob

# A failed backup run is retried once, from the step that failed (a dropped connection
# should not cost a night's backup); the alert sensor reports each failed run.
_RETRY = {"dagster/max_retries": "1", "dagster/retry_strategy": "FROM_FAILURE"}
PARTITION_TAG = "dagster/partition"
_NOT_FINISHED = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.SUSPENDED,
    dg.DagsterRunStatus.CANCELING,
]


@dataclass(frozen=True)
class ClusterJobs:
    daily_backup: AssetJob  # dumps + base backup + offsite copies
    base_backup: AssetJob  # base backup + its offsite copy
    offsite_wal: AssetJob | None
    restore_rehearsal: AssetJob
    tiers: dict[str, AssetJob]  # weekly / monthly / yearly promotion

    def all(self) -> list[AssetJob]:
        jobs = (self.daily_backup, self.base_backup, self.offsite_wal, self.restore_rehearsal)
        return [j for j in jobs if j] + list(self.tiers.values())


def build_jobs(c: ClusterContext) -> ClusterJobs:
    def job(  # noqa: ANN202
        name: str, assets: list[str], description: str, partitioned: bool = True, heavy: bool = True
    ):
        # Heavy runs carry their database host: the run queue's tag concurrency limit
        # (dagster.yaml) lets at most N of them per host start; their heavy steps share the
        # host's pool. Shipping WAL and promoting tiers are light and never wait for them.
        host = {HOST_TAG: c.host} if heavy else {}
        return dg.define_asset_job(
            name=f"{c.group}_{name}",
            # An asset selection brings the assets' checks along; the partitions are theirs.
            selection=dg.AssetSelection.assets(*(c.key(a) for a in assets)),
            tags={**c.run_tags, **host, **(_RETRY if partitioned else {})},
            description=description,
        )

    offsite = ["offsite_dump", "offsite_base_backup"] if c.offsite else []
    return ClusterJobs(
        daily_backup=job(
            "daily_backup",
            ["logical_dump", "base_backup", *offsite, "retention_expiry"],
            f"The nightly backups of {c.name}: logical dumps and a base backup, verified, "
            "copied offsite and checked there; then the retention policy is applied (only "
            "if they all succeeded).",
        ),
        base_backup=job(
            "base_backup",
            ["base_backup", *offsite[1:]],
            f"A base backup of {c.name} and its offsite copy (also after a WAL gap).",
        ),
        offsite_wal=job(
            "offsite_wal",
            ["offsite_wal"],
            f"Ship {c.name}'s new WAL offsite.",
            partitioned=False,
            heavy=False,
        )
        if c.offsite
        else None,
        restore_rehearsal=job(
            "restore_rehearsal",
            ["restore_rehearsal"],
            f"The weekly restore rehearsal of {c.name}, from the offsite copy.",
        ),
        tiers={
            tier: job(
                f"{tier}_retention",
                [f"{tier}_retention"],
                f"Promote the newest verified backup of the last {tier[:-2]} into the {tier} tier.",
                heavy=False,
            )
            for tier in ("weekly", "monthly", "yearly")
        },
    )


def build_daily_schedule(
    c: ClusterContext, job: AssetJob, schedules: Schedules
) -> dg.ScheduleDefinition:
    return _calendar_schedule(
        f"{c.group}_daily_backup_schedule",
        schedules.daily,
        schedules.timezone,
        job,
        lambda day: day.isoformat(),
        c.daily.start.date().isoformat(),
        f"Takes {c.name}'s daily backups into the partition of the day they run.",
    )


def build_weekly_schedule(
    c: ClusterContext, job: AssetJob, schedules: Schedules
) -> dg.ScheduleDefinition:
    return _calendar_schedule(
        f"{c.group}_restore_rehearsal_schedule",
        schedules.weekly,
        schedules.timezone,
        job,
        week_of,
        c.weekly.start.date().isoformat(),
        f"Rehearses a restore of {c.name} into the partition of the week it runs.",
    )


def build_tier_schedules(c: ClusterContext, jobs: dict[str, AssetJob]) -> list:
    """Each tier's window is promoted once it is over, early the next morning (after the
    daily backup and the rehearsal have had their turn)."""
    running = dg.DefaultScheduleStatus.RUNNING
    weekly = dg.build_schedule_from_partitioned_job(
        jobs["weekly"], hour_of_day=5, minute_of_hour=0, day_of_week=0, default_status=running
    )
    monthly = dg.build_schedule_from_partitioned_job(
        jobs["monthly"], hour_of_day=5, minute_of_hour=30, day_of_month=1, default_status=running
    )
    # A yearly cron takes no hour offset in build_schedule_from_partitioned_job.
    yearly = _calendar_schedule(
        f"{c.group}_yearly_retention_schedule",
        "0 6 1 1 *",
        c.tiers["yearly"].timezone,
        jobs["yearly"],
        lambda day: str(day.year - 1),  # the year just over
        c.tiers["yearly"].start.strftime("%Y"),
        f"Promotes the newest verified backup of the past year of {c.name}.",
    )
    return [weekly, monthly, yearly]


def _calendar_schedule(
    name: str,
    cron: str,
    timezone: str,
    job: AssetJob,
    partition_of: Callable[[dt.date], str],
    first: str,
    description: str,
) -> dg.ScheduleDefinition:
    """A RUNNING schedule on any cron (build_schedule_from_partitioned_job takes none for
    time partitions) that requests the partition of the day it runs. The run key names the
    partition but Dagster dedups run keys per tick only: a cron firing twice a day takes
    two sets into that day, and each run's steps follow their own set (defs/pinned.py).
    A tick skips while a run of that job and partition has not finished (queued, running,
    or its retry waiting): a backup that outlasts the interval, or a queue held up by the
    host's concurrency limit, does not pile up runs that would only wait for its locks."""
    tz = ZoneInfo(timezone)

    @dg.schedule(
        name=name,
        cron_schedule=cron,
        execution_timezone=timezone,
        job=job,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=description,
    )
    def _schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
        key = partition_of(context.scheduled_execution_time.astimezone(tz).date())
        if key < first:
            return dg.SkipReason(f"{key} is before the first partition ({first})")
        busy = context.instance.get_run_records(
            dg.RunsFilter(job_name=job.name, tags={PARTITION_TAG: key}, statuses=_NOT_FINISHED),
            limit=1,
        )
        if busy:
            run = busy[0].dagster_run
            return dg.SkipReason(
                f"run {run.run_id} of {job.name} for {key} is {run.status.value.lower()}: "
                "no second run of that partition until it finishes"
            )
        return dg.RunRequest(run_key=key, partition_key=key)

    return _schedule
