"""Offsite copies against a real S3 endpoint (moto's server, a separate process on
loopback) and a second filesystem; the 3-2-1 rule judged honestly."""

from __future__ import annotations

import hashlib
import os
import re
import shutil

import dagster as dg
import pytest
from botocore.exceptions import ClientError

from pg_backup_assets.core.config import load_config
from pg_backup_assets.core.dumps.dump import take_dump_set
from pg_backup_assets.core.errors import PgBackupError
from pg_backup_assets.core.postgres.local_cluster import LocalCluster
from pg_backup_assets.core.storage.repository import Repository
from pg_backup_assets.core.storage.s3 import S3Storage, s3_client
from pg_backup_assets.core.wal.archive import list_archive
from pg_backup_assets.definitions import build_defs
from pg_backup_assets.defs.check_names import (
    DUMP_RESTORABLE,
    OFFSITE_COPY_MATCHES,
    OFFSITE_WAL_FRESH,
    THREE_TWO_ONE,
)
from pg_backup_assets.defs.offsite.sensors import OFFSITE_WAL_SENSOR
from tests.conftest import TcpProxy, archiving_settings, make_bucket, tick, write_config
from tests.integration.test_cli import pgbackup
from tests.integration.test_wal_archive import sql, switch_and_wait_archived

DAY = "2026-11-26"
MiB = 1 << 20


def materialize(config, keys, day=DAY, checks_only=None):
    defs = build_defs(str(config))
    if checks_only:
        selection = dg.AssetSelection.checks(*checks_only)
        partition = {"tags": {"dagster/partition": day}}
    else:
        selection = dg.AssetSelection.assets(*keys) | dg.AssetSelection.checks_for_assets(*keys)
        partition = {"partition_key": day} if day else {}
    return dg.materialize(
        [*defs.assets, *defs.asset_checks],
        selection=selection,
        resources=defs.resources,
        raise_on_error=False,
        **partition,
    )


def checks_of(result, asset: str) -> dict:
    return {
        e.check_name: e
        for e in result.get_asset_check_evaluations()
        if e.asset_key == dg.AssetKey(["main", asset])
    }


def test_s3_offsite_survives_losing_the_local_repository(workdir, s3_endpoint):
    bucket = make_bucket(s3_endpoint)
    extra = (
        f"offsite:\n  s3: {{bucket: {bucket}, prefix: prod/, endpoint_url: '{s3_endpoint}', "
        "region: us-east-1}\n"
    )
    primary = LocalCluster(workdir / "pg")
    config = write_config(workdir, primary.dsn(), ["postgres"], extra=extra)
    primary.init(archiving_settings(config), fast=True).start()
    try:
        sql(primary, "CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 1000) g")
        base, off_base = (
            dg.AssetKey(["main", "base_backup"]),
            dg.AssetKey(["main", "offsite_base_backup"]),
        )
        result = materialize(config, [base, off_base])
        assert result.success
        checks = checks_of(result, "offsite_base_backup")
        assert checks[OFFSITE_COPY_MATCHES].passed, checks[OFFSITE_COPY_MATCHES].description
        rule = checks[THREE_TWO_ONE]
        assert not rule.passed  # honest: moto on 127.0.0.1 is not offsite
        assert "is on this machine" in rule.description and "3 copies" in rule.description

        sql(primary, "INSERT INTO t SELECT g FROM generate_series(1001, 3000) g")
        switch_and_wait_archived(primary)
        defs = build_defs(str(config))
        with dg.instance_for_test() as instance:
            [request] = tick(defs, OFFSITE_WAL_SENSOR, instance).run_requests
            assert request.job_name == "main_offsite_wal"
        result = materialize(config, [dg.AssetKey(["main", "offsite_wal"])], day=None)
        assert result.success
        fresh = checks_of(result, "offsite_wal")[OFFSITE_WAL_FRESH]
        assert fresh.passed, fresh.description
        with dg.instance_for_test() as instance:
            assert not tick(defs, OFFSITE_WAL_SENSOR, instance).run_requests  # all offsite now

        # wal-fetch falls back to the offsite copy when the local one is gone or damaged.
        local = Repository.from_config(load_config(config))
        first, second = sorted(list_archive(local, "main").segments, key=lambda o: o.name)[:2]
        local.storage.delete(first.key)
        damaged = workdir / "repo" / second.key
        damaged.write_bytes(b"\0" * damaged.stat().st_size)
        for obj in (first, second):
            proc = pgbackup("wal-fetch", obj.name, str(workdir / obj.name), config=config)
            assert proc.returncode == 0, proc.stderr
            assert (workdir / obj.name).stat().st_size == 16 * MiB

        # Disaster: the server and the whole local repository are gone.
        primary.stop()
        shutil.rmtree(workdir / "repo")
        to = workdir / "from-offsite"
        proc = pgbackup("restore", "--to", str(to), "--source", "offsite", "--start", config=config)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "s3://" in proc.stdout
        # Replay's WAL came from S3 ahead of it, every file checked (threads, one client).
        ahead = re.search(r"WAL fetched ahead (\d+) of (\d+) files, (\d+) taken", proc.stdout)
        assert ahead and ahead[1] == ahead[2] and int(ahead[3]) >= 2, proc.stdout[-2000:]
        server = LocalCluster(to.parent / f".{to.name}.run", data=to)
        server.port = int(
            next(p for p in proc.stdout.split() if p.startswith("port=")).split("=")[1]
        )
        try:
            assert sql(server, "SELECT count(*) FROM t")[0][0] == 3000
        finally:
            server.stop()
    finally:
        primary.stop()


def test_tampered_offsite_object_fails_offsite_copy_matches(pg, database, workdir, s3_endpoint):
    bucket = make_bucket(s3_endpoint)
    extra = (
        f"offsite:\n  s3: {{bucket: {bucket}, endpoint_url: '{s3_endpoint}', region: us-east-1}}\n"
    )
    config = write_config(workdir, pg.dsn(), [database], extra=extra)
    dump, off = dg.AssetKey(["main", "logical_dump"]), dg.AssetKey(["main", "offsite_dump"])
    result = materialize(config, [dump, off])
    assert result.success
    assert checks_of(result, "offsite_dump")[OFFSITE_COPY_MATCHES].passed

    client = s3_client(s3_endpoint, "us-east-1")
    key = next(
        o["Key"]
        for o in client.list_objects_v2(Bucket=bucket)["Contents"]
        if o["Key"].endswith(".dump.zst")
    )
    body = bytearray(client.get_object(Bucket=bucket, Key=key)["Body"].read())
    body[len(body) // 2] ^= 0xFF
    client.put_object(Bucket=bucket, Key=key, Body=bytes(body))
    check = dg.AssetCheckKey(off, OFFSITE_COPY_MATCHES)
    result = materialize(config, [], checks_only=[check])
    [evaluation] = result.get_asset_check_evaluations()
    assert not evaluation.passed and key in evaluation.description


def test_endpoint_going_away_mid_upload_leaves_nothing_visible(s3_endpoint):
    bucket = make_bucket(s3_endpoint)
    proxy = TcpProxy(int(s3_endpoint.rsplit(":", 1)[1]))
    direct = s3_client(s3_endpoint, "us-east-1")
    flaky = s3_client(f"http://127.0.0.1:{proxy.port}", "us-east-1", max_attempts=2)
    storage = S3Storage(flaky, bucket, part_size=5 * MiB)
    data = os.urandom(23 * MiB)
    try:
        with pytest.raises(PgBackupError, match="S3 .* failed"), storage.writer("big.bin") as w:
            for i in range(0, len(data), MiB):
                if i == 12 * MiB:
                    proxy.cut()
                w.write(data[i : i + MiB])
        assert "Contents" not in direct.list_objects_v2(Bucket=bucket)
        proxy.restore()
        with storage.writer("big.bin") as w:
            for i in range(0, len(data), MiB):
                w.write(data[i : i + MiB])
        got = direct.get_object(Bucket=bucket, Key="big.bin")["Body"].read()
        assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
        # The upload the outage left behind was cleared by the retry.
        assert not direct.list_multipart_uploads(Bucket=bucket).get("Uploads")
    finally:
        proxy.close()


def test_multipart_upload_larger_than_a_part(s3_endpoint):
    bucket = make_bucket(s3_endpoint)
    client = s3_client(s3_endpoint, "us-east-1")
    storage = S3Storage(client, bucket, prefix="p", part_size=5 * MiB)
    data = os.urandom(12 * MiB + 123)
    with storage.writer("x/obj") as w:
        w.write(data)
    head = client.head_object(Bucket=bucket, Key="p/x/obj")
    assert head["ETag"].strip('"').endswith("-3")  # three parts
    with storage.open("x/obj") as f:
        assert f.read() == data
    assert [o.key for o in storage.list("x/")] == ["x/obj"]


def test_object_lock_prevents_deletion(s3_endpoint):
    bucket = make_bucket(s3_endpoint, object_lock=True)
    client = s3_client(s3_endpoint, "us-east-1")
    storage = S3Storage(client, bucket, object_lock_days=1)
    with storage.writer("locked") as w:
        w.write(b"precious")
    version = client.head_object(Bucket=bucket, Key="locked")["VersionId"]
    with pytest.raises(ClientError) as exc:
        client.delete_object(Bucket=bucket, Key="locked", VersionId=version)
    assert exc.value.response["Error"]["Code"] == "AccessDenied"
    assert (
        client.get_object(Bucket=bucket, Key="locked", VersionId=version)["Body"].read()
        == b"precious"
    )


def test_offsite_path_on_the_same_filesystem_is_not_offsite(pg, database, workdir):
    extra = f"offsite:\n  path: {workdir / 'second'}\n"
    config = write_config(workdir, pg.dsn(), [database], extra=extra)
    dump, off = dg.AssetKey(["main", "logical_dump"]), dg.AssetKey(["main", "offsite_dump"])
    result = materialize(config, [dump, off])
    assert result.success
    checks = checks_of(result, "offsite_dump")
    assert checks[OFFSITE_COPY_MATCHES].passed
    assert not checks[THREE_TWO_ONE].passed
    assert "same filesystem as the repository" in checks[THREE_TWO_ONE].description
    assert any((workdir / "second" / "main" / "dumps").rglob("catalog.json"))


def test_each_step_follows_the_set_its_own_run_made(pg, database, workdir):
    """A second set taken into the same day mid-run (another run, the WAL sensor's base
    backup) must not swap what this run copies offsite and checks: every step follows the
    catalog_key its upstream recorded in this run."""
    extra = f"offsite:\n  path: {workdir / 'second'}\n"
    config = write_config(workdir, pg.dsn(), [database], extra=extra)
    defs = build_defs(str(config))
    dump, off = dg.AssetKey(["main", "logical_dump"]), dg.AssetKey(["main", "offsite_dump"])
    loaded = load_config(config)

    # Highest priority: runs as soon as the dump is done, before the offsite copy.
    @dg.asset(key=["test", "concurrent_dump"], deps=[dump], op_tags={"dagster/priority": "9"})
    def concurrent_dump() -> dg.MaterializeResult:
        taken = take_dump_set(Repository.from_config(loaded), loaded.cluster("main"), DAY)
        return dg.MaterializeResult(metadata={"catalog_key": taken.catalog_key})

    result = dg.materialize(
        [*defs.assets, *defs.asset_checks, concurrent_dump],
        selection=dg.AssetSelection.assets(dump, off, concurrent_dump.key)
        | dg.AssetSelection.checks_for_assets(dump, off),
        resources=defs.resources,
        partition_key=DAY,
    )
    assert result.success
    order = [e.step_key for e in result.all_events if e.event_type_value == "STEP_START"]
    assert order.index("test__concurrent_dump") < order.index("main__offsite_dump"), order

    def recorded(key):
        [m] = result.asset_materializations_for_node(key.to_python_identifier())
        return m.metadata["catalog_key"].value

    ours, intruder = recorded(dump), recorded(concurrent_dump.key)
    assert ours != intruder and ours < intruder  # the intruder is the newest of the day
    assert recorded(off) == ours
    checks = checks_of(result, "offsite_dump")
    assert checks[OFFSITE_COPY_MATCHES].passed
    assert checks_of(result, "logical_dump")[DUMP_RESTORABLE].metadata["set_id"].value in ours
    # Only the run's own set went offsite; the intruder's stayed local.
    assert (workdir / "second" / ours).is_file()
    assert not (workdir / "second" / intruder).exists()
