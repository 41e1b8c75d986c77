"""The asset factory: one asset group per configured cluster."""

import dagster as dg

from pg_backup_assets.defs.dumps.assets import build_logical_dump
from pg_backup_assets.defs.dumps.checks import build_dump_restorable


def build_cluster_defs(cluster: str) -> dg.Definitions:
    return dg.Definitions(
        assets=[build_logical_dump(cluster)],
        asset_checks=[build_dump_restorable(cluster)],
    )
