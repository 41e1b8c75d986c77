"""Per-cluster locks: two base backups (or two dump sets) of one cluster never run at once.

A lock is an flock on ``<repository>/.locks/<cluster>.<operation>.lock`` (Barman keeps
lock files per server and operation the same way). The kernel releases it when its
holder dies, however it dies, so a killed run never leaves a lock behind; the file
says who holds it, for the message of whoever waits.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from pg_backup_assets.core.errors import PgBackupError
from pg_backup_assets.core.progress import Log

LOCKS = ".locks"


class LockTimeoutError(PgBackupError):
    """Another run of the same operation on the same cluster held the lock too long."""


@contextlib.contextmanager
def cluster_lock(
    root: Path, cluster: str, operation: str, wait_s: float, log: Log
) -> Iterator[None]:
    """Hold the lock for ``operation`` on ``cluster``, waiting up to ``wait_s`` for it."""
    folder = root / LOCKS
    folder.mkdir(mode=0o770, exist_ok=True)
    path = folder / f"{cluster}.{operation}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o660)
    try:
        deadline, said = time.monotonic() + wait_s, 0.0
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "unknown"
                now = time.monotonic()
                if now >= deadline:
                    raise LockTimeoutError(
                        f"another {operation} of cluster {cluster} is running ({holder}); this "
                        f"one waited {wait_s:.0f}s for it and did not start"
                    ) from None
                if now - said >= 60:
                    said = now
                    log(f"waiting for the {operation} of {cluster} that is running ({holder})")
                time.sleep(min(1.0, max(deadline - now, 0.01)))
        since = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {since}".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def is_held(path: Path) -> bool:
    """Does a live process hold an flock on ``path``? (False when the file is gone.)"""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
