"""Retention on a real repository and a real S3 endpoint: tiers promoted, the plan applied
to exactly the objects it names, and afterwards `verify` clean and a point-in-time
recovery inside the daily window still working."""

from __future__ import annotations

import json

import psycopg
import pytest

from pg_backup_assets.core.base.backup import take_base_backup
from pg_backup_assets.core.base.restore import Target, restore
from pg_backup_assets.core.base.verify import verify_base_backup
from pg_backup_assets.core.catalog import list_base_backups, list_dump_sets, tiers_of
from pg_backup_assets.core.config import load_config
from pg_backup_assets.core.dumps.dump import check_restorable, take_dump_set
from pg_backup_assets.core.errors import PgBackupError
from pg_backup_assets.core.offsite.copy import copy_set, ship_wal
from pg_backup_assets.core.offsite.store import offsite_repository
from pg_backup_assets.core.retention.expire import expire
from pg_backup_assets.core.retention.tiers import promote
from pg_backup_assets.core.storage.repository import Repository
from pg_backup_assets.core.storage.s3 import s3_client
from pg_backup_assets.core.wal.archive import list_archive
from tests.conftest import make_bucket
from tests.faults.helpers import kill_at
from tests.integration.test_cli import BIN, pgbackup
from tests.integration.test_wal_archive import sql

pytestmark = pytest.mark.slow
DAYS = [f"2026-11-{d}" for d in range(17, 27)]  # Tue 17 .. Thu 26
POLICY = "retention: {daily: 3, weekly: 1, monthly: 0, yearly: 0}\n"


def quiet(_: str) -> None:
    pass


@pytest.fixture
def ten_days(archiving, s3_endpoint):  # noqa: ANN201
    """Ten days of verified backups, copied offsite, the week of 15-21 promoted weekly."""
    cluster, config = archiving
    bucket = make_bucket(s3_endpoint)
    config.write_text(
        config.read_text()
        + f"offsite:\n  s3: {{bucket: {bucket}, endpoint_url: '{s3_endpoint}'}}\n"
        + POLICY
    )
    cfg = load_config(config)
    repo, offsite = Repository.from_config(cfg), offsite_repository(cfg)
    sql(cluster, "CREATE TABLE t (day text, n int)")
    for day in DAYS:
        sql(cluster, f"INSERT INTO t SELECT '{day}', g FROM generate_series(1, 5000) g")
        backup = take_base_backup(repo, cfg.cluster("main"), day, quiet)
        assert verify_base_backup(repo, "main", backup, quiet).ok
        dumps = take_dump_set(repo, cfg.cluster("main"), day, quiet)
        assert all(v.ok for v in check_restorable(repo, dumps))
        copy_set(repo, offsite, backup.objects.values(), backup.catalog_key, 0)
        copy_set(repo, offsite, [o.record for o in dumps.objects], dumps.catalog_key, 0)
    cluster.switch_wal_and_wait_archived()
    ship_wal(repo, offsite, "main")
    promoted = promote(repo, offsite, "main", "weekly", "2026-11-15", "2026-11-15", "2026-11-22")
    assert [(p.kind, p.date) for p in promoted] == [("base", "2026-11-21"), ("dump", "2026-11-21")]
    # Offsite, the objects carry their tier as S3 tags (lifecycle rules can read them).
    weekly = next(b for b in list_base_backups(repo, "main") if b.date == "2026-11-21")
    tags = s3_client(s3_endpoint, "us-east-1").get_object_tagging(
        Bucket=bucket, Key=weekly.objects[weekly.parts[0].name].key
    )["TagSet"]
    assert tags == [{"Key": "pgbackup-weekly", "Value": "2026-11-15"}]
    return cluster, config, cfg, repo, offsite, bucket


def test_expiry_removes_exactly_what_the_plan_expires(ten_days, s3_endpoint, monkeypatch):
    cluster, config, cfg, repo, offsite, bucket = ten_days
    # Planning lists the S3 store once, and sends it no request per backup (verification
    # and tier records are read only where the listing shows them).
    calls = {"list": 0, "exists": 0}
    for name in calls:
        real = getattr(offsite.storage, name)

        def counted(*args, _real=real, _name=name):  # noqa: ANN002, ANN202
            calls[_name] += 1
            return _real(*args)

        monkeypatch.setattr(offsite.storage, name, counted)
    monkeypatch.setattr(
        "pg_backup_assets.core.retention.expire.offsite_repository", lambda _: offsite
    )
    planned_here = expire(cfg, "main", dry_run=True, log=quiet).plan
    assert calls == {"list": 1, "exists": 0}
    monkeypatch.undo()
    dry = pgbackup("expire", "--dry-run", "--json", config=config)
    assert dry.returncode == 0, dry.stderr
    plan = json.loads(dry.stdout)["clusters"]["main"]
    keep = {(b["kind"], b["date"]) for b in plan["backups"] if b["keep"]}
    assert keep == {(d.backup.kind, d.backup.date) for d in planned_here.decisions if d.keep}
    expected_days = {"2026-11-21", "2026-11-24", "2026-11-25", "2026-11-26"}
    assert keep == {(k, d) for k in ("base", "dump") for d in expected_days}
    reasons = {(b["kind"], b["date"]): b["reasons"] for b in plan["backups"]}
    assert reasons["base", "2026-11-21"] == ["weekly 2026-11-15"]
    assert reasons["base", "2026-11-20"] == ["expired: older than every tier keeps"]
    assert len(list_base_backups(repo, "main")) == 10  # the dry run deleted nothing
    expired_wal = [w for w in plan["wal"] if not w["keep"]]
    assert expired_wal and all(
        w["reason"] == "expired: needed by no kept backup" for w in expired_wal
    )

    before_local = {o.key for o in repo.storage.list("main/")}
    before_offsite = {o.key for o in offsite.storage.list("main/")}
    report = expire(cfg, "main", log=quiet)
    gone_local = before_local - {o.key for o in repo.storage.list("main/")}
    gone_offsite = before_offsite - {o.key for o in offsite.storage.list("main/")}
    planned = {
        k
        for d in report.plan.expired
        for k in before_local
        if k.startswith(d.backup.key.rsplit("/", 1)[0] + "/")
    } | {k for r in report.plan.expired_wal for k in r.keys}
    assert gone_local == planned
    assert gone_offsite == {k for k in planned if k in before_offsite}
    assert report.freed["local"] > 0 and report.freed["offsite"] > 0
    assert {b.date for b in list_base_backups(repo, "main")} == expected_days
    assert {s.date for s in list_dump_sets(offsite, "main")} == expected_days
    assert tiers_of(
        offsite,
        next(b for b in list_base_backups(offsite, "main") if b.date == "2026-11-21").catalog_key,
    ) == {"weekly": "2026-11-15"}

    # Everything left is whole, here and offsite, and recovery to the end still works.
    proc = pgbackup("verify", "--source", "all", config=config)
    assert proc.returncode == 0, proc.stderr
    sql(cluster, "INSERT INTO t VALUES ('after', 1)")
    cluster.switch_wal_and_wait_archived()
    ship_wal(repo, offsite, "main")
    result = restore(
        offsite,
        cfg.cluster("main"),
        config,
        cluster.base.parent / "pitr",
        Target("latest"),
        start=True,
        source="offsite",
        s3_env=True,
    )
    try:
        with psycopg.connect(result.dsn()) as conn:
            assert conn.execute("SELECT count(*) FROM t").fetchone() == (len(DAYS) * 5000 + 1,)
    finally:
        result.server.stop()


def test_a_killed_expiry_leaves_no_half_backup_listed(ten_days, monkeypatch):
    cluster, config, cfg, repo, offsite, _ = ten_days
    expired_wal = [w for w in list_archive(repo, "main").segments if w.name.endswith("0C")]
    # A run killed between the two deletions of a WAL object left it offsite only.
    repo.storage.delete(expired_wal[0].key)
    # A store that answers a delete but keeps a catalog entry: the backup stays listed
    # there, so its WAL must stay too (the next run tries again).
    sticky = next(b for b in list_base_backups(offsite, "main") if b.date == "2026-11-23")
    delete = offsite.storage.delete
    monkeypatch.setattr(
        offsite.storage, "delete", lambda key: None if key == sticky.catalog_key else delete(key)
    )
    monkeypatch.setattr(
        "pg_backup_assets.core.retention.expire.offsite_repository", lambda _: offsite
    )
    wal_before = {o.key for o in list_archive(repo, "main").segments}
    report = expire(cfg, "main", log=quiet)
    assert report.wal_kept and sticky.label in report.wal_kept
    assert {o.key for o in list_archive(repo, "main").segments} == wal_before
    for store in (repo, offsite):  # still listed, and whole
        kept = [b for b in list_base_backups(store, "main") if b.date == "2026-11-23"]
        assert kept and all(store.storage.exists(r.key) for r in kept[0].objects.values())
    monkeypatch.undo()

    expire_cmd = [str(BIN / "pgbackup"), "--config", str(config), "expire"]
    for delay in (0.6, 0.9, 1.2):
        kill_at(expire_cmd, delay)
        for store in (repo, offsite):
            for b in list_base_backups(store, "main"):  # listed: whole
                for record in b.objects.values():
                    assert store.storage.exists(record.key), record.key
    assert kill_at(expire_cmd, 300) == 0
    for store in (repo, offsite):
        assert {b.date for b in list_base_backups(store, "main")} == {
            "2026-11-21",
            "2026-11-24",
            "2026-11-25",
            "2026-11-26",
        }, store.describe()
    assert not offsite.storage.exists(expired_wal[0].key)  # planned from the offsite too
    proc = pgbackup("verify", "--source", "all", config=config)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_window_without_a_verified_backup_fails_naming_it(ten_days):
    _, _, _, repo, offsite, _ = ten_days
    with pytest.raises(PgBackupError, match="monthly window 2026-10-01 .*no base backup"):
        promote(repo, offsite, "main", "monthly", "2026-10-01", "2026-10-01", "2026-11-01")
