"""Restore rehearsals on real servers: from the offsite copy, to a restore point made on a
database being written to, verified against what the source held at that point; and the
Launchpad's point-in-time restore job."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import time

import dagster as dg
import psycopg
import pytest

from pg_backup_assets.core.base.backup import take_base_backup
from pg_backup_assets.core.base.restore import Target, restore
from pg_backup_assets.core.catalog import find_base_backup
from pg_backup_assets.core.config import load_config
from pg_backup_assets.core.dumps.dump import take_dump_set
from pg_backup_assets.core.offsite.copy import copy_set, ship_wal
from pg_backup_assets.core.offsite.store import offsite_repository
from pg_backup_assets.core.postgres.local_cluster import free_port, hand_over
from pg_backup_assets.core.rehearsal.checks import compare_tables
from pg_backup_assets.core.rehearsal.reference import capture_reference
from pg_backup_assets.core.rehearsal.rehearse import rehearse, week_of
from pg_backup_assets.core.storage.repository import Repository
from pg_backup_assets.definitions import build_defs
from pg_backup_assets.defs.check_names import (
    REHEARSAL_PASSED,
    RPO_WITHIN_TARGET,
    RTO_WITHIN_TARGET,
)
from tests.conftest import encryption_yaml, make_bucket
from tests.integration.test_cli import BIN, pgbackup
from tests.integration.test_wal_archive import sql

TODAY = dt.datetime.now(dt.UTC).date()
WEEK = week_of(TODAY)


def quiet(_: str) -> None:
    pass


def load_orders(cluster) -> None:  # noqa: ANN001
    """The table every test here restores: orders, 20,000 rows."""
    sql(cluster, "CREATE TABLE orders (id bigint PRIMARY KEY, amount numeric, note text)")
    sql(cluster, "INSERT INTO orders SELECT g, g % 97, md5(g::text) FROM generate_series(1, 2e4) g")


def backed_up(cluster, config, workdir, extra: str = ""):  # noqa: ANN001, ANN201
    """A day of backups copied to an offsite folder (for the engine, a second filesystem)."""
    offsite_dir = workdir / "offsite"
    offsite_dir.mkdir()
    hand_over(offsite_dir)  # the restored server (the postgres user) reads WAL there
    config.write_text(config.read_text() + f"offsite: {{path: {offsite_dir}}}\n" + extra)
    load_orders(cluster)
    sql(cluster, "CREATE INDEX ON orders (amount)")
    cfg = load_config(config)
    repo, offsite = Repository.from_config(cfg), offsite_repository(cfg)
    day = TODAY.isoformat()
    backup = take_base_backup(repo, cfg.cluster("main"), day, quiet)
    dumps = take_dump_set(repo, cfg.cluster("main"), day, quiet)
    copy_set(repo, offsite, backup.objects.values(), backup.catalog_key, 0)
    copy_set(repo, offsite, [o.record for o in dumps.objects], dumps.catalog_key, 0)
    return cfg, repo, offsite


def scratch_is_empty(workdir) -> bool:  # noqa: ANN001
    """No scratch data left, and no server process of it (a stopped postmaster's children
    may take a moment to exit after it)."""
    deadline = time.monotonic() + 10
    while True:
        running = subprocess.run(
            ["pgrep", "-f", f"{workdir}/repo/.staging/rehearsal"], capture_output=True
        ).stdout
        empty = not list((workdir / "repo" / ".staging").glob("rehearsal-*/*"))
        if (empty and not running) or time.monotonic() > deadline:
            return empty and not running
        time.sleep(0.2)


def test_a_rehearsal_restores_verifies_and_cleans_up(archiving, workdir):
    cluster, config = archiving
    cfg, repo, offsite = backed_up(cluster, config, workdir)
    report = rehearse(cfg, "main", WEEK, quiet)
    assert report.passed, report.problems
    assert report.source == "offsite" and report.pinned
    tables = {t["table"]: t for t in report.tables}
    assert tables["public.orders"]["copy_rows"] == 20000
    assert tables["public.orders"]["compared"] == "rows+digest"
    assert report.rto_s > 0 and set(report.phases) >= {"fetch_s", "replay_s", "verify_s"}
    assert {c["check"] for c in report.checks} >= {"pg_amcheck", "pg_checksums"}
    dump_tables = {t["table"]: t for t in report.dump["tables"]}
    assert dump_tables["public.orders"]["copy_rows"] == 20000 and dump_tables["public.orders"]["ok"]
    assert scratch_is_empty(workdir)

    # The runbook it proved, here and beside the offsite copy; `pgbackup runbook` prints it.
    for store in (repo, offsite):
        with store.storage.open("main/runbook.md") as f:
            text = f.read().decode()
        assert report.backup in text and "fetch-wal.sh" in text
    proc = pgbackup("runbook", "--source", "offsite", config=config)
    assert proc.returncode == 0 and report.point["name"] in proc.stdout


@pytest.mark.slow
def test_no_false_alarm_while_the_source_is_written_to(archiving, workdir):
    cluster, config = archiving
    cfg, _, _ = backed_up(cluster, config, workdir)
    bench = str(cluster.bindir / "pgbench")
    subprocess.run([bench, "-i", "-s", "2", "-q", cluster.dsn()], check=True, capture_output=True)
    # A second backup and dump with the pgbench tables in them.
    backed = take_base_backup(
        Repository.from_config(cfg), cfg.cluster("main"), TODAY.isoformat(), quiet
    )
    copy_set(
        Repository.from_config(cfg),
        offsite_repository(cfg),
        backed.objects.values(),
        backed.catalog_key,
        0,
    )
    load = subprocess.Popen(
        [bench, "-c", "2", "-T", "40", "-n", cluster.dsn()],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(2)
        report = rehearse(cfg, "main", WEEK, quiet)
    finally:
        load.terminate()
        load.wait()
    physical = [t for t in report.tables if t["table"].startswith("public.pgbench")]
    assert len(physical) == 4 and all(t["ok"] for t in physical), physical
    history = next(t for t in physical if t["table"] == "public.pgbench_history")
    assert history["source_rows"] > 0 and history["compared"] == "rows+digest"
    assert report.pinned  # held still for milliseconds between pgbench's transactions
    assert report.passed or all("dump" in p for p in report.problems), report.problems


def test_a_copy_that_lost_rows_is_named(archiving, workdir):
    cluster, config = archiving
    cfg, repo, _ = backed_up(cluster, config, workdir)
    reference = capture_reference(repo, cfg.cluster("main"), "before-loss", True, 200, 5, quiet)
    cluster.switch_wal_and_wait_archived()
    result = restore(
        repo,
        cfg.cluster("main"),
        config,
        workdir / "copy",
        Target("name", "before-loss"),
        start=True,
    )
    try:
        with psycopg.connect(result.dsn(), autocommit=True) as conn:
            conn.execute("DELETE FROM orders WHERE id <= 10")
        rows = compare_tables(result.dsn, reference.tables, reference.pinned)
    finally:
        result.server.stop()
    [lost] = [r for r in rows if not r.ok]
    assert lost.table == "public.orders"
    assert lost.problem() == (
        "table postgres.public.orders differs: 19,990 rows in the copy, 20,000 at the restore point"
    )


def test_a_dump_that_restores_short_fails_naming_the_table(archiving, workdir):
    cluster, config = archiving
    cfg, _, offsite = backed_up(cluster, config, workdir)
    # The offsite dump claims rows its archive does not hold: the restore comes up short.
    [catalog] = list((workdir / "offsite" / "main" / "dumps").rglob("catalog.json"))
    doc = json.loads(catalog.read_text())
    postgres = next(o for o in doc["objects"] if o["database"] == "postgres")
    postgres["tables"]["public.orders"] += 5
    catalog.write_text(json.dumps(doc))
    report = rehearse(cfg, "main", WEEK, quiet)
    assert not report.passed
    assert (
        "dump: table postgres.public.orders differs: 20,000 rows in the copy, 20,005 at the "
        "restore point" in report.problems
    )
    assert scratch_is_empty(workdir)


def test_a_tampered_offsite_object_fails_naming_it(archiving, workdir):
    cluster, config = archiving
    cfg, repo, _ = backed_up(cluster, config, workdir)
    backup = find_base_backup(repo, "main", TODAY.isoformat())
    key = backup.objects[backup.parts[0].name].key  # one part of several
    path = workdir / "offsite" / key
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0x5A
    path.write_bytes(bytes(data))
    report = rehearse(cfg, "main", WEEK, quiet)
    assert not report.passed
    assert any(key in p and "damaged" in p for p in report.problems), report.problems
    assert scratch_is_empty(workdir)


def test_a_missing_identity_fails_naming_the_key(archiving, workdir, age_key):
    cluster, config = archiving
    _, recipient = age_key
    extra = encryption_yaml(recipient, workdir / "gone.key")  # a key file that is not there
    cfg, _, _ = backed_up(cluster, config, workdir, extra)
    report = rehearse(cfg, "main", WEEK, quiet)
    assert not report.passed
    assert any("encryption.identity_file" in p and "gone.key" in p for p in report.problems)
    assert scratch_is_empty(workdir)


@pytest.mark.slow
def test_a_cancelled_or_killed_rehearsal_leaves_nothing_running(archiving, workdir):
    cluster, config = archiving
    backed_up(cluster, config, workdir)
    pitr_pid = workdir / "repo" / ".staging" / "rehearsal-main" / "pitr" / "postmaster.pid"

    def started_then(sig: int) -> None:
        proc = subprocess.Popen(
            [str(BIN / "pgbackup"), "--config", str(config), "rehearse"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 120
        while not pitr_pid.exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        os.kill(proc.pid, sig)
        proc.wait(timeout=120)

    started_then(signal.SIGINT)  # a cancelled run: Dagster interrupts the step
    assert scratch_is_empty(workdir)
    started_then(signal.SIGKILL)  # a killed run: the next rehearsal clears what is left
    assert pitr_pid.exists()
    proc = pgbackup("rehearse", config=config)
    assert proc.returncode == 0, proc.stderr
    assert "stopping the server a killed rehearsal left" in proc.stderr
    assert scratch_is_empty(workdir)


def test_the_weekly_asset_reports_checks_and_a_verdict_table(archiving, workdir):
    cluster, config = archiving
    backed_up(cluster, config, workdir)
    defs = build_defs(str(config))
    key = dg.AssetKey(["main", "restore_rehearsal"])
    result = dg.materialize(
        [*defs.assets, *defs.asset_checks],
        selection=dg.AssetSelection.assets(key),
        partition_key=WEEK,
        resources=defs.resources,
        raise_on_error=False,
    )
    assert result.success
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert checks[REHEARSAL_PASSED].passed, checks[REHEARSAL_PASSED].description
    assert checks[RTO_WITHIN_TARGET].passed and RPO_WITHIN_TARGET in checks
    [mat] = result.asset_materializations_for_node("main__restore_rehearsal")
    md = mat.metadata
    assert md["mismatches"].value == 0 and md["tables_checked"].value >= 2
    assert md["rto_s"].value > 0 and md["restored_bytes"].value > 0
    table = md["verdict"].value
    assert any(r.data.get("table") == "public.orders" for r in table.records)
    assert "fetch-wal.sh" in md["runbook"].value


def test_the_launchpad_job_restores_through_run_config(archiving, workdir):
    cluster, config = archiving
    backed_up(cluster, config, workdir)
    sql(cluster, "INSERT INTO orders VALUES (999999, 1, 'after the backup')")
    cluster.switch_wal_and_wait_archived()
    from pg_backup_assets.core.offsite.copy import ship_wal

    cfg = load_config(config)
    ship_wal(Repository.from_config(cfg), offsite_repository(cfg), "main")
    defs = build_defs(str(config))
    job = defs.resolve_job_def("restore_to_point_in_time")
    destination = workdir / "incident"
    result = job.execute_in_process(
        run_config={
            "ops": {"restore": {"config": {"cluster": "main", "destination": str(destination)}}}
        },
        resources=defs.resources,
        raise_on_error=False,
    )
    assert result.success
    out = result.output_for_node("restore")
    assert out == str(destination)
    mats = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
    assert mats
    # It is running, recovered to the end of the archive, with the row written after.
    dsn = f"host=127.0.0.1 user=postgres dbname=postgres port={_port(destination)}"
    try:
        with psycopg.connect(dsn) as conn:
            assert conn.execute("SELECT note FROM orders WHERE id = 999999").fetchone() == (
                "after the backup",
            )
    finally:
        subprocess.run(
            [
                "runuser",
                "-u",
                "postgres",
                "--",
                str(cluster.bindir / "pg_ctl"),
                "-D",
                str(destination),
                "-m",
                "fast",
                "stop",
            ],
            check=False,
            capture_output=True,
        )


def _port(data_dir) -> int:  # noqa: ANN001
    return int((data_dir / "postmaster.pid").read_text().splitlines()[3])


def stock_commands(runbook: str, backup, cluster, workdir, tools=None):  # noqa: ANN001, ANN201
    """The runbook's stock-tools commands as an operator would fill them in for this
    backup, restoring into ``WORKDIR/bare`` (its server on a free port), and its
    fetch-wal.sh written beside; ``tools``: words to replace by a full path. Returns the
    commands, the folder and the port."""
    blocks = runbook.split("```sh\n")
    stock = blocks[2].split("```")[0]  # the stock-tools commands
    fetch = blocks[3].split("```")[0]  # fetch-wal.sh
    for word, path in (tools or {}).items():
        stock, fetch = stock.replace(word, path), fetch.replace(word, path)
    to, script = workdir / "bare", workdir / "fetch-wal.sh"
    script.write_text(fetch)
    script.chmod(0o755)
    port = free_port()
    commands = (
        stock.replace("/srv/pg/main", str(to))
        .replace("base/DAY/LABEL", f"base/{backup.date}/{backup.label}")
        .replace("/usr/local/bin/fetch-wal.sh", str(script))
        .replace("install -m 755 fetch-wal.sh", "true")
        .replace("archive_mode = 'off'", f"archive_mode = 'off'\nport = {port}")
    )
    return commands, to, port


def restored_rows(cluster, to, port: int, timeout: float) -> int:  # noqa: ANN001
    """Once the server the runbook started in ``to`` has left recovery: its orders rows;
    the server is stopped afterwards."""
    dsn = f"host=127.0.0.1 port={port} user=postgres dbname=postgres"
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                with psycopg.connect(dsn) as conn:
                    if not conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
                        return conn.execute("SELECT count(*) FROM orders").fetchone()[0]
            except psycopg.OperationalError:
                pass
            log = to / "startup.log"
            assert time.monotonic() < deadline, log.read_text()[-3000:] if log.exists() else ""
            time.sleep(0.3)
    finally:
        stop = [str(cluster.bindir / "pg_ctl"), "-D", str(to), "-m", "fast", "stop"]
        subprocess.run(["runuser", "-u", "postgres", "--", *stop], check=False, capture_output=True)


def test_the_runbooks_s3_commands_restore_the_cluster(archiving, workdir, age_key, s3_endpoint):
    """The runbook's stock-tools commands for an S3 offsite store (`aws s3`, age, zstd, tar,
    and fetch-wal.sh as restore_command) restore the cluster from the bucket alone."""
    cluster, config = archiving
    key_file, recipient = age_key
    bucket = make_bucket(s3_endpoint)
    config.write_text(
        config.read_text()
        + f"offsite: {{s3: {{bucket: {bucket}, prefix: pgb/, endpoint_url: '{s3_endpoint}', "
        "region: us-east-1}}\n" + encryption_yaml(recipient, key_file)
    )
    load_orders(cluster)
    cfg = load_config(config)
    repo, offsite = Repository.from_config(cfg), offsite_repository(cfg)
    backup = take_base_backup(repo, cfg.cluster("main"), TODAY.isoformat(), quiet)
    copy_set(repo, offsite, backup.objects.values(), backup.catalog_key, 0)
    sql(cluster, "INSERT INTO orders SELECT g, 1, 'after' FROM generate_series(20001, 20500) g")
    [(last,)] = sql(cluster, "SELECT pg_walfile_name(pg_switch_wal())")
    deadline = time.monotonic() + 60
    while (sql(cluster, "SELECT last_archived_wal FROM pg_stat_archiver")[0][0] or "") < last:
        assert time.monotonic() < deadline, f"{last} was not archived"
        time.sleep(0.2)
    shipped = ship_wal(repo, offsite, "main")
    assert shipped.objects > 0 and shipped.ok
    runbook = pgbackup("runbook", config=config).stdout
    assert f"aws s3 --endpoint-url {s3_endpoint} cp" in runbook
    # An operator has `aws` and pg_ctl on PATH; the server's `su` keeps neither of ours.
    tools = {"aws s3 ": f"{BIN / 'aws'} s3 ", "-c 'pg_ctl ": f"-c '{cluster.bindir}/pg_ctl "}
    commands, to, port = stock_commands(runbook, backup, cluster, workdir, tools)
    newest = commands.split("\n", 1)[0]  # the listing that finds the newest backup
    listing = subprocess.run(
        ["bash", "-o", "pipefail", "-c", newest], capture_output=True, text=True
    )
    assert f"base/{backup.date}/{backup.label}/catalog.json" in listing.stdout, listing.stderr
    proc = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", commands], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    # Replayed from the bucket's WAL past the backup: the later rows too.
    assert restored_rows(cluster, to, port, timeout=90) == 20500


@pytest.mark.slow
def test_the_runbooks_stock_tool_commands_restore_the_cluster(archiving, workdir, age_key):
    """What the runbook tells an operator without pgbackup (age, zstd, tar, sh) restores."""
    cluster, config = archiving
    key_file, recipient = age_key
    cfg, repo, _ = backed_up(cluster, config, workdir, encryption_yaml(recipient, key_file))
    report = rehearse(cfg, "main", WEEK, quiet)
    assert report.passed, report.problems
    runbook = pgbackup("runbook", config=config).stdout
    backup = find_base_backup(repo, "main", TODAY.isoformat())
    commands, to, port = stock_commands(runbook, backup, cluster, workdir)
    assert "age -d -i" in commands and "zstd -d" in commands and "tar -x" in commands
    proc = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", commands], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert restored_rows(cluster, to, port, timeout=60) == 20000
