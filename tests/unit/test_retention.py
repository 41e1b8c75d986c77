"""The retention planner, over ten simulated years of daily backups. The expected sets are
written from the calendar, not computed by the planner's rules."""

from __future__ import annotations

import datetime as dt

import pytest

from pg_backup_assets.core.config import Retention
from pg_backup_assets.core.retention.plan import BackupFacts, WalFacts, plan

FIRST, LAST = dt.date(2016, 11, 30), dt.date(2026, 11, 29)  # LAST is a Sunday
NOW = dt.datetime(2026, 11, 29, 23, 0, tzinfo=dt.UTC).timestamp()
POLICY = Retention(daily=14, weekly=8, monthly=12, yearly=7)
SEGMENTS_PER_DAY = 4


def days(first: dt.date = FIRST, last: dt.date = LAST) -> list[dt.date]:
    return [first + dt.timedelta(n) for n in range((last - first).days + 1)]


def promotions(all_days: list[dt.date]) -> dict[dt.date, dict[str, str]]:
    """What the tier assets did: after each complete window, its newest day was promoted."""
    tiers: dict[dt.date, dict[str, str]] = {d: {} for d in all_days}
    for d in all_days:
        nxt = d + dt.timedelta(1)
        if nxt > LAST:
            break  # the window of the last day is not over
        if nxt.weekday() == 6:  # d is a Saturday: a week (Sunday..Saturday) ended
            tiers[d]["weekly"] = (d - dt.timedelta(6)).isoformat()
        if nxt.day == 1:
            tiers[d]["monthly"] = f"{d:%Y-%m}-01"
        if nxt.month == 1 and nxt.day == 1:
            tiers[d]["yearly"] = f"{d:%Y}"
    return tiers


def history(all_days: list[dt.date] | None = None, verified=lambda d: True) -> list[BackupFacts]:  # noqa: ANN001
    all_days = all_days or days()
    tiers = promotions(all_days)
    out = []
    for i, d in enumerate(all_days):
        for kind in ("base", "dump"):
            out.append(
                BackupFacts(
                    key=f"main/{kind}/{d}/catalog.json",
                    kind=kind,
                    date=d.isoformat(),
                    label=f"{kind}-{d}",
                    verified=verified(d),
                    tiers=tiers[d],
                    start_segno=i * SEGMENTS_PER_DAY if kind == "base" else None,
                    stop_segno=i * SEGMENTS_PER_DAY + 1 if kind == "base" else None,
                    size_bytes=1000,
                )
            )
    return out


def wal(n_days: int) -> list[WalFacts]:
    return [
        WalFacts(f"main/wal/{s:024X}", s, f"{s:024X}", 100)
        for s in range(n_days * SEGMENTS_PER_DAY)
    ] + [WalFacts("main/wal/history/00000002.history", None, "00000002.history", 10)]


def kept_days(p, kind: str = "base") -> set[str]:  # noqa: ANN001
    return {d.backup.date for d in p.decisions if d.keep and d.backup.kind == kind}


# From the calendar (LAST = Sunday 2026-11-29; its week, month and year are not over).
DAILY = {d.isoformat() for d in days(dt.date(2026, 11, 16), LAST)}
WEEKLY = {"2026-11-28", "2026-11-21", "2026-11-14", "2026-11-07",
          "2026-10-31", "2026-10-24", "2026-10-17", "2026-10-10"}  # fmt: skip
MONTHLY = {"2026-10-31", "2026-09-30", "2026-08-31", "2026-07-31", "2026-06-30",
           "2026-05-31", "2026-04-30", "2026-03-31", "2026-02-28", "2026-01-31",
           "2025-12-31", "2025-11-30"}  # fmt: skip
YEARLY = {"2025-12-31", "2024-12-31", "2023-12-31", "2022-12-31", "2021-12-31", "2020-12-31",
          "2019-12-31"}  # fmt: skip


def test_ten_years_of_daily_backups_keep_exactly_the_gfs_set():
    p = plan(history(), wal(len(days())), POLICY, NOW)
    expected = DAILY | WEEKLY | MONTHLY | YEARLY
    assert kept_days(p, "base") == expected
    assert kept_days(p, "dump") == expected
    # 11-21 and 11-28 are daily and weekly, 10-31 weekly and monthly, 2025-12-31 monthly
    # and yearly.
    assert len(expected) == 14 + 6 + 11 + 6
    reasons = {d.backup.date: d.reasons for d in p.decisions if d.backup.kind == "base"}
    assert reasons["2026-11-29"] == ["daily 1 of 14", "the newest verified base backup"]
    assert reasons["2026-11-16"] == ["daily 14 of 14"]
    assert reasons["2026-10-31"] == ["weekly 2026-10-25", "monthly 2026-10-01"]
    assert reasons["2019-12-31"] == ["yearly 2019"]
    assert reasons["2018-12-31"] == ["expired: older than every tier keeps"]
    assert p.halted is None


def test_wal_is_kept_for_pitr_in_the_daily_window_and_for_each_kept_backups_consistency():
    all_days = days()
    p = plan(history(all_days), wal(len(all_days)), POLICY, NOW)
    index = {d.isoformat(): i for i, d in enumerate(all_days)}
    kept = {
        int(k.rsplit("/", 1)[1], 16) for r in p.wal if r.keep for k in r.keys if "history" not in k
    }
    daily_start = index["2026-11-16"] * SEGMENTS_PER_DAY
    # From the oldest daily backup's start to the end: every segment.
    assert all(s in kept for s in range(daily_start, len(all_days) * SEGMENTS_PER_DAY))
    # A yearly backup: its own start..stop, not the segments after it.
    y = index["2019-12-31"] * SEGMENTS_PER_DAY
    assert {y, y + 1} <= kept and y + 2 not in kept and y - 1 not in kept
    # The timeline history stays.
    assert any(r.keep and r.reason == "timeline history" for r in p.wal)
    expired = sum(r.objects for r in p.expired_wal)
    assert expired == len(all_days) * SEGMENTS_PER_DAY - len(kept)
    assert p.freed_bytes() == expired * 100 + 1000 * len(p.expired)


@pytest.mark.parametrize(
    "policy, more, fewer",
    [
        (Retention(daily=7, weekly=8, monthly=12, yearly=7), set(), {"2026-11-16", "2026-11-22"}),
        (
            Retention(daily=14, weekly=8, monthly=12, yearly=10),
            {"2016-12-31", "2017-12-31", "2018-12-31"},
            set(),
        ),
        (Retention(daily=14, weekly=2, monthly=12, yearly=7), set(), {"2026-11-14", "2026-10-24"}),
    ],
)
def test_policy_changes_shrink_or_grow_the_kept_set(policy, more, fewer):
    base = kept_days(plan(history(), [], POLICY, NOW))
    changed = kept_days(plan(history(), [], policy, NOW))
    assert more <= changed - base and fewer <= base - changed
    assert (changed - base) - more == set() and (base - changed) - fewer <= base - changed


def test_nothing_expires_while_the_newest_base_backup_is_unverified():
    p = plan(history(verified=lambda d: d != LAST), wal(len(days())), POLICY, NOW)
    assert not p.expired and not p.expired_wal
    assert "not verified yet" in p.halted and "base-2026-11-29" in p.halted


def test_nothing_expires_after_a_failed_rehearsal():
    p = plan(history(), wal(len(days())), POLICY, NOW, rehearsal_failed="table x differs")
    assert not p.expired and not p.expired_wal
    assert p.halted == "kept: the latest restore rehearsal failed (table x differs)"


def test_the_newest_verified_backup_is_kept_whatever_the_policy():
    p = plan(history(), [], Retention(daily=0, weekly=0, monthly=0, yearly=0), NOW)
    kept = [d for d in p.decisions if d.keep]
    assert [(d.backup.kind, d.backup.date, d.reasons) for d in kept] == [
        ("base", LAST.isoformat(), ["the newest verified base backup"])
    ]


def test_objects_locked_offsite_are_kept_until_the_lock_ends():
    backups = history()
    old = next(b for b in backups if b.date == "2018-06-01" and b.kind == "base")
    locked = BackupFacts(**{**old.__dict__, "locked_until": NOW + 86400 * 3})
    backups[backups.index(old)] = locked
    p = plan(backups, [], POLICY, NOW)
    decision = next(d for d in p.decisions if d.backup is locked)
    assert decision.keep and decision.reasons == ["locked offsite until 2026-12-02"]
    unlocked = BackupFacts(**{**old.__dict__, "locked_until": NOW - 1})
    backups[backups.index(locked)] = unlocked
    assert not next(
        d for d in plan(backups, [], POLICY, NOW).decisions if d.backup is unlocked
    ).keep


def test_the_repository_stays_flat_over_a_simulated_year():
    """Back up daily for two years, promote and expire as the schedules do: after the
    first year the count of backups stops growing."""
    held: list[BackupFacts] = []
    counts = []
    start = dt.date(2025, 1, 1)
    for n in range(730):
        day = start + dt.timedelta(n)
        held.append(BackupFacts(f"k/{day}", "base", day.isoformat(), f"b-{day}", True, {}))
        tomorrow = day + dt.timedelta(1)
        for tier, window, ended in (
            (
                "weekly",
                (day - dt.timedelta((day.weekday() + 1) % 7)).isoformat(),
                tomorrow.weekday() == 6,
            ),
            ("monthly", f"{day:%Y-%m}-01", tomorrow.day == 1),
            ("yearly", f"{day:%Y}", tomorrow.timetuple().tm_yday == 1),
        ):
            if ended:  # the window's newest held backup is promoted
                newest = max(held, key=lambda b: b.date)
                held[held.index(newest)] = BackupFacts(
                    **{**newest.__dict__, "tiers": {**newest.tiers, tier: window}}
                )
        now = dt.datetime.combine(tomorrow, dt.time(), dt.UTC).timestamp()
        p = plan(held, [], POLICY, now)
        held = [d.backup for d in p.decisions if d.keep]
        counts.append(len(held))
    second_year = counts[400:]
    assert max(second_year) <= 14 + 8 + 12 + 7
    assert max(second_year) - min(second_year) <= 5  # flat, give or take a window's edge
    # Only the yearly tier still grows (one per year, up to 7): day 729 holds at most one
    # more backup than day 400.
    assert counts[-1] <= counts[400] + 1
