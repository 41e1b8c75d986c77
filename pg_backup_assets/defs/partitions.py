import datetime as dt
import warnings
from collections.abc import Callable
from zoneinfo import ZoneInfo

import dagster as dg

from pg_backup_assets.core.catalog import oldest_backup_day
from pg_backup_assets.core.config import Config
from pg_backup_assets.core.errors import PgBackupError
from pg_backup_assets.core.storage.repository import Repository


def daily_partitions(config: Config) -> dg.DailyPartitionsDefinition:
    """One partition per day, in the schedules' time zone, today included: a backup belongs
    to the day it is taken (the nightly run's and a WAL gap's alike).

    The first day is ``schedules.start_date``, else the oldest backup's day, else today:
    a new deployment does not show months of "missing" days.
    """
    tz = config.schedules.timezone
    return dg.DailyPartitionsDefinition(
        start_date=config.schedules.start_date or _first_day(config),
        timezone=tz,
        end_offset=1,
    )


def weekly_partitions(daily: dg.DailyPartitionsDefinition) -> dg.WeeklyPartitionsDefinition:
    """Weeks from Sunday, the week of the first daily partition first, today's included."""
    first = daily.start.date()
    sunday = first - dt.timedelta(days=(first.weekday() + 1) % 7)
    return dg.WeeklyPartitionsDefinition(
        start_date=sunday.isoformat(), timezone=daily.timezone, end_offset=1
    )


def tier_partitions(
    daily: dg.DailyPartitionsDefinition,
) -> dict[str, dg.TimeWindowPartitionsDefinition]:
    """The GFS tiers' windows; each exists once it is over (its newest backup is final)."""
    first, tz = daily.start.date(), daily.timezone
    sunday = first - dt.timedelta(days=(first.weekday() + 1) % 7)
    return {
        "weekly": dg.WeeklyPartitionsDefinition(start_date=sunday.isoformat(), timezone=tz),
        "monthly": dg.MonthlyPartitionsDefinition(
            start_date=first.replace(day=1).isoformat(), timezone=tz
        ),
        # Dagster has no yearly class.
        "yearly": dg.TimeWindowPartitionsDefinition(
            cron_schedule="0 0 1 1 *",
            start=first.strftime("%Y"),
            fmt="%Y",
            timezone=tz,
        ),
    }


def today(config: Config) -> str:
    return dt.datetime.now(ZoneInfo(config.schedules.timezone)).date().isoformat()


def _first_day(config: Config) -> str:
    try:
        oldest = oldest_backup_day(Repository.from_config(config), list(config.clusters))
    except (PgBackupError, OSError):
        oldest = None  # an unreadable repository must not stop the definitions loading
    return oldest or today(config)


def daily_check(
    fn: Callable[..., dg.AssetCheckResult],
    partitions_def: dg.PartitionsDefinition,
    **kwargs: object,
) -> dg.AssetChecksDefinition:
    """An asset check partitioned like the daily asset it guards (it must know the day).

    Partitioned checks are a preview feature in Dagster 1.13; its warning is expected.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.PreviewWarning)
        return dg.asset_check(partitions_def=partitions_def, **kwargs)(fn)
