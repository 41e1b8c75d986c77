"""Progress of long work, reported as log lines: one way for dumps, backups and restores."""

from __future__ import annotations

import time
from collections.abc import Callable

Log = Callable[[str], None]


class ProgressLog:
    """Called with the bytes done so far; logs a line at most every ``every_s`` seconds."""

    def __init__(self, log: Log, what: str, total_bytes: int | None = None, every_s: float = 10):
        self.log, self.what, self.total, self.every_s = log, what, total_bytes, every_s
        self.last = time.monotonic()

    def __call__(self, done_bytes: int) -> None:
        now = time.monotonic()
        if now - self.last >= self.every_s:
            self.last = now
            self.log(self.describe(done_bytes))

    def describe(self, done_bytes: int) -> str:
        done = f"{done_bytes / 2**20:,.0f}"
        if self.total:
            share = min(done_bytes / self.total, 1)
            return f"{self.what}: {done} of {self.total / 2**20:,.0f} MiB ({share:.0%})"
        return f"{self.what}: {done} MiB so far"


def throughput_mib_s(raw_bytes: int, seconds: float) -> float:
    """The one meaning of ``throughput_mib_s`` in metadata: raw (uncompressed) MiB per second."""
    return round(raw_bytes / 2**20 / max(seconds, 1e-3), 2)
