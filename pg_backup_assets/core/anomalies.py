"""Size anomaly detection: a backup that shrinks or grows far beyond its history."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class SizeVerdict:
    ok: bool
    message: str
    median_bytes: int | None
    ratio: float | None


def size_anomaly(
    current: int, history: Sequence[int], low: float = 0.5, high: float = 2.0
) -> SizeVerdict:
    """Compare a backup's size with the median of its recent history (last 7)."""
    recent = list(history)[-7:]
    if not recent:
        return SizeVerdict(True, "no earlier backups to compare with", None, None)
    median = statistics.median(recent)
    if median <= 0:
        return SizeVerdict(True, "earlier backups are empty; nothing to compare", int(median), None)
    ratio = current / median
    compared = (
        f"{current} bytes is {ratio:.0%} of the median {int(median)} of the last {len(recent)}"
    )
    if ratio < low:
        return SizeVerdict(False, f"{compared}: shrank", int(median), ratio)
    if ratio > high:
        return SizeVerdict(False, f"{compared}: grew", int(median), ratio)
    return SizeVerdict(True, compared, int(median), ratio)


def daily_history(items: Sequence[tuple[str, int]], before: str) -> list[int]:
    """Sizes of the newest backup of each day before ``before``, oldest day first.

    ``items`` are (day, size) pairs, oldest first, so the last one of a day wins.
    """
    by_day: dict[str, int] = {}
    for day, size in items:
        if day < before:
            by_day[day] = size
    return [by_day[d] for d in sorted(by_day)]
