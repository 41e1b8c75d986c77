"""What the definitions tell the UI and the run queue: one group per cluster with its owners
and tags, kinds that match the real backend, the database host's pool on every heavy step
and its tag on every heavy run, and ``three_two_one`` red where there is no offsite store."""

from __future__ import annotations

import dagster as dg

from pg_backup_assets.core.rehearsal.rehearse import RehearsalReport
from pg_backup_assets.definitions import build_defs
from pg_backup_assets.defs.anomalies import size_anomaly_result
from pg_backup_assets.defs.context import HOST_TAG
from pg_backup_assets.defs.rehearsal.assets import report_metadata, rpo_result, rto_result
from tests.conftest import write_config

FLEET = """clusters:
  orders:
    dsn: "host=db-1.internal port=5432 user=backup"
    owners: [dba@example.com, "team:payments"]
    tags: {env: prod, tier: gold}
    databases: [shop, ledger]
    description: Orders of the EU shop
  billing:
    dsn: "host=10.0.0.5 port=5433 user=backup"
    db_host: db-1.internal
  crm:
    dsn: "host=db-2.internal"
schedules: {start_date: '2026-11-01'}
"""
HEAVY = {
    "logical_dump",
    "base_backup",
    "logical_dump_dump_restorable",
    "base_backup_base_backup_verified",
    "offsite_dump",
    "offsite_base_backup",
    "offsite_dump_offsite_copy_matches",
    "offsite_dump_three_two_one",
    "offsite_base_backup_offsite_copy_matches",
    "offsite_base_backup_three_two_one",
    "restore_rehearsal",
}


def fleet_defs(workdir, offsite: str) -> dg.Definitions:  # noqa: ANN001
    (workdir / "repo").mkdir()
    (workdir / "pgbackup.yaml").write_text(f"repository: {workdir / 'repo'}\n{offsite}{FLEET}")
    return build_defs(str(workdir / "pgbackup.yaml"))


def assets_of(defs: dg.Definitions) -> dict[dg.AssetKey, dg.AssetSpec]:
    graph = defs.resolve_asset_graph()
    return {key: graph.get(key) for key in graph.get_all_asset_keys()}


S3 = "offsite: {s3: {bucket: offsite, region: eu-west-1}}\n"


def test_each_cluster_is_one_group_with_its_owners_and_tags(workdir):
    assets = assets_of(fleet_defs(workdir, S3))
    clusters = {key.path[0] for key in assets}
    assert clusters == {"orders", "billing", "crm"}
    for key, node in assets.items():
        assert node.group_name == key.path[0], key
        assert node.description, f"{key} has no description"
    orders = assets[dg.AssetKey(["orders", "base_backup"])]
    assert set(orders.owners) == {"dba@example.com", "team:payments"}
    assert {"env": "prod", "tier": "gold", HOST_TAG: "db-1.internal"}.items() <= orders.tags.items()
    crm = assets[dg.AssetKey(["crm", "wal_archive"])]
    assert (crm.owners, crm.tags.get(HOST_TAG)) == ([], "db-2.internal")


def test_descriptions_say_what_the_config_says(workdir):
    assets = assets_of(fleet_defs(workdir, S3))

    def described(cluster: str, asset: str) -> str:
        return assets[dg.AssetKey([cluster, asset])].description

    dump = described("orders", "logical_dump")
    assert dump.startswith("pg_dump")  # what it does first: the graph shows the first line
    assert "Databases: shop, ledger" in dump and str(workdir / "repo") in dump
    assert "Orders of the EU shop" in dump
    assert "every non-template database" in described("crm", "logical_dump")
    assert "Orders of the EU shop" not in described("crm", "logical_dump")
    assert "`s3://offsite/`" in described("orders", "offsite_base_backup")
    assert "`clusters.orders.rto_seconds`: 1800" in described("orders", "restore_rehearsal")
    assert "`retention.monthly`: 12" in described("billing", "monthly_retention")


def test_kinds_follow_the_backend(workdir):
    kinds = {
        k.to_user_string(): set(n.kinds) for k, n in assets_of(fleet_defs(workdir, S3)).items()
    }
    assert kinds["orders/base_backup"] == {"postgres", "file"}
    assert kinds["orders/offsite_base_backup"] == kinds["orders/offsite_wal"] == {"s3"}
    assert kinds["orders/restore_rehearsal"] == {"postgres", "s3"}  # restores the offsite copy
    assert kinds["orders/weekly_retention"] == {"file", "s3"}


def test_a_path_offsite_store_shows_no_s3_badge(workdir):
    offsite = f"offsite: {{path: {workdir / 'nfs'}}}\n"
    kinds = {
        k.to_user_string(): set(n.kinds) for k, n in assets_of(fleet_defs(workdir, offsite)).items()
    }
    assert kinds["orders/offsite_dump"] == kinds["orders/offsite_wal"] == {"file"}
    assert kinds["orders/restore_rehearsal"] == {"postgres", "file"}
    assert not [k for k, v in kinds.items() if "s3" in v]


def test_heavy_steps_share_their_database_hosts_pool(workdir):
    defs = fleet_defs(workdir, S3)
    nodes = [a for a in defs.assets if isinstance(a, dg.AssetsDefinition)] + list(defs.asset_checks)
    pools = {n.node_def.name: n.node_def.pool for n in nodes}
    for cluster, host in (("orders", "db-1.internal"), ("billing", "db-1.internal")):
        for step in HEAVY:
            assert pools[f"{cluster}__{step}"] == f"pg_backup_heavy@{host}", (cluster, step)
    assert pools["crm__base_backup"] == "pg_backup_heavy@db-2.internal"
    # Light work never queues behind a backup: shipping WAL (the offsite RPO depends on it),
    # expiry, promotions, the WAL checks.
    light = [n for n, p in pools.items() if n.startswith("orders__") and p is None]
    assert {n.removeprefix("orders__") for n in light} == {
        "offsite_wal",
        "retention_expiry",
        "weekly_retention",
        "monthly_retention",
        "yearly_retention",
    }


def test_heavy_runs_carry_their_database_host(workdir):
    defs = fleet_defs(workdir, S3)
    for job in ("daily_backup", "base_backup", "restore_rehearsal"):
        assert defs.resolve_job_def(f"billing_{job}").tags[HOST_TAG] == "db-1.internal", job
    for job in ("offsite_wal", "weekly_retention", "monthly_retention", "yearly_retention"):
        assert HOST_TAG not in defs.resolve_job_def(f"billing_{job}").tags, job


def test_without_an_offsite_store_three_two_one_is_red_on_the_backups(pg, database, workdir):
    config = write_config(workdir, pg.dsn(), [database])
    defs = build_defs(str(config))
    graph = defs.resolve_asset_graph()
    for asset in ("logical_dump", "base_backup"):
        assert dg.AssetCheckKey(dg.AssetKey(["main", asset]), "three_two_one") in (
            graph.asset_check_keys
        )
    key = dg.AssetKey(["main", "logical_dump"])
    result = dg.materialize(
        [*defs.assets, *defs.asset_checks],
        selection=dg.AssetSelection.assets(key) | dg.AssetSelection.checks_for_assets(key),
        partition_key="2026-11-26",
        resources=defs.resources,
    )
    verdicts = {e.check_name: e for e in result.get_asset_check_evaluations()}
    rule = verdicts["three_two_one"]
    assert not rule.passed and rule.severity == dg.AssetCheckSeverity.ERROR
    assert "no offsite store is configured" in rule.description
    assert verdicts["dump_restorable"].passed  # the backup itself is fine; the rule is not
    # Numbers the UI plots are never placeholders.
    [materialization] = result.asset_materializations_for_node("main__logical_dump")
    for name, value in materialization.metadata.items():
        raw = getattr(value, "value", value)
        assert raw != "" and not (isinstance(raw, int | float) and raw < 0), (name, raw)


def test_what_was_not_measured_is_left_out_not_zero():
    first = size_anomaly_result(1000, history=[])
    assert "median_bytes" not in first.metadata and first.passed

    # A rehearsal that failed before it restored anything.
    report = RehearsalReport("main", "2026-11-22", "offsite", problems=["no base backup"])
    md = report_metadata(report, "runbook")
    assert not {"rto_s", "rpo_s", "fetch_s", "replay_s", "restored_bytes"} & set(md)
    rto, rpo = rto_result(report, 1800), rpo_result(report, 300)
    assert not rto.passed and "rto_s" not in rto.metadata
    assert not rpo.passed and "rpo_s" not in rpo.metadata
