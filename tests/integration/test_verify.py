"""`pgbackup verify` re-reads everything; `pgbackup info` shows what is offsite."""

from __future__ import annotations

import json

from pg_backup_assets.core.base.backup import take_base_backup
from pg_backup_assets.core.config import load_config
from pg_backup_assets.core.dumps.dump import take_dump_set
from pg_backup_assets.core.offsite.copy import copy_set
from pg_backup_assets.core.offsite.store import offsite_repository
from pg_backup_assets.core.storage.repository import Repository
from pg_backup_assets.core.wal.archive import list_archive
from tests.conftest import encryption_yaml
from tests.integration.test_cli import pgbackup


def quiet(_: str) -> None:
    pass


def test_verify_reads_everything_and_names_what_is_damaged(archiving, workdir, age_key):
    cluster, config = archiving
    key_file, recipient = age_key
    config.write_text(
        config.read_text()
        + f"offsite: {{path: {workdir / 'offsite'}}}\n"
        + encryption_yaml(recipient, key_file)
    )
    cfg = load_config(config)
    repo, offsite = Repository.from_config(cfg), offsite_repository(cfg)
    first = take_dump_set(repo, cfg.cluster("main"), "2026-11-25", log=quiet)
    second = take_dump_set(repo, cfg.cluster("main"), "2026-11-26", log=quiet)
    backup = take_base_backup(repo, cfg.cluster("main"), "2026-11-26", log=quiet)
    cluster.switch_wal_and_wait_archived()
    copy_set(repo, offsite, backup.objects.values(), backup.catalog_key, backup.raw_bytes)
    copy_set(repo, offsite, [o.record for o in first.objects], first.catalog_key, 0)

    proc = pgbackup("verify", config=config)
    assert proc.returncode == 0, proc.stderr
    assert backup.label in proc.stdout and "WAL timeline 1" in proc.stdout
    assert "FAILED" not in proc.stdout

    # info: each backup's state offsite, and the WAL not there yet.
    info = json.loads(pgbackup("info", "--json", config=config).stdout)["clusters"]["main"]
    assert [b["offsite"] for b in info["base_backups"]] == ["copied"]
    assert {d["date"]: d["offsite"] for d in info["dumps"]} == {
        "2026-11-25": "copied",
        "2026-11-26": "missing",
    }
    assert info["wal"]["offsite_missing"] == len(list_archive(repo, "main").objects)
    assert "offsite: copied" in pgbackup("info", config=config).stdout

    # One damaged byte in a dump and one in a WAL segment: each named, exit 1.
    dump_obj = workdir / "repo" / second.objects[0].record.key
    segment = list_archive(repo, "main").segments[0]
    for path in (dump_obj, workdir / "repo" / segment.key):
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))
    proc = pgbackup("verify", "--json", config=config)
    assert proc.returncode == 1
    report = json.loads(proc.stdout)
    assert not report["ok"]
    problems = "\n".join(report["problems"])
    assert second.objects[0].record.key in problems and segment.key in problems
    assert len(report["problems"]) == 2
    # The offsite copies are intact, and verify says so of them alone.
    proc = pgbackup("verify", "--source", "offsite", config=config)
    assert proc.returncode == 0, proc.stderr

    # Without the identity, encrypted objects cannot be decoded: verify does not pretend.
    config.write_text(config.read_text().replace(f", identity_file: {key_file}", ""))
    proc = pgbackup("verify", "--source", "offsite", config=config)
    assert proc.returncode == 1 and "cannot be decoded" in proc.stderr
