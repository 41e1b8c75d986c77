"""Nobody reads what they shouldn't: no plaintext table data in any stored object when
encryption is on, the age identity never copied anywhere, and no DSN password or AWS
secret in any log, error, `info` output or Dagster event, on the error paths too."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from pg_backup_assets.core.catalog import find_dump_set
from pg_backup_assets.core.config import load_config
from pg_backup_assets.core.offsite.copy import ship_wal
from pg_backup_assets.core.offsite.store import offsite_repository
from pg_backup_assets.core.postgres.local_cluster import LocalCluster, free_port
from pg_backup_assets.core.storage.codec import generate_identity
from pg_backup_assets.core.storage.repository import Repository
from pg_backup_assets.core.storage.s3 import s3_client
from pg_backup_assets.definitions import build_defs
from tests.conftest import archiving_settings, make_bucket, write_config
from tests.integration.test_cli import pgbackup
from tests.integration.test_wal_archive import sql

pytestmark = pytest.mark.slow
PASSWORD = "hunter2-scram-Pw"
AWS_SECRET = "wJalrXUtnFEMI-K7MDENG-SECRETKEY"
DAY = "2026-11-26"


def stored_bytes(repo_dir: Path, endpoint: str, bucket: str) -> Iterator[tuple[str, bytes]]:
    """Every object in the repository folder and the bucket."""
    for path in repo_dir.rglob("*"):
        if path.is_file():
            yield str(path), path.read_bytes()
    client = s3_client(endpoint, "us-east-1")
    for obj in client.list_objects_v2(Bucket=bucket).get("Contents", []):
        yield obj["Key"], client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()


def test_secrets_and_plaintext_stay_where_they_belong(workdir, s3_endpoint, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", AWS_SECRET)  # moto takes any secret
    monkeypatch.setenv("PGB_PASSWORD", PASSWORD)
    monkeypatch.setenv("PGPASSWORD", PASSWORD)  # this test's own connections to the server
    marker = f"MARKER-{uuid.uuid4().hex}"
    identity, recipient = generate_identity()
    secret_key = identity.splitlines()[1]
    key_file = workdir / "age.key"
    key_file.write_text(identity)
    bucket = make_bucket(s3_endpoint)

    cluster = LocalCluster(workdir / "pg")
    extra = f"offsite:\n  s3: {{bucket: {bucket}, endpoint_url: '{s3_endpoint}'}}\n"
    dsn = f"{cluster.dsn()} password=${{PGB_PASSWORD}}"
    config = write_config(workdir, dsn, ["postgres"], recipient, key_file, extra=extra)
    cluster.init(archiving_settings(config), fast=True).start()
    outputs: list[str] = []
    try:
        sql(cluster, f"ALTER ROLE postgres PASSWORD '{PASSWORD}'")
        (cluster.data / "pg_hba.conf").write_text(
            "local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n"
            "host replication all 127.0.0.1/32 scram-sha-256\n"
        )
        sql(cluster, "SELECT pg_reload_conf()")
        sql(
            cluster,
            f"CREATE TABLE secret AS SELECT '{marker}' || g AS v FROM generate_series(1, 500) g",
        )

        # Everything through Dagster, on an instance whose events we then read.
        defs = build_defs(str(config))
        keys = [
            dg.AssetKey(["main", a])
            for a in ("logical_dump", "base_backup", "offsite_dump", "offsite_base_backup")
        ]
        with dg.instance_for_test() as instance:
            result = dg.materialize(
                [*defs.assets, *defs.asset_checks],
                selection=dg.AssetSelection.assets(*keys),
                partition_key=DAY,
                resources=defs.resources,
                instance=instance,
                raise_on_error=False,
            )
            assert result.success
            outputs += [str(e) for e in instance.all_logs(result.run_id)]
        cluster.switch_wal_and_wait_archived()
        cfg = load_config(config)
        ship_wal(Repository.from_config(cfg), offsite_repository(cfg), "main")

        # The command line, on success and on the error paths.
        for args in (
            ("info",),
            ("info", "--json"),
            ("verify", "--source", "all"),
            ("restore-point", "checked"),
            (
                "restore-dump",
                "--database",
                "postgres",
                "--into",
                f"host=127.0.0.1 port={free_port()} password={PASSWORD}",
            ),
        ):
            proc = pgbackup(*args, config=config)
            outputs += [proc.stdout, proc.stderr]
        down = config.read_text().replace(s3_endpoint, f"http://127.0.0.1:{free_port()}")
        (workdir / "down.yaml").write_text(
            down.replace("region", "max_attempts: 1, region")
            if "region" in down
            else down.replace("}}", ", max_attempts: 1}}")
        )
        proc = pgbackup(
            "wal-fetch",
            "--source",
            "offsite",
            "000000010000000000000002",
            str(workdir / "w"),
            config=workdir / "down.yaml",
        )
        outputs += [proc.stdout, proc.stderr]
        wrong = config.read_text().replace("${PGB_PASSWORD}", "not-the-password")
        (workdir / "wrong.yaml").write_text(wrong)
        proc = pgbackup("restore-point", "denied", config=workdir / "wrong.yaml")
        assert proc.returncode == 1 and "password authentication failed" in proc.stderr
        outputs += [proc.stdout, proc.stderr, cluster.log_tail(500)]
    finally:
        cluster.stop()

    everything = "\n".join(outputs)
    assert "pgbackup" in everything and DAY in everything  # the outputs are really there
    for secret in (PASSWORD, AWS_SECRET, secret_key, "not-the-password"):
        assert secret not in everything, secret

    # At rest: not a byte of the table data, nor a secret, in the clear.
    seen = 0
    for where, data in stored_bytes(workdir / "repo", s3_endpoint, bucket):
        for secret in (marker, PASSWORD, AWS_SECRET, secret_key):
            assert secret.encode() not in data, (secret, where)
        seen += 1
    assert seen > 10
    # ... while the data, decrypted with the identity, does hold the marker.
    repo = Repository.from_config(load_config(config))
    dump = find_dump_set(repo, "main", DAY).database("postgres")
    plain = io.BytesIO()
    repo.read_into(dump.record, plain)
    assert marker.encode() in plain.getvalue()
