"""Base backups in parts (issue #15) on a real PostgreSQL 15 server: round trips with one
and several workers, a missing or damaged part, a restore killed half-way, delta restores,
and the older one-stream layout."""

from __future__ import annotations

import filecmp
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from pg_backup_assets.core.base.backup import take_base_backup
from pg_backup_assets.core.base.extract import system_identifier
from pg_backup_assets.core.base.restore import Target, restore
from pg_backup_assets.core.catalog import BaseBackup, list_base_backups
from pg_backup_assets.core.config import load_config
from pg_backup_assets.core.errors import PgBackupError
from pg_backup_assets.core.postgres.local_cluster import (
    LocalCluster,
    as_server_user,
    free_port,
    hand_over_tree,
)
from pg_backup_assets.core.storage.repository import Repository
from tests.conftest import (
    REPO_ROOT,
    _reachable_tmpdir,
    archiving_settings,
    table_contents,
    write_config,
)
from tests.integration.test_cli import pgbackup
from tests.integration.test_wal_archive import sql

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("parts")]

TABLES = ("cold", "hot", "warm")
DAY = "2026-11-26"


def quiet(_: str) -> None:
    pass


@dataclass
class Scene:
    workdir: Path
    config: Path
    primary: LocalCluster
    backup: BaseBackup
    contents: dict[str, tuple[int, str]]  # each table as the backup holds it

    @property
    def repo(self) -> Repository:
        return Repository.from_config(load_config(self.config))

    @property
    def cluster(self):  # noqa: ANN201
        return load_config(self.config).cluster("main")


def contents(dsn: str) -> dict[str, tuple[int, str]]:
    return {t: table_contents(dsn, t) for t in TABLES}


@pytest.fixture(scope="module")
def scene() -> Scene:
    workdir = _reachable_tmpdir("pgba-parts-")
    from pg_backup_assets.core.storage.codec import generate_identity

    text, recipient = generate_identity()
    (workdir / "age.key").write_text(text)
    primary = LocalCluster(workdir / "primary")
    # Small parts: a test-sized cluster (~80 MiB) makes several.
    extra = "base_backup: {part_size_mib: 16}\n"
    config = write_config(
        workdir, primary.dsn(), ["postgres"], recipient, workdir / "age.key", extra=extra
    )
    primary.init(archiving_settings(config), fast=True).start()
    try:
        for table, rows in (("cold", 500000), ("hot", 20000), ("warm", 20000)):
            sql(
                primary,
                f"CREATE TABLE {table} AS SELECT g AS id, md5(g::text) AS v "
                f"FROM generate_series(1, {rows}) g",
            )
        # Hint bits set now, not by a later read: an unchanged table stays byte for byte.
        sql(primary, "VACUUM (FREEZE, ANALYZE)")
        sql(primary, "CHECKPOINT")
        cfg = load_config(config)
        repo = Repository.from_config(cfg)
        backup = take_base_backup(repo, cfg.cluster("main"), DAY, quiet, layout=cfg.base_backup)
        primary.switch_wal_and_wait_archived()
        yield Scene(workdir, config, primary, backup, contents(primary.dsn()))
    finally:
        primary.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def test_a_backup_is_stored_in_parts_with_pg_control_alone(scene):
    backup = scene.backup
    assert "base.tar" not in backup.objects
    assert set(backup.objects) == {p.name for p in backup.parts} | {"backup_manifest"}
    [control] = [p for p in backup.parts if p.control]
    assert [f[0] for f in control.files] == ["global/pg_control"]
    data = [p for p in backup.parts if not p.control]
    assert len(data) >= 3
    # Every file of the manifest is in exactly one part, with its size and CRC32C.
    paths = [f[0] for p in backup.parts for f in p.files]
    assert len(paths) == len(set(paths))
    assert backup.checksum_algorithm == "CRC32C"
    assert backup.data_bytes == sum(f[1] for p in backup.parts for f in p.files)
    # Each part opens with the stock tools alone: age -d | zstd -d | tar -t.
    if shutil.which("age"):
        key = scene.workdir / "age.key"
        path = scene.repo.root / backup.objects[data[0].name].key
        listing = subprocess.run(
            f"age -d -i {key} {path} | zstd -d | tar -t",
            shell=True,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        assert {f[0] for f in data[0].files} <= set(listing)


@pytest.mark.parametrize("workers", [1, 3])
def test_round_trip_is_identical_with_one_or_several_workers(scene, workers):
    lines: list[str] = []
    result = restore(
        scene.repo,
        scene.cluster,
        scene.config,
        scene.workdir / f"restored-{workers}",
        Target.parse(None, None),
        start=True,
        log=lines.append,
        workers=workers,
    )
    try:
        assert contents(result.dsn()) == scene.contents
    finally:
        result.server.stop()
    # Progress is reported per part, pg_control's part after all the others.
    data_parts = len([p for p in scene.backup.parts if not p.control])
    assert len([x for x in lines if x.startswith("part ")]) == data_parts
    assert f"with {workers} workers" in next(x for x in lines if x.startswith("extracting"))
    shutil.rmtree(scene.workdir / f"restored-{workers}")


def test_a_missing_or_damaged_part_is_named_and_nothing_can_start(scene):
    backup, repo = scene.backup, scene.repo
    data = [p for p in backup.parts if not p.control]
    missing = repo.root / backup.objects[data[-1].name].key
    moved = scene.workdir / "moved-part"
    shutil.move(missing, moved)
    to = scene.workdir / "no-part"
    try:
        with pytest.raises(PgBackupError, match=f"lacks 1 of its parts \\({data[-1].name}\\)"):
            restore(repo, scene.cluster, scene.config, to, Target.parse(None, None), log=quiet)
        assert not any(to.iterdir())
    finally:
        shutil.move(moved, missing)

    damaged = repo.root / backup.objects[data[0].name].key
    original = damaged.read_bytes()
    flipped = bytearray(original)
    flipped[len(flipped) // 2] ^= 0x01
    damaged.write_bytes(bytes(flipped))
    to = scene.workdir / "damaged-part"
    try:
        key = backup.objects[data[0].name].key
        with pytest.raises(PgBackupError, match=f"{key} .*damaged.*nothing was restored"):
            restore(
                repo,
                scene.cluster,
                scene.config,
                to,
                Target.parse(None, None),
                log=quiet,
                workers=2,
            )
        assert not (to / "global" / "pg_control").exists() and not any(to.iterdir())
        # `pgbackup verify` names it too.
        proc = pgbackup("verify", config=scene.config)
        assert proc.returncode != 0 and key in proc.stdout + proc.stderr
    finally:
        damaged.write_bytes(original)


def test_a_restore_killed_half_way_cannot_start_and_a_forced_rerun_completes(scene):
    to = scene.workdir / "killed"
    # Killed (SIGKILL, with its tar processes) once every data part is extracted: only
    # pg_control's part, always the last, is missing.
    n = len([p for p in scene.backup.parts if not p.control])
    child = [sys.executable, "-m", "tests.faults.child", "restore_killed", str(scene.config)]
    proc = subprocess.run(
        [*child, str(to), f"{n}/{n}"], cwd=REPO_ROOT, capture_output=True, start_new_session=True
    )
    assert proc.returncode == -9, proc.stderr
    assert (to / "PG_VERSION").exists() and (to / "postgresql.conf").exists()
    assert not (to / "global" / "pg_control").exists()
    hand_over_tree(to)
    os.chmod(to, 0o700)
    # The server refuses to start: there is no pg_control.
    postgres = scene.primary.bindir / "postgres"
    tried = as_server_user(
        [str(postgres), "-D", str(to), "-p", str(free_port()), "-k", str(scene.workdir)],
        check=False,
        timeout=60,
    )
    assert tried.returncode != 0
    assert "pg_control" in tried.stderr + tried.stdout
    assert not (to / "postmaster.pid").exists()
    with pytest.raises(PgBackupError, match="not empty"):
        restore(scene.repo, scene.cluster, scene.config, to, Target.parse(None, None), log=quiet)
    result = restore(
        scene.repo,
        scene.cluster,
        scene.config,
        to,
        Target.parse(None, None),
        start=True,
        force=True,
        log=quiet,
    )
    try:
        assert contents(result.dsn()) == scene.contents
    finally:
        result.server.stop()
    shutil.rmtree(to)


def changed_files(old: BaseBackup, new: BaseBackup) -> set[str]:
    """The files of ``new`` whose size or checksum differs from ``old``'s (or that are new)."""
    before = {f[0]: f[1:] for p in old.parts for f in p.files}
    return {f[0] for p in new.parts for f in p.files if before.get(f[0]) != f[1:]}


def relation_files(cluster: LocalCluster, table: str) -> str:
    return sql(cluster, f"SELECT pg_relation_filepath('{table}')")[0][0]


def test_delta_restore_rewrites_only_what_changed_and_equals_a_full_restore(scene):
    stale = scene.workdir / "stale"
    restore(scene.repo, scene.cluster, scene.config, stale, Target.parse(None, None), log=quiet)
    (stale / "pg_wal" / "000000010000000000000099").write_bytes(b"old WAL")
    (stale / "base" / "stray-file").write_bytes(b"x")
    # A file of the unchanged table damaged in place, its size and mtime put back: the
    # restore record must not vouch for it (its ctime moved), so it is read and rewritten.
    cold_file = relation_files(scene.primary, "cold")
    damaged = stale / cold_file
    before = damaged.stat()
    with open(damaged, "r+b") as f:
        f.seek(8192 + 100)
        byte = f.read(1)
        f.seek(8192 + 100)
        f.write(bytes([byte[0] ^ 0xFF]))
    os.utime(damaged, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert damaged.stat().st_size == before.st_size
    assert damaged.stat().st_mtime_ns == before.st_mtime_ns
    # A few tables change; the big one does not.
    sql(scene.primary, "UPDATE hot SET v = md5(v)")
    sql(scene.primary, "DELETE FROM warm WHERE id % 2 = 0")
    sql(scene.primary, "CHECKPOINT")
    cfg = load_config(scene.config)
    newer = take_base_backup(
        scene.repo, cfg.cluster("main"), "2026-11-27", quiet, layout=cfg.base_backup
    )
    scene.primary.switch_wal_and_wait_archived()
    expected = contents(scene.primary.dsn())
    assert expected != scene.contents

    proc = pgbackup("restore", "--to", str(stale), "--delta", "--workers", "2", config=scene.config)
    assert proc.returncode == 0, proc.stderr
    delta_line = next(x for x in proc.stdout.splitlines() if x.strip().startswith("delta"))
    written = int(delta_line.split()[1].replace(",", ""))
    kept = int(delta_line.split()[4].replace(",", ""))
    vouched = int(delta_line.split()[6].strip("(").replace(",", ""))
    changed = changed_files(scene.backup, newer)
    # Exactly the files whose content differs are rewritten: those that changed between the
    # backups, pg_control (always), postgresql.auto.conf (the first restore added to it),
    # and the file damaged in place.
    assert cold_file not in changed
    assert written == len(changed | {"global/pg_control", "postgresql.auto.conf", cold_file})
    # Every kept file was vouched for by the first restore's record: none was read.
    assert vouched == kept > 0, delta_line
    total = sum(len(p.files) for p in newer.parts)
    assert written < total // 5, (written, total)
    assert relation_files(scene.primary, "hot") in changed
    assert relation_files(scene.primary, "cold") not in changed
    assert not (stale / "pg_wal" / "000000010000000000000099").exists()
    assert not (stale / "base" / "stray-file").exists()
    assert system_identifier(stale) == newer.system_identifier

    # The result is the same, file for file, as a full restore of the newer backup.
    full = scene.workdir / "full"
    restore(scene.repo, scene.cluster, scene.config, full, Target.parse(None, None), log=quiet)
    assert tree(stale) == tree(full)
    mismatched = [p for p in tree(full) if not filecmp.cmp(stale / p, full / p, shallow=False)]
    assert mismatched == []

    # And it starts, holding what the newer backup holds (restore handed it over: owning
    # it again would move every file's ctime, and the record would vouch for none).
    copy = LocalCluster(scene.workdir / ".stale.run", major=15, data=stale)
    copy.adopt(owned=True)
    copy.start()
    try:
        copy.wait_ready()
        assert contents(copy.dsn()) == expected
        sql(copy, "CREATE TABLE written_by_the_copy AS SELECT 1 AS x")
        sql(copy, "CHECKPOINT")
    finally:
        copy.stop(mode="immediate")

    # The copy ran: the files its server wrote are not the restored ones any more. A
    # delta restore reads them (the record vouches only for the others) and makes the copy
    # the backup again, file for file.
    again = restore(
        scene.repo,
        scene.cluster,
        scene.config,
        stale,
        Target.parse(None, None),
        log=quiet,
        delta=True,
    ).extracted
    assert 0 < again.files_vouched < again.files_kept
    assert again.files_written >= 2 and again.files_removed >= 1  # the new table's files
    assert tree(stale) == tree(full)
    mismatched = [p for p in tree(full) if not filecmp.cmp(stale / p, full / p, shallow=False)]
    assert mismatched == []
    shutil.rmtree(full)
    shutil.rmtree(stale)


def tree(root: Path) -> list[str]:
    return sorted(str(Path(d, f).relative_to(root)) for d, _, files in os.walk(root) for f in files)


def test_delta_refuses_another_cluster_and_a_folder_without_pg_control(scene, workdir):
    other = LocalCluster(workdir / "other")
    other.init(fast=True)
    with pytest.raises(PgBackupError, match="system identifier"):
        restore(
            scene.repo,
            scene.cluster,
            scene.config,
            other.data,
            Target.parse(None, None),
            log=quiet,
            delta=True,
        )
    assert (other.data / "global" / "pg_control").exists()  # untouched
    empty = workdir / "empty"
    empty.mkdir()
    (empty / "PG_VERSION").write_text("15\n")
    with pytest.raises(PgBackupError, match="--force"):
        restore(
            scene.repo,
            scene.cluster,
            scene.config,
            empty,
            Target.parse(None, None),
            log=quiet,
            delta=True,
        )


def test_parts_encrypted_by_the_age_command_or_by_pyrage_restore_alike(scene, monkeypatch):
    """The parts are encrypted by the age command where there is one, and by pyrage (the
    ``encoder`` module) where there is none; the restore decrypts both in its own process
    (``agefile``), and the age command opens both (the restores check every part's sha256
    and compare the rows)."""
    from pg_backup_assets.core.base import parts

    want = contents(scene.primary.dsn())
    newest = list_base_backups(scene.repo, "main")[-1]
    if shutil.which("age") is not None:  # the newest backup was written by the age command
        assert restored(scene, "by-command") == (newest.label, want)
    asked: list[str] = []

    def no_age() -> None:
        asked.append("age")
        return None

    monkeypatch.setattr(parts, "age_command", no_age)
    cfg = load_config(scene.config)
    encoded = take_base_backup(
        scene.repo, cfg.cluster("main"), "2026-11-28", quiet, layout=cfg.base_backup
    )
    scene.primary.switch_wal_and_wait_archived()
    assert len(asked) >= len(encoded.parts)
    monkeypatch.undo()
    assert restored(scene, "by-module") == (encoded.label, want)
    if shutil.which("age") is None:
        pytest.skip("the age command is not installed: its half of the exchange is untested")
    part = next(p for p in encoded.parts if not p.control)
    listing = subprocess.run(
        f"age -d -i {scene.workdir / 'age.key'} {scene.repo.root / encoded.objects[part.name].key}"
        " | zstd -d | tar -t",
        shell=True,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert {f[0] for f in part.files} <= set(listing)


def restored(scene: Scene, folder: str) -> tuple[str, dict[str, tuple[int, str]]]:
    """Restore the newest backup into ``folder``, start it: (its label, its tables)."""
    result = restore(
        scene.repo,
        scene.cluster,
        scene.config,
        scene.workdir / folder,
        Target.parse(None, None),
        start=True,
        log=quiet,
        workers=2,
    )
    try:
        return result.backup.label, contents(result.dsn())
    finally:
        result.server.stop()
        shutil.rmtree(scene.workdir / folder)


def test_a_single_stream_backup_still_restores(archiving, workdir):
    cluster, config = archiving
    config.write_text(config.read_text() + "base_backup: {layout: single}\n")
    sql(
        cluster,
        "CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 1000) g",
    )
    cfg = load_config(config)
    repo = Repository.from_config(cfg)
    backup = take_base_backup(repo, cfg.cluster("main"), DAY, quiet, layout=cfg.base_backup)
    cluster.switch_wal_and_wait_archived()
    assert set(backup.objects) == {"base.tar", "backup_manifest"} and not backup.parts
    [listed] = list_base_backups(repo, "main")
    assert listed.parts == ()
    result = restore(
        repo,
        cfg.cluster("main"),
        config,
        workdir / "r",
        Target.parse(None, None),
        start=True,
        log=quiet,
    )
    try:
        assert table_contents(result.dsn(), "t") == table_contents(cluster.dsn(), "t")
    finally:
        result.server.stop()
    with pytest.raises(PgBackupError, match="one stream"):
        restore(
            repo,
            cfg.cluster("main"),
            config,
            workdir / "r",
            Target.parse(None, None),
            log=quiet,
            delta=True,
        )
