"""``pgbackup demo``: the embedded end-to-end run on a throwaway local cluster.

It materializes the assets through Dagster with the instance in ``<dir>/dagster_home``,
so ``make ui`` shows the runs, checks and metadata afterwards.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import psycopg

from pg_backup_assets.core import dumps
from pg_backup_assets.core.codec import generate_identity
from pg_backup_assets.core.config import load_config
from pg_backup_assets.core.pg import available_extensions
from pg_backup_assets.core.pgserver import LocalCluster, hand_over
from pg_backup_assets.core.repository import Repository

CLUSTER = "demo"
DATABASE = "shop"
TABLES = ("customers", "orders", "events")

_SAMPLE = """
CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL, email text UNIQUE);
INSERT INTO customers SELECT g, 'customer ' || g, 'c' || g || '@example.com'
  FROM generate_series(1, 5000) g;
CREATE TABLE orders (id bigint PRIMARY KEY, customer_id int REFERENCES customers,
                     amount numeric(10,2), placed_at timestamptz);
INSERT INTO orders SELECT g, 1 + g % 5000, (g % 997) / 10.0,
       timestamptz '2026-01-01' + g * interval '1 minute'
  FROM generate_series(1, 50000) g;
CREATE INDEX ON orders (customer_id);
-- Incompressible payloads, so that sizes and throughput are not flattered.
CREATE TABLE events (id bigint PRIMARY KEY, payload bytea);
INSERT INTO events SELECT g, decode(md5(g::text) || md5((g * 7)::text), 'hex')
  FROM generate_series(1, 20000) g;
"""


def _say(msg: str) -> None:
    print(f"[demo] {msg}", flush=True)


def _table_fingerprint(dsn: str) -> dict[str, tuple[int, str]]:
    """Row count and an md5 of every row, per table: equal fingerprints, equal contents."""
    out = {}
    with psycopg.connect(dsn) as conn:
        for t in TABLES:
            out[t] = conn.execute(
                f"SELECT count(*), md5(coalesce(string_agg(t::text, ',' ORDER BY t.id), '')) "
                f"FROM {t} t"
            ).fetchone()
    return out


def run_demo(state_dir: str, keep_running: bool = False) -> int:
    state = Path(state_dir).resolve()
    state.mkdir(parents=True, exist_ok=True)
    state.chmod(0o755)
    home = state / "dagster_home"
    home.mkdir(exist_ok=True)
    instance_yaml = Path(__file__).resolve().parents[1] / "dagster.yaml"
    if instance_yaml.exists() and not (home / "dagster.yaml").exists():
        shutil.copy(instance_yaml, home / "dagster.yaml")
    os.environ["DAGSTER_HOME"] = str(home)

    cluster = LocalCluster(state / "cluster")
    if cluster.data.exists():
        _say(f"removing the previous demo cluster in {cluster.base}")
        cluster.destroy()
        cluster = LocalCluster(state / "cluster")
    repo_dir = state / "repo"
    repo_dir.mkdir(exist_ok=True)
    hand_over(repo_dir)

    key_file = state / "age.key"
    if not key_file.exists():
        identity, recipient = generate_identity()
        key_file.write_text(identity)
        key_file.chmod(0o600)
    recipient = key_file.read_text().splitlines()[0].split(": ", 1)[1]

    t_start = time.monotonic()
    _say(f"starting a throwaway PostgreSQL cluster in {cluster.base} on port {cluster.port}")
    cluster.init(fast=True).start()
    try:
        return _run(state, cluster, repo_dir, key_file, recipient, t_start)
    finally:
        if keep_running:
            _say(f"the demo server keeps running: {cluster.dsn()}")
        else:
            cluster.stop()


def _run(
    state: Path, cluster: LocalCluster, repo_dir: Path, key_file: Path, recipient: str, t0: float
) -> int:
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {DATABASE}")
    with psycopg.connect(cluster.dsn(DATABASE), autocommit=True) as conn:
        conn.execute(_SAMPLE)
        if "pgcrypto" in available_extensions(cluster.dsn(DATABASE)):
            conn.execute("CREATE EXTENSION pgcrypto")
    _say(f"created database {DATABASE} with sample data ({', '.join(TABLES)})")

    config_file = state / "pgbackup.yaml"
    config_file.write_text(
        f"""# Written by `pgbackup demo`.
repository: {repo_dir}
encryption:
  recipients: [{recipient}]
  identity_file: {key_file}
clusters:
  {CLUSTER}:
    dsn: "{cluster.dsn()}"
    databases: [{DATABASE}]
    rpo_seconds: 300
    rto_seconds: 1800
"""
    )
    config = load_config(config_file)
    repo = Repository.from_config(config)

    # Materialize through Dagster, against the persistent instance the UI reads.
    import dagster as dg

    from pg_backup_assets.definitions import build_defs
    from pg_backup_assets.defs.check_names import DUMP_RESTORABLE
    from pg_backup_assets.defs.partitions import daily

    defs = build_defs(str(config_file))
    partition = daily.get_last_partition_key()
    _say(f"materializing {CLUSTER}/logical_dump for partition {partition} through Dagster")
    instance = dg.DagsterInstance.get()
    result = dg.materialize(
        [*defs.assets, *defs.asset_checks],
        partition_key=partition,
        resources=defs.resources,
        instance=instance,
        raise_on_error=False,
        run_config={"loggers": {"console": {"config": {"log_level": "INFO"}}}},
    )
    if not result.success:
        _say("the Dagster run failed; see the log above")
        return 1
    mat = result.asset_materializations_for_node(f"{CLUSTER}__logical_dump")[0]
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    restorable = checks[DUMP_RESTORABLE]

    # Restore into a fresh database and prove it holds the same rows.
    restored_db = f"{DATABASE}_restored"
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {restored_db}")
        conn.execute(f"CREATE DATABASE {restored_db}")
    t_restore = time.monotonic()
    dumps.restore_dump(repo, CLUSTER, DATABASE, cluster.dsn(restored_db), date=partition, log=_say)
    restore_s = time.monotonic() - t_restore
    before = _table_fingerprint(cluster.dsn(DATABASE))
    after = _table_fingerprint(cluster.dsn(restored_db))
    same = before == after

    md = {k: v.value for k, v in mat.metadata.items()}
    print()
    print("pg-backup-assets demo summary")
    print("-----------------------------")
    print(f"cluster           {CLUSTER} (PostgreSQL {md['server_version']}, port {cluster.port})")
    print(f"partition         {partition}   Dagster run {result.run_id}")
    print(
        f"logical dump      {md['raw_bytes']:,} bytes -> {md['size_bytes']:,} stored "
        f"(zstd + age) in {md['duration_s']:.2f}s, {md['throughput_mib_s']} MiB/s"
    )
    print(
        f"dump_restorable   {'PASSED' if restorable.passed else 'FAILED'}: {restorable.description}"
    )
    print(f"restore-dump      into {restored_db} in {restore_s:.2f}s")
    for t in TABLES:
        rows, _ = after[t]
        mark = "identical" if before[t] == after[t] else f"DIFFERS (source {before[t][0]} rows)"
        print(f"  {t:<15} {rows:>8,} rows  {mark}")
    print(f"total             {time.monotonic() - t0:.1f}s")
    print()
    print(f"config            {state / 'pgbackup.yaml'}")
    print(f"repository        {repo_dir}")
    print("see it in the UI  make ui   (then open http://127.0.0.1:3000)")
    print(f"try the CLI       PGBACKUP_CONFIG={state / 'pgbackup.yaml'} .venv/bin/pgbackup info")
    return 0 if (same and restorable.passed) else 1
