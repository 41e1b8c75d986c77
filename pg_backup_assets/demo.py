"""``pgbackup demo``: the embedded end-to-end run on a throwaway local cluster.

It materializes the assets through Dagster with the instance in ``<dir>/dagster_home``,
so ``make ui`` shows the runs, checks and metadata afterwards.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import psycopg

from pg_backup_assets import local_s3
from pg_backup_assets.core.base.restore import RestoreResult, Target, restore
from pg_backup_assets.core.config import load_config
from pg_backup_assets.core.dumps.restore import restore_dump
from pg_backup_assets.core.offsite.store import offsite_repository
from pg_backup_assets.core.postgres.client import available_extensions
from pg_backup_assets.core.postgres.local_cluster import LocalCluster, hand_over_tree
from pg_backup_assets.core.storage.codec import generate_identity
from pg_backup_assets.core.storage.repository import Repository
from pg_backup_assets.core.storage.s3 import s3_client
from pg_backup_assets.core.wal.archive import archiving_settings
from pg_backup_assets.defs.check_names import (
    BASE_BACKUP_VERIFIED,
    DUMP_RESTORABLE,
    OFFSITE_COPY_MATCHES,
    REHEARSAL_PASSED,
    THREE_TWO_ONE,
    WAL_ARCHIVE_CONTIGUOUS,
    WAL_ARCHIVE_FRESH,
)

CLUSTER = "demo"
DATABASE = "shop"
TABLES = ("customers", "orders", "events")
DEMO_BUCKET = "pgbackup-demo"
_INFO_LOGS = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}

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


def _row(label: str, text: str) -> None:
    print(f"{label:<24}{text}")


def _verdict(passed: bool, description: str) -> str:
    return f"{'PASSED' if passed else 'FAILED'}: {description}"


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
    # A new cluster starts its WAL names over: it gets a new repository, too
    # (wal-push rightly refuses to overwrite another cluster's segments).
    repo_dir = state / "repo"
    shutil.rmtree(repo_dir, ignore_errors=True)
    repo_dir.mkdir()
    hand_over_tree(repo_dir)  # the server's archive_command writes WAL into it

    key_file = state / "age.key"
    if not key_file.exists():
        identity, recipient = generate_identity()
        key_file.write_text(identity)
        key_file.chmod(0o600)
        # The restored server's restore_command (wal-fetch) decrypts WAL with it.
        hand_over_tree(key_file)
    recipient = key_file.read_text().splitlines()[0].split(": ", 1)[1]

    config_file = state / "pgbackup.yaml"
    t_start = time.monotonic()
    with contextlib.ExitStack() as stack:
        offsite_yaml = stack.enter_context(_offsite_store(state, keep_running))
        _write_config(config_file, repo_dir, key_file, recipient, cluster, offsite_yaml)
        _say(f"starting a throwaway PostgreSQL cluster in {cluster.base} on port {cluster.port}")
        _say("it archives every WAL segment through `pgbackup wal-push`")
        cluster.init(archiving_settings(config_file), fast=True).start()
        try:
            return _run(state, cluster, config_file, t_start)
        finally:
            if keep_running:
                _say(f"the demo server keeps running: {cluster.dsn()}")
            else:
                cluster.stop()


@contextlib.contextmanager
def _offsite_store(state: Path, keep_running: bool) -> Iterator[str]:
    """A local S3 endpoint (moto's server) when installed, else a second folder.

    Either way it is on this machine, and the three_two_one check says so.
    """
    if not local_s3.available():
        folder = state / "offsite"
        shutil.rmtree(folder, ignore_errors=True)
        _say(f"offsite copies go to a second folder, {folder} (no local S3 endpoint installed)")
        yield f"offsite:\n  path: {folder}\n"
        return
    with local_s3.local_s3_endpoint(keep_running) as endpoint:
        s3_client(endpoint, "us-east-1").create_bucket(Bucket=DEMO_BUCKET)
        _say(f"offsite copies go to a local S3 endpoint, {endpoint} (moto), bucket {DEMO_BUCKET}")
        yield (
            f"offsite:\n  s3: {{bucket: {DEMO_BUCKET}, prefix: demo/, "
            f"endpoint_url: '{endpoint}', region: us-east-1}}\n"
        )
        if keep_running:
            _say(f"the local S3 endpoint keeps running: {endpoint}")


def _write_config(
    path: Path,
    repo_dir: Path,
    key_file: Path,
    recipient: str,
    cluster: LocalCluster,
    offsite_yaml: str,
) -> None:
    path.write_text(
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
sensors:
  wal_archive_interval_seconds: 30
  offsite_wal_interval_seconds: 30
{offsite_yaml}"""
    )


@dataclass
class _Story:
    """What each step of the demo found, for the summary."""

    partition: str = ""
    run_id: str = ""
    dump_md: dict = field(default_factory=dict)
    base_md: dict = field(default_factory=dict)
    offsite_md: dict = field(default_factory=dict)
    checks: dict = field(default_factory=dict)
    restored_db: str = ""
    restore_dump_s: float = 0.0
    before: dict = field(default_factory=dict)
    after: dict = field(default_factory=dict)
    orders_before: int = 0
    orders_after: int = 0
    deleted: int = 0
    moment: dt.datetime | None = None
    wal: dict = field(default_factory=dict)
    wal_md: dict = field(default_factory=dict)
    orders_recovered: int = 0
    pitr: RestoreResult | None = None
    rehearsal: dict = field(default_factory=dict)
    rehearsal_checks: dict = field(default_factory=dict)


def _run(state: Path, cluster: LocalCluster, config_file: Path, t0: float) -> int:
    from pg_backup_assets.definitions import build_defs

    _create_sample_data(cluster)
    config = load_config(config_file)
    defs = build_defs(str(config_file))
    instance = dg.DagsterInstance.get()
    story = _Story()
    if not _back_up_through_dagster(defs, instance, story, config):
        _say("the Dagster run failed; see the log above")
        return 1
    _restore_dump_and_compare(cluster, Repository.from_config(config), story)
    _business_goes_on_then_oops(cluster, story)
    story.wal = _observe_wal_archive(cluster, defs, instance)
    _ship_wal_offsite(defs, instance, story)
    _pitr_from_offsite(config, config_file, state, story)
    _rehearse_through_dagster(defs, instance, story)
    _print_summary(cluster, config, config_file, story, t0)
    # three_two_one is reported, not required: the demo's offsite store is on this machine.
    return 0 if _all_good(story) else 1


def _create_sample_data(cluster: LocalCluster) -> None:
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {DATABASE}")
    with psycopg.connect(cluster.dsn(DATABASE), autocommit=True) as conn:
        conn.execute(_SAMPLE)
        if "pgcrypto" in available_extensions(cluster.dsn(DATABASE)):
            conn.execute("CREATE EXTENSION pgcrypto")
    _say(f"created database {DATABASE} with sample data ({', '.join(TABLES)})")


def _back_up_through_dagster(defs: dg.Definitions, instance, story: _Story, config) -> bool:  # noqa: ANN001
    """Back up through Dagster, against the persistent instance the UI reads: today's
    partition, as the daily schedule would take it."""
    from pg_backup_assets.defs.partitions import today

    story.partition = today(config)
    keys = [
        dg.AssetKey([CLUSTER, name])
        for name in ("logical_dump", "base_backup", "offsite_dump", "offsite_base_backup")
    ]
    _say(f"materializing {', '.join(k.to_user_string() for k in keys)} for {story.partition}")
    result = dg.materialize(
        [*defs.assets, *defs.asset_checks],
        selection=dg.AssetSelection.assets(*keys) | dg.AssetSelection.checks_for_assets(*keys),
        partition_key=story.partition,
        resources=defs.resources,
        instance=instance,
        raise_on_error=False,
        run_config=_INFO_LOGS,
    )
    if not result.success:
        return False
    story.run_id = result.run_id
    story.dump_md = _metadata(result, f"{CLUSTER}__logical_dump")
    story.base_md = _metadata(result, f"{CLUSTER}__base_backup")
    story.offsite_md = _metadata(result, f"{CLUSTER}__offsite_base_backup")
    story.checks = {
        (e.asset_key.path[-1], e.check_name): e for e in result.get_asset_check_evaluations()
    }
    return True


def _restore_dump_and_compare(cluster: LocalCluster, repo: Repository, story: _Story) -> None:
    """The logical dump restores into a fresh database with identical contents."""
    story.restored_db = f"{DATABASE}_restored"
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {story.restored_db}")
    t = time.monotonic()
    restore_dump(
        repo, CLUSTER, DATABASE, cluster.dsn(story.restored_db), date=story.partition, log=_say
    )
    story.restore_dump_s = time.monotonic() - t
    story.before = _table_fingerprint(cluster.dsn(DATABASE))
    story.after = _table_fingerprint(cluster.dsn(story.restored_db))


def _business_goes_on_then_oops(cluster: LocalCluster, story: _Story) -> None:
    """Business goes on after the backup; then someone deletes the wrong rows."""
    with psycopg.connect(cluster.dsn(DATABASE), autocommit=True) as conn:
        conn.execute(
            "INSERT INTO orders SELECT g, 1 + g % 5000, 9.99, now() "
            "FROM generate_series(50001, 51000) g"
        )
        story.orders_before = conn.execute("SELECT count(*) FROM orders").fetchone()[0]
        time.sleep(1)
        story.moment = conn.execute("SELECT clock_timestamp()").fetchone()[0]
        time.sleep(1)
        story.deleted = conn.execute("DELETE FROM orders WHERE amount > 20").rowcount
        story.orders_after = conn.execute("SELECT count(*) FROM orders").fetchone()[0]
    _say(
        f"oops: DELETE FROM orders WHERE amount > 20 removed {story.deleted:,} rows at "
        f"{story.moment:%H:%M:%S}"
    )


def _ship_wal_offsite(defs: dg.Definitions, instance, story: _Story) -> None:  # noqa: ANN001
    shipped = dg.materialize(
        [*defs.assets, *defs.asset_checks],
        selection=dg.AssetSelection.assets(dg.AssetKey([CLUSTER, "offsite_wal"])),
        resources=defs.resources,
        instance=instance,
        raise_on_error=False,
        run_config=_INFO_LOGS,
    )
    story.wal_md = _metadata(shipped, f"{CLUSTER}__offsite_wal") if shipped.success else {}


def _pitr_from_offsite(config, config_file: Path, state: Path, story: _Story) -> None:  # noqa: ANN001
    """Point-in-time recovery to the moment before the DELETE, from the offsite copy."""
    target_time = story.moment.isoformat()
    _say(
        f"pgbackup restore --source offsite --to {state / 'pitr'} "
        f"--target-time '{target_time}' --start"
    )
    story.pitr = restore(
        offsite_repository(config),
        config.cluster(CLUSTER),
        config_file,
        state / "pitr",
        Target.parse("time", target_time),
        start=True,
        force=True,
        log=_say,
        source="offsite",
        s3_env=bool(config.offsite.s3),
    )
    try:
        with psycopg.connect(story.pitr.server.dsn(DATABASE)) as conn:
            story.orders_recovered = conn.execute("SELECT count(*) FROM orders").fetchone()[0]
    finally:
        story.pitr.server.stop()


def _rehearse_through_dagster(defs: dg.Definitions, instance, story: _Story) -> None:  # noqa: ANN001
    """This week's restore rehearsal, as the weekly schedule runs it: from the offsite copy,
    to a fresh restore point, every table compared with the source."""
    from pg_backup_assets.core.rehearsal.rehearse import week_of

    key = dg.AssetKey([CLUSTER, "restore_rehearsal"])
    week = week_of(dt.date.fromisoformat(story.partition))
    _say(f"materializing {key.to_user_string()} for the week of {week}")
    result = dg.materialize(
        [*defs.assets, *defs.asset_checks],
        selection=dg.AssetSelection.assets(key),
        partition_key=week,
        resources=defs.resources,
        instance=instance,
        raise_on_error=False,
        run_config=_INFO_LOGS,
    )
    mats = result.asset_materializations_for_node(f"{CLUSTER}__restore_rehearsal")
    story.rehearsal = {k: v.value for k, v in mats[0].metadata.items()} if mats else {}
    story.rehearsal_checks = {
        e.check_name: (e.passed, e.description) for e in result.get_asset_check_evaluations()
    }


def _print_summary(
    cluster: LocalCluster,
    config,
    config_file: Path,
    story: _Story,
    t0: float,  # noqa: ANN001
) -> None:
    s, pitr = story, story.pitr
    dump_md, base_md = s.dump_md, s.base_md
    print("\npg-backup-assets demo summary\n-----------------------------")
    _row("cluster", f"{CLUSTER} (PostgreSQL {dump_md['server_version']}, port {cluster.port})")
    _row("partition", f"{s.partition}   Dagster run {s.run_id}")
    _row(
        "logical dump",
        f"{dump_md['raw_bytes']:,} bytes -> {dump_md['size_bytes']:,} stored (zstd + age) "
        f"in {dump_md['duration_s']:.2f}s",
    )
    restorable = s.checks["logical_dump", DUMP_RESTORABLE]
    _row(DUMP_RESTORABLE, _verdict(restorable.passed, restorable.description))
    _row("restore-dump", f"into {s.restored_db} in {s.restore_dump_s:.2f}s")
    for table in TABLES:
        rows, _ = s.after[table]
        same = s.before[table] == s.after[table]
        _row(f"  {table}", f"{rows:>8,} rows  {'identical' if same else 'DIFFERS'}")
    _row(
        "base backup",
        f"{base_md['label']}: {base_md['size_bytes']:,} bytes stored in "
        f"{base_md['duration_s']:.2f}s, LSN {base_md['start_lsn']}..{base_md['stop_lsn']}",
    )
    verified = s.checks["base_backup", BASE_BACKUP_VERIFIED]
    _row(BASE_BACKUP_VERIFIED, _verdict(verified.passed, verified.description))
    _row(
        "WAL archive",
        f"{s.wal['segments']} segments archived by wal-push (zstd + age); "
        f"{s.wal['first_segment']}..{s.wal['last_segment']} needed since the base backup",
    )
    for name in (WAL_ARCHIVE_CONTIGUOUS, WAL_ARCHIVE_FRESH):
        _row(name, _verdict(*s.wal[name]))
    matches = s.checks["offsite_base_backup", OFFSITE_COPY_MATCHES]
    rule = s.checks["offsite_base_backup", THREE_TWO_ONE]
    _row(
        "offsite",
        f"base backup ({s.offsite_md['objects']} objects) copied to "
        f"{s.offsite_md['offsite_store']} at {s.offsite_md['throughput_mib_s']} MiB/s; "
        f"WAL shipped: {s.wal_md.get('objects', 'FAILED')} objects",
    )
    _row(OFFSITE_COPY_MATCHES, _verdict(matches.passed, matches.description))
    _row(THREE_TWO_ONE, _verdict(rule.passed, rule.description))
    _row(
        "the oops",
        f"DELETE removed {s.deleted:,} of {s.orders_before:,} orders ({s.orders_after:,} left)",
    )
    all_back = "all of them" if s.orders_recovered == s.orders_before else "NOT all of them"
    _row(
        "PITR",
        f"from offsite, to {s.moment:%Y-%m-%d %H:%M:%S.%f %Z}: {s.orders_recovered:,} orders "
        f"are back ({all_back})",
    )
    rto_s = pitr.rto_s
    _row(
        "restore time (RTO)",
        f"{rto_s:.1f}s to a usable server: fetch + extract {pitr.fetch_extract_s:.1f}s, "
        f"replay {pitr.replay_s:.1f}s, the rest syncs and settings",
    )
    r = s.rehearsal
    if r:

        def took(key: str, digits: int = 1) -> str:
            # A rehearsal that failed early measured less; its metadata leaves the rest out.
            return f"{r[key]:.{digits}f}s" if key in r else "not measured"

        _row(
            "restore rehearsal",
            f"from the {r['source']} copy to {r.get('restore_point', '?')}: RTO "
            f"{took('rto_s')} (fetch {took('fetch_s')}, replay {took('replay_s')}), "
            f"verify {took('verify_s')}, dump restore {took('dump_restore_s')}, "
            f"RPO {took('rpo_s', 0)}",
        )
        for row in r["verdict"].records:
            d = row.data
            if d.get("table"):
                rows = f"{d['copy_rows']:>8,}" if d.get("copy_rows") is not None else " missing"
                _row(
                    f"  {d['restore'][:8]}",
                    f"{d['database']}.{d['table']:<22}{rows} rows  "
                    f"{'identical' if d['ok'] else 'DIFFERS'} ({d['compared']})",
                )
            else:
                _row(f"  {d['restore']}", f"{'ok' if d['ok'] else 'FAILED'}: {d['compared']}")
    for name, (passed, description) in s.rehearsal_checks.items():
        _row(name, _verdict(passed, description))
    _row("total", f"{time.monotonic() - t0:.1f}s")
    print()
    _row("config", str(config_file))
    _row("repository", str(config.repository))
    _row("see it in the UI", "make ui   (then open http://127.0.0.1:3000)")
    _row("try the CLI", f"PGBACKUP_CONFIG={config_file} .venv/bin/pgbackup info")


def _all_good(s: _Story) -> bool:
    return (
        s.before == s.after
        and all(e.passed for (_, name), e in s.checks.items() if name != THREE_TWO_ONE)
        and bool(s.wal_md)
        and s.wal[WAL_ARCHIVE_CONTIGUOUS][0]
        and s.wal[WAL_ARCHIVE_FRESH][0]
        and s.orders_recovered == s.orders_before
        and s.rehearsal_checks.get(REHEARSAL_PASSED, (False,))[0]
    )


def _metadata(result, node: str) -> dict:  # noqa: ANN001
    mat = result.asset_materializations_for_node(node)[0]
    return {k: v.value for k, v in mat.metadata.items()}


def _observe_wal_archive(cluster: LocalCluster, defs, instance) -> dict:  # noqa: ANN001
    """Close the current WAL segment, wait for wal-push, then evaluate one tick of the WAL
    sensor as the daemon does (evaluate_tick) and record its events in the instance."""
    from pg_backup_assets.defs.wal.sensors import WAL_ARCHIVE_SENSOR

    cluster.switch_wal_and_wait_archived()
    sensor = defs.resolve_sensor_def(WAL_ARCHIVE_SENSOR)
    with dg.build_sensor_context(
        instance=instance, resources=defs.resources, repository_def=defs.get_repository_def()
    ) as context:
        result = sensor.evaluate_tick(context)
    out: dict = {}
    for event in result.asset_events:
        instance.report_runless_asset_event(event)
        if isinstance(event, dg.AssetObservation):
            out.update({k: v.value for k, v in event.metadata.items()})
        else:
            out[event.check_name] = (event.passed, event.description)
    return out
