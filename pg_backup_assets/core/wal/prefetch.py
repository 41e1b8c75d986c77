"""Fetch the WAL a starting restore will replay before the server asks for it.

PostgreSQL runs ``restore_command`` once per WAL file, serially, and waits for each: one
``pgbackup wal-fetch`` process per 16 MiB segment costs an interpreter start, the imports
and a decode before replay can go on. A restore that starts the server knows which
segments it needs (the backup's start up to the target, along the newest timeline's
history), so this process fetches them ahead, in parallel, into a spool folder beside the
data directory, and the server's ``restore_command`` becomes a shell ``mv`` from there
(``spool_restore_command``) that falls back to ``wal-fetch`` for anything not spooled.

The spool changes nothing that recovery decides: a file is put there only once it decoded
to the sha256 its archive name records, under a temporary name renamed into place, so
``mv`` never sees half a file; anything that fails here (missing, damaged, unreachable)
is simply not spooled, and the fallback ``wal-fetch`` meets the same fault and reports it
as it always does. The spool holds at most ``queue`` files not yet taken by the server.

One answer comes from the listing the restore planned with: a ``.history`` file it did not
hold is "not archived" without a ``wal-fetch`` (PostgreSQL probes for a newer timeline at
the start and the end of recovery). The restore follows the timelines that were archived
when it began, as it chose its backup and checked its WAL from that listing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path

from pg_backup_assets.core.storage.repository import Repository
from pg_backup_assets.core.wal.archive import (
    ArchiveListing,
    WalObject,
    command_word,
    read_checked,
)
from pg_backup_assets.core.wal.names import Segment, parse_segment, timeline_of

# pgBackRest's archive-get queue holds 128 MiB by default; 16 segments is 256 MiB.
DEFAULT_QUEUE = 16


def wal_to_replay(listing: ArchiveListing, start_lsn: int, end_lsn: int | None) -> list[WalObject]:
    """The archived WAL files a recovery from ``start_lsn`` asks for, in the order it asks:
    the newest timeline's ``.history`` file, then each segment along that timeline's
    ancestry up to the one holding ``end_lsn`` (None: the newest archived one). Segments
    not archived are left out (the restore's own checks refuse a gap before this runs)."""
    size = listing.segment_size
    if size is None or not listing.segments:
        return []
    target = listing.newest_timeline
    path = list(listing.histories.get(target, []))
    by_name = {o.name: o for o in listing.segments}
    wanted: list[WalObject] = []
    history = f"{target:08X}.history"
    wanted += [o for o in listing.history_files if o.name == history][:1]
    newest = max(parse_segment(o.name, size).segno for o in listing.segments)
    last = newest if end_lsn is None else min(newest, end_lsn // size)
    for segno in range(start_lsn // size, last + 1):
        name = Segment(timeline_of(segno, path, target, size), segno).name(size)
        if name in by_name:
            wanted.append(by_name[name])
    return wanted


def absent_histories(listing: ArchiveListing) -> list[str]:
    """The ``.history`` files a recovery probes for that the archive does not hold:
    timeline 1's (there is none) up to the one after the newest (PostgreSQL looks for a
    newer timeline at the start and at the end of recovery)."""
    held = {o.name for o in listing.history_files}
    names = (f"{tl:08X}.history" for tl in range(1, listing.newest_timeline + 2))
    return [n for n in names if n not in held]


def spool_restore_command(spool: Path, fallback: str) -> str:
    """A ``restore_command`` that takes a spooled file, says "not archived" for a
    ``.history`` file the spool lists as absent, and runs ``fallback`` for anything else.
    A spooled file that cannot be moved is fatal (126): "not archived" (1) would end
    recovery early."""
    d = command_word(str(spool))
    return (
        f'if [ -f {d}/%f ]; then mv -f {d}/%f "%p" || exit 126; '
        f"elif [ -f {d}/{ABSENT}/%f ]; then exit 1; else {fallback}; fi"
    )


ABSENT = ".absent"  # <spool>/.absent/NAME: a .history file not archived when listed


class Prefetcher:
    """Fetch ``wanted`` into ``spool`` with ``workers`` threads, in order, keeping at most
    ``queue`` files there that the server has not taken yet. ``own`` (a path -> None
    callable) gives each file to the server's OS user before it is renamed into place;
    ``absent`` names the ``.history`` files to answer "not archived" for.

    Use as a context manager: leaving it stops the threads and removes the spool."""

    def __init__(
        self,
        repo: Repository,
        wanted: list[WalObject],
        spool: Path,
        workers: int = 2,
        queue: int = DEFAULT_QUEUE,
        own: Callable[[Path], None] | None = None,
        absent: list[str] = (),
    ):
        self.repo = repo
        self.wanted = wanted
        self.spool = spool
        self.workers = max(1, workers)
        self.queue = max(1, queue)
        self.own = own
        self.absent = list(absent)
        self.fetched: list[str] = []  # names put in the spool
        self.failed: dict[str, str] = {}  # name -> why it was not (wal-fetch will say it)
        self.untaken: list[str] = []  # spooled, but the server never asked for them
        self._next = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> Prefetcher:
        self.spool.mkdir(parents=True, exist_ok=True)
        self.spool.chmod(0o700)
        if self.own is not None:
            self.own(self.spool)
        absent = self.spool / ABSENT
        absent.mkdir(exist_ok=True)
        for name in self.absent:
            (absent / name).touch()
        for i in range(min(self.workers, len(self.wanted))):
            t = threading.Thread(target=self._work, name=f"wal-prefetch-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()
        with contextlib.suppress(OSError):
            self.untaken = sorted(e.name for e in os.scandir(self.spool) if e.name in self.fetched)
        shutil.rmtree(self.spool, ignore_errors=True)

    @property
    def taken(self) -> int:
        """How many spooled files the server took (known once the spool is closed)."""
        return len(self.fetched) - len(self.untaken)

    def _take(self) -> WalObject | None:
        with self._lock:
            if self._next >= len(self.wanted):
                return None
            obj = self.wanted[self._next]
            self._next += 1
            return obj

    def _waiting(self) -> int:
        """Files in the spool the server has not taken yet."""
        try:
            return sum(1 for e in os.scandir(self.spool) if not e.name.startswith("."))
        except OSError:
            return 0

    def _work(self) -> None:
        while not self._stop.is_set():
            while self._waiting() >= self.queue:
                if self._stop.wait(0.02):
                    return
            obj = self._take()
            if obj is None:
                return
            self._fetch(obj)

    def _fetch(self, obj: WalObject) -> None:
        tmp = self.spool / f".{obj.name}.tmp"
        try:
            with open(tmp, "wb") as out:
                read_checked(self.repo, obj, out)
            tmp.chmod(0o600)
            if self.own is not None:
                self.own(tmp)
            # No fsync: the spool is a cache. A file lost in a crash is fetched again.
            os.replace(tmp, self.spool / obj.name)
            with self._lock:
                self.fetched.append(obj.name)
        except Exception as exc:  # noqa: BLE001 - wal-fetch meets it again and reports it
            with self._lock:
                self.failed[obj.name] = f"{type(exc).__name__}: {exc}"
            with contextlib.suppress(OSError):
                tmp.unlink()
