"""Base backups and point-in-time recovery on real PostgreSQL 15 servers.

Like pgBackRest's suite: a marker table gets one row per step, each step is a recovery
target, and every restore must land exactly on its marker rows.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import psycopg
import pytest

from pg_backup_assets.core.base.restore import Target, restore
from pg_backup_assets.core.base.restore_point import create_restore_point
from pg_backup_assets.core.catalog import list_base_backups
from pg_backup_assets.core.config import load_config
from pg_backup_assets.core.errors import ConfigError, PgBackupError
from pg_backup_assets.core.postgres.local_cluster import SOCKET_DIR_MAX, LocalCluster
from pg_backup_assets.core.storage.repository import Repository
from pg_backup_assets.core.wal.archive import find
from pg_backup_assets.core.wal.names import segment_of
from pg_backup_assets.definitions import build_defs
from pg_backup_assets.defs.check_names import BASE_BACKUP_VERIFIED, SIZE_ANOMALY
from tests.conftest import _reachable_tmpdir, archiving_settings, write_config
from tests.integration.test_cli import pgbackup
from tests.integration.test_wal_archive import sql, switch_and_wait_archived

DAY = "2026-11-26"

# One test process builds this file's shared fixture (`make test` runs two).
pytestmark = pytest.mark.xdist_group("pitr")


@dataclass
class Scenario:
    workdir: Path
    config: Path
    primary: LocalCluster
    targets: dict[str, tuple[Target, list[str]]]  # name -> (target, expected markers)

    @property
    def repo(self) -> Repository:
        return Repository.from_config(load_config(self.config))

    @property
    def cluster(self):
        return load_config(self.config).cluster("main")


def insert_marker(cluster: LocalCluster, label: str) -> int:
    """Insert a marker row in its own transaction; return that transaction's id."""
    with psycopg.connect(cluster.dsn()) as conn:
        xid = conn.execute("SELECT txid_current()").fetchone()[0]
        conn.execute("INSERT INTO marker (label) VALUES (%s)", (label,))
    return int(xid)


@pytest.fixture(scope="module")
def scenario() -> Scenario:
    workdir = _reachable_tmpdir("pgba-pitr-")
    key = workdir / "age.key"
    from pg_backup_assets.core.storage.codec import generate_identity

    text, recipient = generate_identity()
    key.write_text(text)
    primary = LocalCluster(workdir / "primary")
    config = write_config(workdir, primary.dsn(), ["postgres"], recipient, key)
    primary.init(archiving_settings(config), fast=True).start()
    try:
        sql(primary, "CREATE TABLE marker (id serial PRIMARY KEY, label text NOT NULL)")
        sql(
            primary, "CREATE TABLE bulk AS SELECT g, md5(g::text) FROM generate_series(1, 200000) g"
        )
        insert_marker(primary, "m0")

        defs = build_defs(str(config))
        key_ = dg.AssetKey(["main", "base_backup"])
        result = dg.materialize(
            [*defs.assets, *defs.asset_checks],
            selection=dg.AssetSelection.assets(key_) | dg.AssetSelection.checks_for_assets(key_),
            partition_key=DAY,
            resources=defs.resources,
            raise_on_error=False,
        )
        assert result.success
        checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
        assert checks[BASE_BACKUP_VERIFIED].passed, checks[BASE_BACKUP_VERIFIED].description
        assert checks[SIZE_ANOMALY].passed

        xid_m1 = insert_marker(primary, "m1")
        insert_marker(primary, "m2")
        lsn_m2 = sql(primary, "SELECT pg_current_wal_lsn()")[0][0]
        insert_marker(primary, "m3")
        cfg = load_config(config)
        create_restore_point(Repository.from_config(cfg), cfg.cluster("main"), "after_m3")
        insert_marker(primary, "m4")
        time.sleep(0.3)
        moment = sql(primary, "SELECT clock_timestamp()")[0][0]
        time.sleep(0.3)
        insert_marker(primary, "m5")
        switch_and_wait_archived(primary)
        marks = ["m0", "m1", "m2", "m3", "m4", "m5"]
        targets = {
            "xid": (Target.parse("xid", str(xid_m1)), marks[:2]),
            "lsn": (Target.parse("lsn", str(lsn_m2)), marks[:3]),
            "name": (Target.parse("name", "after_m3"), marks[:4]),
            "time": (Target.parse("time", moment.isoformat()), marks[:5]),
            "latest": (Target.parse(None, None), marks),
        }
        yield Scenario(workdir, config, primary, targets)
    finally:
        primary.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def restore_and_read(s: Scenario, target: Target, name: str, **kwargs) -> tuple[list[str], object]:
    result = restore(
        s.repo,
        s.cluster,
        s.config,
        s.workdir / f"restore-{name}",
        target,
        start=True,
        log=lambda m: None,
        **kwargs,
    )
    try:
        with psycopg.connect(result.server.dsn()) as conn:
            labels = [r[0] for r in conn.execute("SELECT label FROM marker ORDER BY id")]
        return labels, result
    finally:
        result.server.stop()


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["xid", "lsn", "name", "time", "latest"])
def test_restore_lands_exactly_on_the_target(scenario, kind):
    target, expected = scenario.targets[kind]
    labels, result = restore_and_read(scenario, target, kind)
    assert labels == expected
    assert result.replay_s is not None and result.fetch_extract_s > 0
    assert result.reached_lsn


def test_a_restore_deep_in_the_tree_starts_its_server(scenario):
    # <to>/../.<name>.run/sock/.s.PGSQL.<port> would pass the 107 bytes of a socket path.
    name = "deep/" + "d" * 60 + "/" + "e" * 40
    assert len(str(scenario.workdir / name)) > SOCKET_DIR_MAX
    labels, result = restore_and_read(scenario, scenario.targets["latest"][0], name)
    assert labels == scenario.targets["latest"][1]
    assert not result.server.sockdir.is_relative_to(scenario.workdir)
    assert not result.server.sockdir.exists()  # gone with the server
    # RTO: first byte fetched to a usable server, the steps between the phases included.
    assert result.rto_s > result.fetch_extract_s + result.replay_s


def test_replay_takes_the_wal_fetched_ahead(scenario):
    """The restore fetches the WAL replay needs into a spool while it prepares the copy;
    PostgreSQL's restore_command moves each file from there, and goes back to plain
    wal-fetch once recovery is over."""
    target, expected = scenario.targets["name"]
    labels, result = restore_and_read(scenario, target, "spooled")
    assert labels == expected
    # The backup's own WAL and what follows up to the restore point: several segments.
    assert result.wal_wanted >= 2
    assert result.wal_fetched_ahead == result.wal_wanted
    # Replay reads every segment it needs from the spool (the history probes, which are
    # not archived, still go to wal-fetch and fail quietly).
    assert result.wal_taken_ahead >= 2
    run = scenario.workdir / ".restore-spooled.run"
    assert run.is_dir() and not (run / "wal-spool").exists()
    auto = (result.data_dir / "postgresql.auto.conf").read_text()
    assert "wal-spool" not in auto and "wal-fetch --source local %f %p" in auto


def test_a_damaged_segment_is_not_fetched_ahead_and_stops_recovery(scenario):
    """Fetching ahead verifies each file as wal-fetch does: a damaged segment is left to
    wal-fetch, which stops recovery naming it (never a recovery that silently ends early)."""
    [backup] = list_base_backups(scenario.repo, "main")
    size = 16 * 2**20
    first = segment_of(backup.start_lsn, backup.timeline, size).name(size)
    [obj] = find(scenario.repo, "main", first)
    stored = scenario.workdir / "repo" / obj.key
    good = stored.read_bytes()
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0xFF
    stored.write_bytes(bytes(bad))
    try:
        with pytest.raises(PgBackupError) as exc:
            restore_and_read(scenario, scenario.targets["latest"][0], "damaged-wal")
        log = (scenario.workdir / ".restore-damaged-wal.run" / "server.log").read_text()
        assert first in log and "damaged" in log, log[-2000:]
        assert "partial restore is left" in str(exc.value)
        assert not (scenario.workdir / ".restore-damaged-wal.run" / "wal-spool").exists()
    finally:
        stored.write_bytes(good)


def test_base_backup_catalog_entry(scenario):
    [backup] = list_base_backups(scenario.repo, "main")
    assert backup.start_lsn < backup.stop_lsn and backup.timeline == 1
    assert backup.pg_major == 15 and backup.data_checksums
    assert backup.architecture == __import__("platform").machine()
    # In parts (pg_control in one of its own), each an object, and the manifest.
    assert set(backup.objects) == {p.name for p in backup.parts} | {"backup_manifest"}
    [control] = [p for p in backup.parts if p.control]
    assert [f[0] for f in control.files] == ["global/pg_control"]
    assert all(o.encrypted for o in backup.objects.values())
    doc = pgbackup("info", "--json", config=scenario.config)
    import json

    [entry] = json.loads(doc.stdout)["clusters"]["main"]["base_backups"]
    assert entry["label"] == backup.label and entry["verified"] is True
    assert entry["tier"] == "daily" and entry["size_bytes"] == backup.size_bytes


def test_oops_delete_then_pitr_through_the_cli(scenario):
    primary = scenario.primary
    sql(primary, "CREATE TABLE important AS SELECT g AS id FROM generate_series(1, 5000) g")
    time.sleep(0.2)
    before = sql(primary, "SELECT clock_timestamp()")[0][0]
    time.sleep(0.2)
    sql(primary, "DELETE FROM important WHERE id % 3 = 0")
    switch_and_wait_archived(primary)
    assert sql(primary, "SELECT count(*) FROM important")[0][0] < 5000

    to = scenario.workdir / "oops"
    proc = pgbackup(
        "restore",
        "--to",
        str(to),
        "--target-time",
        before.isoformat(),
        "--start",
        config=scenario.config,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "replay" in proc.stdout
    server = LocalCluster(to.parent / f".{to.name}.run", data=to)
    port = int(next(p for p in proc.stdout.split() if p.startswith("port=")).split("=")[1])
    server.port = port
    try:
        assert sql(server, "SELECT count(*) FROM important")[0][0] == 5000
        assert sql(server, "SELECT pg_is_in_recovery()")[0][0] is False
    finally:
        server.stop()


def test_missing_wal_segment_is_named_not_silently_skipped(scenario):
    primary = scenario.primary
    [backup] = list_base_backups(scenario.repo, "main")
    sql(primary, "INSERT INTO marker (label) VALUES ('gap-a')")
    victim = switch_and_wait_archived(primary)
    sql(primary, "INSERT INTO marker (label) VALUES ('gap-b')")
    lsn_after = sql(primary, "SELECT pg_current_wal_lsn()")[0][0]
    time.sleep(0.2)
    when = sql(primary, "SELECT clock_timestamp()")[0][0]
    switch_and_wait_archived(primary)
    [obj] = find(scenario.repo, "main", victim)
    moved = scenario.workdir / "moved-aside"
    shutil.move(scenario.workdir / "repo" / obj.key, moved)
    try:
        # Known before any work: an LSN target past the gap, or the end of the archive.
        for kind, value in (("lsn", str(lsn_after)), (None, None)):
            with pytest.raises(PgBackupError, match=victim):
                restore(
                    scenario.repo,
                    scenario.cluster,
                    scenario.config,
                    scenario.workdir / f"gap-{kind}",
                    Target.parse(kind, value),
                    log=lambda m: None,
                )
        # A time target is only known to lie past the gap once replay gets there.
        with pytest.raises(PgBackupError, match=victim) as exc:
            restore(
                scenario.repo,
                scenario.cluster,
                scenario.config,
                scenario.workdir / "gap-time",
                Target.parse("time", when.isoformat()),
                start=True,
                log=lambda m: None,
            )
        assert "before reaching" in str(exc.value)
        assert backup.label  # the backup itself was fine
    finally:
        shutil.move(moved, scenario.workdir / "repo" / obj.key)


def test_corrupted_base_backup_is_caught_by_the_check_and_by_restore(scenario, tmp_path):
    [backup] = list_base_backups(scenario.repo, "main")
    part = max(backup.parts, key=lambda p: backup.objects[p.name].stored_bytes)
    key = backup.objects[part.name].key
    path = scenario.workdir / "repo" / key
    original = path.read_bytes()
    damaged = bytearray(original)
    damaged[len(damaged) // 2] ^= 0x01
    path.write_bytes(bytes(damaged))
    try:
        defs = build_defs(str(scenario.config))
        check = dg.AssetCheckKey(dg.AssetKey(["main", "base_backup"]), BASE_BACKUP_VERIFIED)
        result = dg.materialize(
            [*defs.assets, *defs.asset_checks],
            selection=dg.AssetSelection.checks(check),
            tags={"dagster/partition": DAY},
            resources=defs.resources,
            raise_on_error=False,
        )
        [evaluation] = result.get_asset_check_evaluations()
        assert not evaluation.passed and f"{key} " in evaluation.description
        assert "damaged" in evaluation.description
        # The damaged part is named; pg_control is never written, nothing can start.
        with pytest.raises(PgBackupError, match=f"{key} .*damaged.*nothing was restored"):
            restore(
                scenario.repo,
                scenario.cluster,
                scenario.config,
                scenario.workdir / "corrupt",
                Target.parse(None, None),
                log=lambda m: None,
            )
    finally:
        path.write_bytes(original)


def test_restore_guards(scenario):
    occupied = scenario.workdir / "occupied"
    occupied.mkdir()
    (occupied / "precious").write_text("x")
    with pytest.raises(PgBackupError, match="not empty"):
        restore(
            scenario.repo,
            scenario.cluster,
            scenario.config,
            occupied,
            Target.parse(None, None),
            log=lambda m: None,
        )
    assert (occupied / "precious").exists()
    with pytest.raises(PgBackupError, match="oldest restorable time"):
        restore(
            scenario.repo,
            scenario.cluster,
            scenario.config,
            scenario.workdir / "early",
            Target.parse("time", "2020-01-01T00:00:00Z"),
            log=lambda m: None,
        )
    with pytest.raises(PgBackupError, match="time zone"):
        Target.parse("time", "2026-11-26 10:00:00")


def test_encrypted_backup_needs_the_identity(scenario):
    no_key = scenario.workdir / "no-key.yaml"
    no_key.write_text(
        "\n".join(x for x in scenario.config.read_text().splitlines() if "identity_file" not in x)
    )
    cfg = load_config(no_key)
    with pytest.raises(ConfigError, match="identity_file"):
        restore(
            Repository.from_config(cfg),
            cfg.cluster("main"),
            no_key,
            scenario.workdir / "no-key",
            Target.parse(None, None),
            log=lambda m: None,
        )


def test_a_wrong_identity_restores_nothing(scenario):
    from pg_backup_assets.core.storage.codec import generate_identity

    wrong = scenario.workdir / "wrong.key"
    wrong.write_text(generate_identity()[0])
    config = scenario.workdir / "wrong-key.yaml"
    key_line = next(x for x in scenario.config.read_text().splitlines() if "identity_file" in x)
    config.write_text(scenario.config.read_text().replace(key_line, f"  identity_file: {wrong}"))
    cfg = load_config(config)
    target = scenario.workdir / "wrong-key"
    with pytest.raises(PgBackupError, match="cannot decrypt .*nothing was restored"):
        restore(
            Repository.from_config(cfg),
            cfg.cluster("main"),
            config,
            target,
            Target.parse(None, None),
            log=lambda m: None,
        )
    assert list(target.iterdir()) == []
