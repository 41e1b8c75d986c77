"""What every per-cluster builder needs to know, computed once from the config."""

import datetime as dt
from dataclasses import dataclass

import dagster as dg

from pg_backup_assets.core.config import Config, dagster_name

CLUSTER_TAG = "pgbackup/cluster"


@dataclass(frozen=True)
class ClusterContext:
    name: str  # as in the config: the asset key prefix and the repository folder
    group: str  # the same as Dagster's group and job names allow it
    daily: dg.PartitionsDefinition
    weekly: dg.PartitionsDefinition
    tiers: dict[str, dg.TimeWindowPartitionsDefinition]  # weekly / monthly / yearly windows
    daily_freshness: dg.FreshnessPolicy
    weekly_freshness: dg.FreshnessPolicy
    offsite: bool
    run_tags: dict[str, str]

    def key(self, asset: str) -> dg.AssetKey:
        return dg.AssetKey([self.name, asset])


def cluster_context(
    config: Config,
    name: str,
    daily: dg.PartitionsDefinition,
    weekly: dg.PartitionsDefinition,
    tiers: dict[str, dg.TimeWindowPartitionsDefinition],
) -> ClusterContext:
    run_s = config.timeouts.run_seconds
    return ClusterContext(
        name=name,
        group=dagster_name(name),
        daily=daily,
        weekly=weekly,
        tiers=tiers,
        daily_freshness=freshness(dt.timedelta(days=1), run_s),
        weekly_freshness=freshness(dt.timedelta(days=7), run_s),
        offsite=config.offsite is not None,
        run_tags={CLUSTER_TAG: name, "dagster/max_runtime": str(run_s)},
    )


def freshness(cadence: dt.timedelta, run_seconds: int) -> dg.FreshnessPolicy:
    """Stale once its cadence and a run's longest allowed time have passed since it last
    succeeded; a warning comes halfway into that grace."""
    return dg.FreshnessPolicy.time_window(
        fail_window=cadence + dt.timedelta(seconds=run_seconds),
        warn_window=cadence + dt.timedelta(seconds=max(run_seconds // 2, 60)),
    )
