"""The shell side of an async archive_command (``archive_done.sh``): it may answer 0
without an interpreter only when the spool's status vouches for the very file PostgreSQL
asks to archive, as the Python call's ``is_durable`` would; it waits a while for a running
pusher; in every other case it runs the command after its arguments (``wal-push``)."""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest

from pg_backup_assets.core.wal import spool as sp

NAME = "000000010000000000000007"
FALLBACK = "sh -c 'exit 7'"  # stands for `pgbackup ... wal-push %p`


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path, Path]:
    wal = tmp_path / "data" / "pg_wal"
    wal.mkdir(parents=True)
    (wal / NAME).write_bytes(b"w" * 4096)
    repo, spool = tmp_path / "repo", tmp_path / "spool"
    (repo / "main/wal/0000000100000000").mkdir(parents=True)
    spool.mkdir()
    (repo / key_of()).write_bytes(b"z" * 100)
    write_ok(tmp_path / "data", spool)
    return tmp_path / "data", repo, spool


def key_of() -> str:
    return f"main/wal/0000000100000000/{NAME}-{'a' * 64}.zst"


def write_ok(data: Path, spool: Path, key: str | None = None) -> None:
    ident = sp.identity(os.stat(data / "pg_wal" / NAME))
    key = key_of() if key is None else key
    sp.write_status(str(spool), NAME, "ok", sp.ok_text(key, 100, ident))


def command(repo: Path, spool: Path) -> str:
    """The archive_command as PostgreSQL runs it: %p, %f and %% filled in."""
    fill = {"%p": f"pg_wal/{NAME}", "%f": NAME, "%%": "%"}
    line = sp.done_check_command(str(spool), str(repo), FALLBACK)
    return re.sub("%[pf%]", lambda m: fill[m.group()], line)


def archive(data: Path, repo: Path, spool: Path) -> int:
    return subprocess.run(["sh", "-c", command(repo, spool)], cwd=data, check=False).returncode


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
    obj = repo / key_of()
    obj.write_bytes(b"z" * 99)
    assert archive(data, repo, spool) == 7
    obj.unlink()
    assert archive(data, repo, spool) == 7


@pytest.mark.parametrize("key", ["../outside", "main/../../outside", "/outside", ""])
def test_a_key_outside_the_repository_goes_on_to_wal_push(setup, key):
    data, repo, spool = setup
    (repo.parent / "outside").write_bytes(b"o" * 100)  # the right size, not in the repository
    write_ok(data, spool, key)
    assert archive(data, repo, spool) == 7


class FakePusher:
    """What the shell sees of a running pusher: its lock held, its wake FIFO read, and its
    done FIFO held open, a byte written into it for each push it finishes. ``done=False``:
    a pusher from before the done FIFO."""

    def __init__(self, spool: Path, done: bool = True):
        os.mkfifo(spool / sp.WAKE)
        self.rfd = os.open(spool / sp.WAKE, os.O_RDONLY | os.O_NONBLOCK)
        self.dfd = None
        if done:
            os.mkfifo(spool / sp.DONE)
            self.dfd = os.open(spool / sp.DONE, os.O_RDWR | os.O_NONBLOCK)
        self.lock = os.open(spool / sp.LOCK, os.O_RDWR | os.O_CREAT)
        fcntl.flock(self.lock, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def poked(self) -> bool:
        try:
            return bool(os.read(self.rfd, 4096))
        except BlockingIOError:
            return False

    def finished(self) -> None:
        """A push finished (this call's file or another one)."""
        os.write(self.dfd, b".")

    def close(self) -> None:
        if self.lock < 0:
            return
        os.close(self.lock)  # the lock first, as pusher.main does
        if self.dfd is not None:
            os.close(self.dfd)
        os.close(self.rfd)
        self.lock = -1


@pytest.fixture
def pusher(setup: tuple[Path, Path, Path]):  # noqa: ANN201
    """A running (fake) pusher, and no status yet for the file."""
    (setup[2] / f"{NAME}.ok").unlink()
    running = FakePusher(setup[2])
    yield running
    running.close()


def later(seconds: float, action) -> threading.Thread:  # noqa: ANN001
    t = threading.Thread(target=lambda: (time.sleep(seconds), action()))
    t.start()
    return t


def timed_archive(data: Path, repo: Path, spool: Path) -> tuple[int, float]:
    t0 = time.monotonic()
    rc = archive(data, repo, spool)
    return rc, time.monotonic() - t0


def test_a_running_pusher_is_poked_and_waited_for(setup, pusher):
    data, repo, spool = setup
    # Another file finished first: the call reads that byte and goes on waiting.
    other = later(0.2, pusher.finished)
    done = later(0.5, lambda: (write_ok(data, spool), pusher.finished()))
    assert archive(data, repo, spool) == 0  # the .ok came while the shell waited
    other.join()
    done.join()
    assert pusher.poked()


def test_the_wait_sleeps_in_a_read_not_in_clock_ticks(setup, pusher):
    """Between two finished pushes the waiting call runs no process but one ``timeout``
    and its ``dd``, sleeping in a read of the done FIFO (no ``sleep`` ticks)."""
    data, repo, spool = setup
    done = later(1.0, lambda: (write_ok(data, spool), pusher.finished()))
    proc = subprocess.Popen(["sh", "-c", command(repo, spool)], cwd=data)
    time.sleep(0.5)
    below = descendants(proc.pid)
    assert proc.wait(timeout=5) == 0
    done.join()
    assert [c for c in below if c != "sh"] == ["timeout", "dd"], below


def test_a_call_that_waits_runs_few_commands(setup, pusher, tmp_path):
    """PostgreSQL runs the call once per WAL file, and under load every process of it takes
    CPU from the pusher: a call whose push finishes second (another one first) runs one
    flock (no command under it), one dd to poke, and per wait a timeout and its dd,
    counted through wrappers on PATH (the script before this ran 10 commands here)."""
    data, repo, spool = setup
    bin_dir, log = tmp_path / "bin", tmp_path / "ran"
    bin_dir.mkdir()
    for name in ("stat", "flock", "dd", "timeout", "true", "sleep"):
        real = shutil.which(name)
        (bin_dir / name).write_text(f'#!/bin/sh\necho {name} >>{log}\nexec {real} "$@"\n')
        (bin_dir / name).chmod(0o755)
    other = later(0.3, pusher.finished)
    mine = later(0.8, lambda: (write_ok(data, spool), pusher.finished()))
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    proc = subprocess.run(["sh", "-c", command(repo, spool)], cwd=data, env=env, check=False)
    other.join()
    mine.join()
    assert proc.returncode == 0
    ran = log.read_text().split()
    # (The .ok comes with the second byte: only then is there a file to stat.)
    assert ran == ["flock", "dd", "timeout", "dd", "timeout", "dd", "stat"], ran


def descendants(pid: int) -> list[str]:
    """The commands of every process below ``pid``, parents first."""
    rows = subprocess.run(
        ["ps", "-e", "-o", "pid=,ppid=,comm="], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    children: dict[int, list[tuple[int, str]]] = {}
    for row in rows:
        child, parent, comm = row.split(None, 2)
        children.setdefault(int(parent), []).append((int(child), comm.strip()))
    out, todo = [], [pid]
    while todo:
        for child, comm in children.get(todo.pop(0), []):
            out.append(comm)
            todo.append(child)
    return out


def test_a_push_that_failed_goes_on_to_wal_push_at_once(setup, pusher):
    data, repo, spool = setup
    failed = later(
        0.2,
        lambda: (sp.write_status(str(spool), NAME, "error", "x\nrepo full"), pusher.finished()),
    )
    # (Had the shell waited on past the error, this .ok would have made it answer 0.)
    retried = later(1.0, lambda: (write_ok(data, spool), pusher.finished()))
    assert archive(data, repo, spool) == 7  # wal-push reports the pusher's reason
    failed.join()
    retried.join()


def test_without_a_running_pusher_wal_push_starts_one_at_once(setup):
    data, repo, spool = setup
    (spool / f"{NAME}.ok").unlink()
    os.mkfifo(spool / sp.WAKE)  # left by an earlier pusher; its lock is free
    os.mkfifo(spool / sp.DONE)
    (spool / sp.LOCK).touch()
    # (Had the shell waited, this .ok would have made it answer 0.)
    written = later(1.0, lambda: write_ok(data, spool))
    assert archive(data, repo, spool) == 7
    written.join()
    # The shell's look at the lock left it free for the pusher wal-push starts.
    fd = os.open(spool / sp.LOCK, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.close(fd)


def test_a_pusher_that_dies_meanwhile_is_left_to_wal_push_to_replace(setup, pusher):
    data, repo, spool = setup
    died = later(0.2, pusher.close)  # its lock and its end of the done FIFO go with it
    # (Had the shell waited on for the dead pusher, this .ok would have made it answer 0.)
    written = later(1.5, lambda: write_ok(data, spool))
    assert archive(data, repo, spool) == 7  # at once, not after QUIET seconds
    died.join()
    written.join()


def test_a_pusher_that_finishes_nothing_for_two_seconds_is_left_to_wal_push(setup, pusher):
    data, repo, spool = setup
    # (Had the shell waited on, this .ok would have made it answer 0.)
    written = later(3.5, lambda: (write_ok(data, spool), pusher.finished()))
    rc, took = timed_archive(data, repo, spool)
    assert rc == 7
    assert took >= 1.9  # QUIET seconds; had it waited past 3.5 s, the .ok made it 0
    written.join()


def test_a_pusher_without_the_done_fifo_is_left_to_wal_push(setup):
    """A pusher started by an older version (no done FIFO): wal-push waits for it."""
    data, repo, spool = setup
    (spool / f"{NAME}.ok").unlink()
    pusher = FakePusher(spool, done=False)
    try:
        written = later(1.0, lambda: write_ok(data, spool))
        assert archive(data, repo, spool) == 7
        written.join()
        assert not (spool / sp.DONE).exists()
    finally:
        pusher.close()
