"""What every per-cluster builder needs to know, computed once from the config."""

import datetime as dt
from dataclasses import dataclass

import dagster as dg

from pg_backup_assets.core.config import Config, dagster_name
from pg_backup_assets.core.postgres.client import db_host
from pg_backup_assets.defs.resources import HEAVY_POOL

CLUSTER_TAG = "pgbackup/cluster"
HOST_TAG = "pgbackup/host"  # runs of heavy jobs: the run queue limits them per database host
REPOSITORY_KIND = "file"  # the local repository is a folder: the kind of the assets in it


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
    host: str  # the database server it runs on
    # Heavy steps (backups, their verification, offsite copies, rehearsals) of every
    # cluster on one database host share this pool, "pg_backup_heavy@<host>": dagster.yaml's
    # `concurrency: pools: default_limit` of them run at once.
    pool: str
    offsite_kind: str | None  # "s3" or "file" (a second filesystem); None: no offsite store
    owners: tuple[str, ...]
    tags: dict[str, str]  # asset tags: the config's, and the host

    def key(self, asset: str) -> dg.AssetKey:
        return dg.AssetKey([self.name, asset])

    @property
    def stores(self) -> set[str]:
        """The kinds of every store a backup of this cluster lives in."""
        return {REPOSITORY_KIND, *([self.offsite_kind] if self.offsite_kind else [])}

    def labels(self) -> dict[str, object]:
        """What every asset of the cluster shows: its group, owners and tags."""
        return {"group_name": self.group, "owners": list(self.owners), "tags": self.tags}


def cluster_context(
    config: Config,
    name: str,
    daily: dg.PartitionsDefinition,
    weekly: dg.PartitionsDefinition,
    tiers: dict[str, dg.TimeWindowPartitionsDefinition],
) -> ClusterContext:
    run_s = config.timeouts.run_seconds
    cluster = config.cluster(name)
    host = db_host(cluster.dsn, cluster.db_host)
    offsite = config.offsite
    return ClusterContext(
        name=name,
        group=dagster_name(name),
        daily=daily,
        weekly=weekly,
        tiers=tiers,
        daily_freshness=freshness(dt.timedelta(days=1), run_s),
        weekly_freshness=freshness(dt.timedelta(days=7), run_s),
        offsite=offsite is not None,
        run_tags={CLUSTER_TAG: name, "dagster/max_runtime": str(run_s)},
        host=host,
        pool=f"{HEAVY_POOL}@{host}",
        offsite_kind=None if offsite is None else ("s3" if offsite.s3 else "file"),
        owners=cluster.owners,
        tags={**dict(cluster.tags), HOST_TAG: host},
    )


def freshness(cadence: dt.timedelta, run_seconds: int) -> dg.FreshnessPolicy:
    """Stale once its cadence and a run's longest allowed time have passed since it last
    succeeded; a warning comes halfway into that grace."""
    return dg.FreshnessPolicy.time_window(
        fail_window=cadence + dt.timedelta(seconds=run_seconds),
        warn_window=cadence + dt.timedelta(seconds=max(run_seconds // 2, 60)),
    )
