"""The `pgbackup` command and the Dagster code location, as an operator runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pg_backup_assets.core.config import load_config
from pg_backup_assets.core.dumps.dump import take_dump_set
from pg_backup_assets.core.storage.repository import Repository
from tests.conftest import REPO_ROOT, create_database, drop_database, table_contents, write_config

BIN = Path(sys.executable).parent


def pgbackup(*args: str, config: Path | None = None, env: dict | None = None, cwd=None):
    full_env = {**os.environ, **(env or {})}
    if config:
        full_env["PGBACKUP_CONFIG"] = str(config)
    return subprocess.run(
        [str(BIN / "pgbackup"), *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=300,
    )


def test_restore_dump_command(pg, database, workdir):
    cfg = write_config(workdir, pg.dsn(), [database])
    take_dump_set(
        Repository.from_config(load_config(cfg)),
        load_config(cfg).cluster("main"),
        "2026-11-25",
        log=lambda m: None,
    )
    target = create_database(pg, f"{database}_cli")
    try:
        proc = pgbackup(
            "restore-dump", "--database", database, "--into", pg.dsn(target), config=cfg
        )
        assert proc.returncode == 0, proc.stderr
        assert "2026-11-25" in proc.stdout
        assert table_contents(pg.dsn(target), "ledger") == table_contents(
            pg.dsn(database), "ledger"
        )
        # Asking for a day without a dump names the day and the cluster.
        proc = pgbackup(
            "restore-dump",
            "--database",
            database,
            "--into",
            pg.dsn(target),
            "--date",
            "2026-11-01",
            config=cfg,
        )
        assert proc.returncode == 1
        assert "2026-11-01" in proc.stderr and "main" in proc.stderr
    finally:
        drop_database(pg, target)


def test_info_json_shape(pg, database, workdir):
    cfg = write_config(workdir, pg.dsn(), [database])
    take_dump_set(
        Repository.from_config(load_config(cfg)),
        load_config(cfg).cluster("main"),
        "2026-11-25",
        log=lambda m: None,
    )
    proc = pgbackup("info", "--json", config=cfg)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    main = doc["clusters"]["main"]
    assert set(main) >= {"base_backups", "dumps", "wal"}
    assert set(main["wal"]) >= {"first", "last", "count", "gaps"}
    [dump] = main["dumps"]
    assert dump["date"] == "2026-11-25" and dump["database"] == database
    assert dump["size_bytes"] > 0


def test_bad_config_is_rejected_naming_the_key(workdir):
    cfg = workdir / "bad.yaml"
    cfg.write_text("repository: /tmp/r\nclusters:\n  main:\n    dsn: x\n    rpo_seconds: soon\n")
    proc = pgbackup("info", config=cfg)
    assert proc.returncode == 2
    assert "clusters.main.rpo_seconds" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1  # one line, no traceback


def test_password_never_reaches_output(pg, database, workdir, monkeypatch):
    monkeypatch.setenv("PGB_SECRET", "hunter2")
    # A real dump in the repository, so that restore-dump gets as far as connecting.
    cfg = write_config(workdir, f"{pg.dsn()} password=${{PGB_SECRET}}", [database])
    config = load_config(cfg)
    take_dump_set(
        Repository.from_config(config), config.cluster("main"), "2026-11-25", log=lambda m: None
    )
    down = "host=127.0.0.1 port=1 user=u password=hunter2 connect_timeout=2"
    # The target is down: the error names it, with its password masked.
    proc = pgbackup("restore-dump", "--database", database, "--into", down, config=cfg)
    assert proc.returncode == 1
    assert "cannot connect to" in proc.stderr and "password=***" in proc.stderr
    assert "hunter2" not in proc.stdout + proc.stderr
    # The cluster itself is down: the same, for its DSN from the config.
    cfg.write_text(cfg.read_text().replace(f"port={pg.port}", "port=1"))
    proc = pgbackup("restore-point", "before-upgrade", config=cfg)
    assert proc.returncode == 1
    assert "cannot connect to" in proc.stderr and "password=***" in proc.stderr
    assert "hunter2" not in proc.stdout + proc.stderr


def test_definitions_validate(pg, workdir):
    cfg = write_config(workdir, pg.dsn(), ["postgres"])
    proc = subprocess.run(
        [str(BIN / "dagster"), "definitions", "validate", "-w", "workspace.yaml"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PGBACKUP_CONFIG": str(cfg)},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Validation successful" in proc.stdout + proc.stderr


@pytest.mark.slow
def test_demo_runs_end_to_end(workdir):
    home = workdir / "state"
    proc = pgbackup("demo", "--dir", str(home))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "demo summary" in proc.stdout
    lines = {line.split()[0]: line for line in proc.stdout.splitlines() if line.strip()}
    for check in (
        "dump_restorable",
        "base_backup_verified",
        "wal_archive_contiguous",
        "wal_archive_fresh",
        "offsite_copy_matches",
        "rehearsal_passed",
        "rto_within_target",
        "rpo_within_target",
    ):
        assert "PASSED" in lines[check], lines[check]
    # Honest: the demo's offsite store (a local S3 endpoint) is on this machine.
    assert "FAILED" in lines["three_two_one"] and "on this machine" in lines["three_two_one"]
    # restore-dump: 3 tables; the rehearsal: 3 physical and 3 logical, all identical.
    out = proc.stdout.splitlines()
    rehearsed = [line for line in out if line.startswith(("  physical", "  logical"))]
    assert len(rehearsed) == 6 and all("identical" in line for line in rehearsed)
    assert sum(1 for line in out if line.endswith("rows  identical")) == 3
    assert "DIFFERS" not in proc.stdout
    assert any(line.startswith("restore rehearsal       from the offsite copy") for line in out)
    assert "orders are back (all of them)" in lines["PITR"]
    assert "from offsite" in lines["PITR"]
    # The run is recorded in the persistent instance the UI reads.
    assert any((home / "dagster_home").rglob("*.db"))
