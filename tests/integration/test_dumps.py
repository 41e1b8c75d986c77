"""Logical dumps on a real PostgreSQL 15 server, through the engine and through Dagster."""

from __future__ import annotations

import threading
import time

import dagster as dg
import psycopg
import pytest

from pg_backup_assets.core.catalog import GLOBALS, find_dump_set, list_dump_sets
from pg_backup_assets.core.config import load_config
from pg_backup_assets.core.dumps.dump import take_dump_set
from pg_backup_assets.core.dumps.restore import restore_dump
from pg_backup_assets.core.errors import CommandError, ConfigError, IntegrityError, PgBackupError
from pg_backup_assets.core.storage.repository import Repository
from pg_backup_assets.definitions import build_defs
from pg_backup_assets.defs.check_names import DUMP_RESTORABLE, SIZE_ANOMALY
from tests.conftest import create_database, drop_database, table_contents, write_config

DAY = "2026-11-26"


def _repo(config_path) -> Repository:
    return Repository.from_config(load_config(config_path))


DUMP_KEY = dg.AssetKey(["main", "logical_dump"])


def _materialize(config_path, day=DAY, selection=None):
    defs = build_defs(str(config_path))
    if selection is None:
        selection = dg.AssetSelection.assets(DUMP_KEY) | dg.AssetSelection.checks_for_assets(
            DUMP_KEY
        )
    # A checks-only run has no asset to take the partitions from: Dagster 1.13 then wants
    # the partition as a run tag (as the UI sets it) rather than partition_key.
    checks_only = not selection.resolve(defs.resolve_asset_graph())
    partition = {"tags": {"dagster/partition": day}} if checks_only else {"partition_key": day}
    return dg.materialize(
        [*defs.assets, *defs.asset_checks],
        resources=defs.resources,
        selection=selection,
        raise_on_error=False,
        **partition,
    )


def test_dump_restore_roundtrip_is_identical(pg, database, workdir, age_key):
    key_file, recipient = age_key
    # The test server trusts loopback, so the password is never needed, only carried.
    cfg = write_config(workdir, f"{pg.dsn()} password=hunter2", [database], recipient, key_file)
    result = _materialize(cfg)
    assert result.success
    mat = result.asset_materializations_for_node("main__logical_dump")[0]
    assert mat.partition == DAY
    assert mat.metadata["size_bytes"].value > 0
    assert mat.metadata["databases"].value == 1
    everything = str(mat.metadata) + "".join(str(e) for e in result.all_events)
    assert "main" in everything and "hunter2" not in everything
    catalog = (workdir / "repo" / mat.metadata["catalog_key"].value).read_text()
    assert "hunter2" not in catalog
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert checks[DUMP_RESTORABLE].passed, checks[DUMP_RESTORABLE].description
    assert checks[SIZE_ANOMALY].passed

    target = create_database(pg, f"{database}_r")
    try:
        restore_dump(_repo(cfg), "main", database, pg.dsn(target), date=DAY, log=lambda m: None)
        for table in ("accounts", "ledger"):
            assert table_contents(pg.dsn(target), table) == table_contents(pg.dsn(database), table)
        with psycopg.connect(pg.dsn(target)) as conn:
            indexes = {
                r[0]
                for r in conn.execute("SELECT indexname FROM pg_indexes WHERE tablename='ledger'")
            }
        assert "ledger_account" in indexes
    finally:
        drop_database(pg, target)


def test_selective_table_restore(pg, database, workdir):
    cfg = write_config(workdir, pg.dsn(), [database])
    take_dump_set(_repo(cfg), load_config(cfg).cluster("main"), DAY, log=lambda m: None)
    target = create_database(pg, f"{database}_sel")
    try:
        restore_dump(
            _repo(cfg), "main", database, pg.dsn(target), tables=["accounts"], log=lambda m: None
        )
        with psycopg.connect(pg.dsn(target)) as conn:
            tables = {
                r[0]
                for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname='public'")
            }
        assert tables == {"accounts"}
        assert table_contents(pg.dsn(target), "accounts") == table_contents(
            pg.dsn(database), "accounts"
        )
    finally:
        drop_database(pg, target)


def test_corrupted_byte_fails_dump_restorable(pg, database, workdir):
    cfg = write_config(workdir, pg.dsn(), [database])
    assert _materialize(cfg).success
    dump_set = find_dump_set(_repo(cfg), "main", DAY)
    obj = dump_set.database(database)
    path = workdir / "repo" / obj.record.key
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0xFF
    path.write_bytes(bytes(data))

    check_key = dg.AssetCheckKey(dg.AssetKey(["main", "logical_dump"]), DUMP_RESTORABLE)
    result = _materialize(cfg, selection=dg.AssetSelection.checks(check_key))
    evaluation = result.get_asset_check_evaluations()[0]
    assert evaluation.check_name == DUMP_RESTORABLE
    assert not evaluation.passed
    assert obj.record.key in evaluation.description

    # And a restore refuses the damaged object before touching the target.
    target = create_database(pg, f"{database}_bad")
    try:
        with pytest.raises(IntegrityError, match="damaged"):
            restore_dump(_repo(cfg), "main", database, pg.dsn(target), log=lambda m: None)
        with psycopg.connect(pg.dsn(target)) as conn:
            assert (
                conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname='public'").fetchone()[
                    0
                ]
                == 0
            )
    finally:
        drop_database(pg, target)


def test_dump_includes_globals_and_extensions(pg, database, workdir):
    with psycopg.connect(pg.dsn(database), autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pgcrypto")
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        conn.execute("DROP ROLE IF EXISTS reporting_ro")
        conn.execute("CREATE ROLE reporting_ro NOLOGIN")
    cfg = write_config(workdir, pg.dsn(), [database])
    repo = _repo(cfg)
    dump_set = take_dump_set(repo, load_config(cfg).cluster("main"), DAY, log=lambda m: None)
    assert "pgcrypto" in dump_set.database(database).extensions
    globals_obj = next(o for o in dump_set.objects if o.database == GLOBALS)
    sink = _Collect()
    repo.read_into(globals_obj.record, sink)
    assert b"CREATE ROLE reporting_ro" in sink.data


def test_encrypted_dump_without_identity_fails_clearly(pg, database, workdir, age_key):
    _, recipient = age_key
    cfg = write_config(workdir, pg.dsn(), [database], recipient, identity_file=None)
    take_dump_set(_repo(cfg), load_config(cfg).cluster("main"), DAY, log=lambda m: None)
    target = create_database(pg, f"{database}_noid")
    try:
        with pytest.raises(ConfigError, match="identity_file"):
            restore_dump(_repo(cfg), "main", database, pg.dsn(target), log=lambda m: None)
    finally:
        drop_database(pg, target)


def test_failed_dump_leaves_no_backup(pg, database, workdir):
    cfg = write_config(workdir, pg.dsn(), [database])
    cluster = load_config(cfg).cluster("main")
    # pg_dump waits behind our lock; then its session is killed, so it fails mid-set.
    with psycopg.connect(pg.dsn(database)) as locker:
        locker.execute("LOCK TABLE ledger IN ACCESS EXCLUSIVE MODE")
        killer = threading.Thread(target=_terminate_waiting_pg_dump, args=(pg.dsn(),))
        killer.start()
        try:
            with pytest.raises(CommandError, match="pg_dump of"):
                take_dump_set(_repo(cfg), cluster, DAY, log=lambda m: None)
        finally:
            killer.join()
    assert list_dump_sets(_repo(cfg), "main") == []
    assert list((workdir / "repo").rglob("*.zst")) == []


def _terminate_waiting_pg_dump(dsn: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    with psycopg.connect(dsn, autocommit=True) as conn:
        while time.monotonic() < deadline:
            killed = conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'pg_dump' AND wait_event_type = 'Lock'"
            ).fetchall()
            if killed:
                return
            time.sleep(0.05)


def test_unknown_database_is_named(pg, workdir):
    cfg = write_config(workdir, pg.dsn(), ["no_such_db"])
    with pytest.raises(PgBackupError, match="no_such_db"):
        take_dump_set(_repo(cfg), load_config(cfg).cluster("main"), DAY, log=lambda m: None)


def test_size_anomaly_warns_on_a_shrunken_dump(pg, database, workdir):
    cfg = write_config(workdir, pg.dsn(), [database])
    for day in ("2026-11-20", "2026-11-21", "2026-11-22"):
        assert _materialize(cfg, day=day).success
    with psycopg.connect(pg.dsn(database), autocommit=True) as conn:
        conn.execute("TRUNCATE ledger")
    result = _materialize(cfg, day="2026-11-23")
    assert result.success  # a WARN does not fail the run
    size = next(e for e in result.get_asset_check_evaluations() if e.check_name == SIZE_ANOMALY)
    assert not size.passed
    assert size.severity == dg.AssetCheckSeverity.WARN
    assert "shrank" in size.description


class _Collect:
    def __init__(self):
        self.data = b""

    def write(self, data):
        self.data += bytes(data)
        return len(data)

    def flush(self):
        pass
