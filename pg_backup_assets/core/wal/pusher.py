"""The background pusher of asynchronous archiving (``archive: {async: true}``).

Started by an archive_command call (``core/wal/spool.py``) as the server's OS user, with
the spool's lock inherited; one per cluster. It pushes every WAL file PostgreSQL has marked
ready (``pg_wal/archive_status/<name>.ready``) that has no status yet, oldest first, with
``archive.parallel`` workers, each through ``push()`` (content-addressed, atomic, fsynced,
header and system identifier checked), and writes ``<name>.ok`` only once ``push()``
returned, i.e. once the object is durable, or ``<name>.error`` with the reason. Statuses
of files that are no longer ready (PostgreSQL marked them done) are removed.

It stops when there has been nothing to do for ``IDLE_S`` seconds (at once when the server
is gone), and after its pushes in flight when the config file changes (the next call
starts a pusher with the new settings, or pushes itself when async is off). Killed at any
moment, it leaves no partial object (``push()`` writes a temporary and renames it) and no
status for what it did not finish: the next call sees that the lock is free and starts a
new pusher, which pushes that file again.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import select
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor

from pg_backup_assets.core import config_cache
from pg_backup_assets.core.errors import PgBackupError
from pg_backup_assets.core.wal import spool as sp
from pg_backup_assets.core.wal.archive import push

IDLE_S = 10.0  # nothing to do for this long: stop (the next call starts a new pusher)
TICK_S = 1.0  # at least this often: look at the config file, the server and pg_wal


def log(message: str) -> None:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    print(f"{stamp} pusher {os.getpid()}: {message}", flush=True)


class Pusher:
    def __init__(self, settings: config_cache.WalSettings, cluster: str, wal_dir: str):
        self.settings, self.cluster, self.wal_dir = settings, cluster, wal_dir
        self.status_dir = os.path.join(wal_dir, "archive_status")
        self.data_dir = os.path.dirname(wal_dir)
        self.spool = settings.spool(cluster)
        self.repo = sp.repository(settings)
        self.config_stamp = _stamp(settings.config)
        self.pushed = self.failed = 0
        self.done_fd: int | None = None

    def run(self) -> int:
        wake, done = (os.path.join(self.spool, n) for n in (sp.WAKE, sp.DONE))
        for fifo in (wake, done):
            if not os.path.exists(fifo):
                os.mkfifo(fifo, 0o600)
        # Reading end for the waits; a writing end of our own, so the FIFO never reads as
        # closed, through which the workers also say "done".
        rfd = os.open(wake, os.O_RDONLY | os.O_NONBLOCK)
        wfd = os.open(wake, os.O_WRONLY | os.O_NONBLOCK)
        # Held open (read-write: never blocks) while this pusher runs: a byte per finished
        # push for the calls waiting in a read of it (closed by main(), after the lock).
        self.done_fd = dfd = os.open(done, os.O_RDWR | os.O_NONBLOCK)
        parallel = self.settings.parallel
        log(f"started for cluster {self.cluster} ({parallel} workers, {self.wal_dir})")
        swept = self._sweep_temporary()
        if swept:
            log(f"removed {swept} unfinished status file(s) of an earlier pusher")
        in_flight: dict[str, Future[None]] = {}
        idle_since = time.monotonic()
        stopping = ""
        with ThreadPoolExecutor(parallel, thread_name_prefix="push") as workers:
            while True:
                for name in [n for n, f in in_flight.items() if f.done()]:
                    in_flight.pop(name).result()
                stopping = stopping or self._reason_to_stop()
                ready = self._ready()
                statuses = self._statuses()
                for name in statuses.keys() - set(ready) - in_flight.keys():
                    sp.discard(self.spool, name)  # done by PostgreSQL: forget it
                busy = in_flight.keys() | statuses.keys()
                todo = [] if stopping else [n for n in ready if n not in busy]
                for name in todo[: max(parallel - len(in_flight), 0)]:
                    in_flight[name] = workers.submit(self._push, name)
                    # "Done" once the future is: a poke sent from inside the push could
                    # wake this loop while the future still counts as running.
                    in_flight[name].add_done_callback(lambda _f: (_poke(wfd), _poke(dfd)))
                now = time.monotonic()
                if in_flight or todo:
                    idle_since = now
                elif stopping or not self._server_runs():
                    break
                elif now - idle_since >= IDLE_S:
                    stopping = f"nothing to do for {IDLE_S:.0f}s"
                    break
                if select.select([rfd], [], [], TICK_S)[0]:
                    with contextlib.suppress(BlockingIOError):
                        os.read(rfd, 4096)
        os.close(rfd)
        os.close(wfd)
        log(
            f"stopped ({stopping or 'the server is gone'}): {self.pushed} pushed, "
            f"{self.failed} failed"
        )
        return 0

    def _push(self, name: str) -> None:
        path = os.path.join(self.wal_dir, name)
        before = ""
        try:
            before = sp.identity(os.stat(path))
            pushed = push(self.repo, self.cluster, path, hash_aside=False)
            after = sp.identity(os.stat(path))
            if before != after:
                log(f"{name} changed while it was pushed; pushing it again")
                return
            ok = sp.ok_text(pushed.key, pushed.stored_bytes, after)
            sp.write_status(self.spool, name, "ok", ok)
            self.pushed += 1
        except Exception as exc:  # every failure becomes that file's status
            reason = _one_line(exc)
            if not os.path.exists(os.path.join(self.status_dir, f"{name}.ready")):
                return  # PostgreSQL is done with it (or it vanished): nothing to report
            sp.write_status(self.spool, name, "error", sp.error_text(before, reason))
            self.failed += 1
            log(f"{name}: {reason}")

    def _ready(self) -> list[str]:
        """Files marked ready, in PostgreSQL's order: timeline histories first, then by name."""
        try:
            names = [n[:-6] for n in os.listdir(self.status_dir) if n.endswith(".ready")]
        except FileNotFoundError:
            return []
        return sorted(names, key=lambda n: (not n.endswith(".history"), n))

    def _statuses(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for entry in os.listdir(self.spool):
            name, dot, kind = entry.rpartition(".")
            if dot and kind in ("ok", "error"):
                out[name] = kind
        return out

    def _sweep_temporary(self) -> int:
        """Remove the temporary status files (``<name>.<kind>.tmp-<pid>``) a pusher killed
        mid-write left: only the lock's holder writes statuses, so none is in use."""
        swept = 0
        for entry in os.listdir(self.spool):
            if ".tmp-" in entry:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(self.spool, entry))
                    swept += 1
        return swept

    def _reason_to_stop(self) -> str:
        if not os.path.isdir(self.status_dir):
            return f"{self.status_dir} is gone"
        if _stamp(self.settings.config) != self.config_stamp:
            return f"{self.settings.config} changed"
        return ""

    def _server_runs(self) -> bool:
        """Is the server of this data directory up? (Without one, nothing new gets ready:
        no reason to linger.)"""
        try:
            with open(os.path.join(self.data_dir, "postmaster.pid")) as f:
                pid = int(f.readline())
            os.kill(pid, 0)
        except PermissionError:
            return True
        except (OSError, ValueError):
            return False
        return True


def _poke(wfd: int) -> None:
    with contextlib.suppress(OSError):  # full: the loop has been woken enough
        os.write(wfd, b".")


def _stamp(path: str) -> tuple[int, int] | None:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return None
    return config_cache.stamp(data)


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, PgBackupError):
        text = " ".join(str(exc).split())
    elif isinstance(exc, OSError) and exc.strerror:
        text = f"wal-push: {exc.strerror}" + (f" ({exc.filename})" if exc.filename else "")
    else:
        text = f"wal-push: internal error: {type(exc).__name__}: {exc}"
    return " ".join(text.split())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="pgbackup-pusher", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True)
    p.add_argument("--cluster", required=True)
    p.add_argument("--wal-dir", required=True, help="the data directory's pg_wal")
    p.add_argument("--lock-fd", type=int, help="the spool's lock, taken by the caller")
    args = p.parse_args(argv)
    try:
        settings = config_cache.load(args.config)
        cluster = settings.cluster(args.cluster)
        spool = settings.spool(cluster)
        fd = args.lock_fd
        if fd is None:  # started by hand: take the lock, or leave it to the one running
            os.makedirs(spool, mode=0o750, exist_ok=True)
            fd = os.open(os.path.join(spool, sp.LOCK), os.O_RDWR | os.O_CREAT, 0o640)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log("another pusher runs for this cluster")
                return 0
        wal_dir = os.path.abspath(args.wal_dir)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {wal_dir}\n".encode())  # who holds it, for which pg_wal
        pusher = Pusher(settings, cluster, wal_dir)
        try:
            return pusher.run()
        finally:
            # The lock first: a call whose read of "done" ends then finds no pusher running,
            # and has wal-push start the next one at once.
            os.close(fd)
            if pusher.done_fd is not None:
                os.close(pusher.done_fd)
    except PgBackupError as exc:
        log(f"cannot run: {_one_line(exc)}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
