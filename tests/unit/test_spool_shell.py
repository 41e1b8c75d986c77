"""The shell check in an async archive_command: it may answer 0 without an interpreter only
when the spool's status vouches for the very file PostgreSQL asks to archive, as the
Python call's ``is_durable`` would; in every other case it goes on to ``wal-push``."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from pg_backup_assets.core.wal import spool as sp

NAME = "000000010000000000000007"
FALLBACK = "exit 7"  # stands for `exec pgbackup ... wal-push %p`


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path, Path]:
    wal = tmp_path / "data" / "pg_wal"
    wal.mkdir(parents=True)
    (wal / NAME).write_bytes(b"w" * 4096)
    repo, spool = tmp_path / "repo", tmp_path / "spool"
    (repo / "main/wal/0000000100000000").mkdir(parents=True)
    spool.mkdir()
    key = f"main/wal/0000000100000000/{NAME}-{'a' * 64}.zst"
    (repo / key).write_bytes(b"z" * 100)
    ident = sp.identity(os.stat(wal / NAME))
    (spool / f"{NAME}.ok").write_text(sp.ok_text(key, 100, ident) + "\n")
    return tmp_path / "data", repo, spool


def archive(data: Path, repo: Path, spool: Path) -> int:
    """Run the command as PostgreSQL does: sh -c, in the data directory, %p and %f filled."""
    command = re.sub(
        "%[pf%]",
        lambda m: {"%p": f"pg_wal/{NAME}", "%f": NAME, "%%": "%"}[m.group()],
        sp.done_check_shell(str(spool), str(repo)) + FALLBACK,
    )
    return subprocess.run(["sh", "-c", command], cwd=data, check=False).returncode


def test_a_file_the_pusher_made_durable_is_answered_by_the_shell(setup):
    assert archive(*setup) == 0
    # The same answer as the Python call would give.
    data, repo, spool = setup
    text = (spool / f"{NAME}.ok").read_text().strip()
    assert sp.is_durable(str(repo), text, sp.identity(os.stat(data / "pg_wal" / NAME)))


def test_no_status_goes_on_to_wal_push(setup):
    data, repo, spool = setup
    (spool / f"{NAME}.ok").unlink()
    assert archive(data, repo, spool) == 7


def test_another_file_under_the_name_goes_on_to_wal_push(setup):
    data, repo, spool = setup
    segment = data / "pg_wal" / NAME
    segment.unlink()
    segment.write_bytes(b"x" * 4096)  # same size, a new inode and times
    assert archive(data, repo, spool) == 7


def test_a_touched_file_goes_on_to_wal_push(setup):
    data, repo, spool = setup
    st = os.stat(data / "pg_wal" / NAME)
    os.utime(data / "pg_wal" / NAME, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert archive(data, repo, spool) == 7


def test_an_object_gone_or_of_another_size_goes_on_to_wal_push(setup):
    data, repo, spool = setup
    [obj] = (repo / "main/wal/0000000100000000").iterdir()
    obj.write_bytes(b"z" * 99)
    assert archive(data, repo, spool) == 7
    obj.unlink()
    assert archive(data, repo, spool) == 7


@pytest.mark.parametrize("key", ["../outside", "main/../../outside", "/outside", ""])
def test_a_key_outside_the_repository_goes_on_to_wal_push(setup, key):
    data, repo, spool = setup
    (repo.parent / "outside").write_bytes(b"o" * 100)  # the right size, not in the repository
    ident = sp.identity(os.stat(data / "pg_wal" / NAME))
    (spool / f"{NAME}.ok").write_text(f"{key} 100 {ident}\n")
    assert archive(data, repo, spool) == 7
