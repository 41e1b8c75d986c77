"""The retention planner: a pure function from what the repository holds, the policy and
the state of verification and rehearsals to a decision for every backup and every WAL
object, each with its reasons. Nothing here reads or deletes anything.

The rules, in the order they protect:

- Nothing expires while the newest base backup is unverified or the latest rehearsal
  failed: a failing pipeline must not eat its own history.
- The newest verified base backup is always kept.
- A backup whose offsite objects are under Object Lock is kept until the lock ends.
- ``daily N``: every backup taken on one of the N most recent days that have a backup of
  its kind; ``weekly N`` / ``monthly N`` / ``yearly N``: the backups promoted to that tier
  for the N most recent windows that have one. (Counted in days and windows that have
  backups, so a pipeline that stopped for a month keeps its last N, not nothing.)
- WAL: everything from the start of the oldest base backup of the daily window onward
  (point-in-time recovery across the daily window), and each older kept base backup's own
  start-to-stop range (so that it can reach consistency). Timeline histories are kept.
"""

from __future__ import annotations

import bisect
import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from pg_backup_assets.core.config import Retention

TIERS = ("weekly", "monthly", "yearly")


@dataclass(frozen=True)
class BackupFacts:
    """What the planner needs to know of one backup (a base backup or a dump set)."""

    key: str  # its catalog key
    kind: str  # "base" or "dump"
    date: str  # the day (partition) it belongs to
    label: str
    verified: bool
    tiers: dict[str, str] = field(default_factory=dict)  # tier -> window, e.g. weekly: 2026-11-22
    start_segno: int | None = None  # base backups: first and last WAL segment they need
    stop_segno: int | None = None
    locked_until: float | None = None  # offsite Object Lock: not deletable before then
    size_bytes: int = 0


@dataclass(frozen=True)
class WalFacts:
    key: str
    segno: int | None  # None: a timeline history (always kept)
    name: str
    size_bytes: int = 0


@dataclass
class Decision:
    backup: BackupFacts
    keep: bool
    reasons: list[str]


@dataclass
class WalRange:
    first: str
    last: str
    objects: int
    bytes: int
    keep: bool
    reason: str
    keys: list[str] = field(repr=False, default_factory=list)


@dataclass
class Plan:
    decisions: list[Decision]
    wal: list[WalRange]
    halted: str | None = None  # why nothing expires at all, when that is the case

    @property
    def expired(self) -> list[Decision]:
        return [d for d in self.decisions if not d.keep]

    @property
    def expired_wal(self) -> list[WalRange]:
        return [r for r in self.wal if not r.keep]

    def freed_bytes(self) -> int:
        return sum(d.backup.size_bytes for d in self.expired) + sum(
            r.bytes for r in self.expired_wal
        )


def plan(
    backups: Sequence[BackupFacts],
    wal: Sequence[WalFacts],
    policy: Retention,
    now: float,
    rehearsal_failed: str | None = None,
) -> Plan:
    """Decide, for every backup and WAL object, keep or expire, and why."""
    reasons: dict[str, list[str]] = {b.key: [] for b in backups}
    base = sorted((b for b in backups if b.kind == "base"), key=lambda b: (b.date, b.label))
    halted = _halted(base, rehearsal_failed)
    for kind in ("base", "dump"):
        mine = [b for b in backups if b.kind == kind]
        _daily(mine, policy.daily, reasons)
        for tier in TIERS:
            _tier(mine, tier, getattr(policy, tier), reasons)
    verified = [b for b in base if b.verified]
    if verified:
        reasons[verified[-1].key].append("the newest verified base backup")
    for b in backups:
        if b.locked_until is not None and b.locked_until > now:
            until = dt.datetime.fromtimestamp(b.locked_until, dt.UTC).date().isoformat()
            reasons[b.key].append(f"locked offsite until {until}")
    decisions = []
    for b in backups:
        why = reasons[b.key]
        if halted:
            decisions.append(Decision(b, True, [*why, halted] if why else [halted]))
        elif why:
            decisions.append(Decision(b, True, why))
        else:
            decisions.append(Decision(b, False, ["expired: older than every tier keeps"]))
    kept_base = [d.backup for d in decisions if d.keep and d.backup.kind == "base"]
    daily_base = [b for b in kept_base if any(r.startswith("daily ") for r in reasons[b.key])]
    # Point-in-time recovery from the oldest daily backup on; with no daily tier, from the
    # newest kept backup on (the archive's head is never expired).
    pitr_from = daily_base or sorted(kept_base, key=lambda b: b.start_segno or 0)[-1:]
    return Plan(decisions, _wal(wal, kept_base, pitr_from, halted), halted)


def _halted(base: Sequence[BackupFacts], rehearsal_failed: str | None) -> str | None:
    if base and not base[-1].verified:
        return f"kept: the newest base backup ({base[-1].label}) is not verified yet"
    if rehearsal_failed:
        return f"kept: the latest restore rehearsal failed ({rehearsal_failed})"
    return None


def daily_window(dates: Iterable[str], n: int) -> list[str]:
    """The days the daily tier keeps: the ``n`` most recent days that have a backup,
    newest first. The WAL checks use it too: point-in-time recovery is promised from the
    oldest base backup of this window on."""
    return sorted(set(dates), reverse=True)[:n]


def _daily(backups: Sequence[BackupFacts], n: int, reasons: dict[str, list[str]]) -> None:
    days = daily_window((b.date for b in backups), n)
    rank = {day: i + 1 for i, day in enumerate(days)}
    for b in backups:
        if b.date in rank:
            reasons[b.key].append(f"daily {rank[b.date]} of {n}")


def _tier(backups: Sequence[BackupFacts], tier: str, n: int, reasons: dict[str, list[str]]) -> None:
    windows = sorted({b.tiers[tier] for b in backups if tier in b.tiers}, reverse=True)[:n]
    keep = set(windows)
    for b in backups:
        if b.tiers.get(tier) in keep:
            reasons[b.key].append(f"{tier} {b.tiers[tier]}")


def _wal(
    wal: Sequence[WalFacts],
    kept_base: Sequence[BackupFacts],
    daily_base: Sequence[BackupFacts],
    halted: str | None,
) -> list[WalRange]:
    """Kept segment ranges, as (first segno, last segno or None for "to the end", why)."""
    needs: list[tuple[int, float, str]] = []
    if daily_base:
        oldest = min(daily_base, key=lambda b: b.start_segno or 0)
        needs.append(
            (oldest.start_segno or 0, float("inf"), "needed for PITR across the daily window")
        )
    for b in kept_base:
        if b.start_segno is not None and b.stop_segno is not None:
            needs.append((b.start_segno, b.stop_segno, f"needed by {b.label} to be consistent"))
    # Disjoint intervals, each with the reason of the first range that covers it.
    cover: list[tuple[int, float, str]] = []
    for start, stop, reason in sorted(needs):
        if cover and start <= cover[-1][1]:
            if stop > cover[-1][1]:
                cover.append((int(cover[-1][1]) + 1, stop, reason))
        else:
            cover.append((start, stop, reason))
    starts = [c[0] for c in cover]

    def why_kept(segno: int) -> str | None:
        if halted:
            return halted
        if not kept_base:
            return "kept: no base backup is kept to anchor it"
        i = bisect.bisect_right(starts, segno) - 1
        if i >= 0 and segno <= cover[i][1]:
            return cover[i][2]
        return None

    ranges: list[WalRange] = []
    for obj in sorted(wal, key=lambda o: (o.segno if o.segno is not None else -1, o.name)):
        reason = "timeline history" if obj.segno is None else why_kept(obj.segno)
        keep = reason is not None
        reason = reason or "expired: needed by no kept backup"
        last = ranges[-1] if ranges else None
        if last is not None and last.keep == keep and last.reason == reason:
            last.last, last.objects, last.bytes = (
                obj.name,
                last.objects + 1,
                last.bytes + obj.size_bytes,
            )
            last.keys.append(obj.key)
        else:
            ranges.append(WalRange(obj.name, obj.name, 1, obj.size_bytes, keep, reason, [obj.key]))
    return ranges
