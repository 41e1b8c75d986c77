"""How the retention planner scales: planning over 10 years of daily backups and their WAL,
then 10× and 100× as many backups and segments. Pure computation (no server, no disk): the
same facts ``expire`` gathers, built in memory. Raw results: bench/out/retention-last.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import itertools
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import finish, machine, report_options, rerender, table  # noqa: E402

from pg_backup_assets.core.config import Retention  # noqa: E402
from pg_backup_assets.core.retention.plan import BackupFacts, WalFacts, plan  # noqa: E402

NAME = "retention"
HEADING = "## Retention planning: 10 years of daily backups, and 10× and 100× that"
POLICY = Retention(daily=14, weekly=8, monthly=12, yearly=7)
SEGMENTS_PER_BACKUP = 8  # WAL between two backups


def facts(n_backups: int) -> tuple[list[BackupFacts], list[WalFacts], float]:
    """``n_backups`` base backups and as many dump sets, ``n_backups`` days apart being
    ``n_backups / 3650`` a day, promoted as the tier assets would, and their WAL."""
    per_day = max(1, n_backups // 3650)
    last = dt.date(2026, 11, 29)
    backups, wal = [], []
    for i in range(n_backups):
        day = last - dt.timedelta(days=(n_backups - 1 - i) // per_day)
        nxt = day + dt.timedelta(1)
        tiers = {}
        if (i + 1) % per_day == 0 and nxt <= last:  # the day's newest backup
            if nxt.weekday() == 6:
                tiers["weekly"] = (day - dt.timedelta(6)).isoformat()
            if nxt.day == 1:
                tiers["monthly"] = f"{day:%Y-%m}-01"
            if nxt.month == 1 and nxt.day == 1:
                tiers["yearly"] = f"{day:%Y}"
        for kind in ("base", "dump"):
            start = i * SEGMENTS_PER_BACKUP if kind == "base" else None
            backups.append(
                BackupFacts(
                    f"main/{kind}/{day}/{i}/catalog.json",
                    kind,
                    day.isoformat(),
                    f"{kind}-{i}",
                    True,
                    tiers,
                    start,
                    start + 1 if start is not None else None,
                    None,
                    1 << 20,
                )
            )
        wal += [
            WalFacts(f"main/wal/{s:024X}", s, f"{s:024X}", 1 << 24)
            for s in range(i * SEGMENTS_PER_BACKUP, (i + 1) * SEGMENTS_PER_BACKUP)
        ]
    now = dt.datetime.combine(last, dt.time(23), dt.UTC).timestamp()
    return backups, wal, now


def bench(args: argparse.Namespace) -> int:
    rows = []
    for scale in args.scales:
        backups, wal, now = facts(3650 * scale)
        times = []
        for _ in range(args.repeat):
            gc.collect()
            t0 = time.perf_counter()
            p = plan(backups, wal, POLICY, now)
            times.append(time.perf_counter() - t0)
        rows.append(
            {
                "scale": scale,
                "backups": len(backups),
                "wal_objects": len(wal),
                "median_s": statistics.median(times),
                "min_s": min(times),
                "kept": sum(1 for d in p.decisions if d.keep),
                "expired": len(p.expired),
                "halted": p.halted,
            }
        )
        print(rows[-1], file=sys.stderr)
    report = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "repeat": args.repeat,
        "rows": rows,
        # A plan that halted (an unverified newest backup) would measure nothing of worth.
        "problems": [f"scale {r['scale']}: {r['halted']}" for r in rows if r["halted"]],
    }
    return finish(NAME, HEADING, render, report, "a check of the run failed", args.no_report)


def render(r: dict) -> str:
    m = r["machine"]
    per = [x["median_s"] / (x["backups"] + x["wal_objects"]) for x in r["rows"]]
    lines = [
        HEADING,
        "",
        f"Measured {r['date']} by `make bench-retention` on {m['nproc']} CPUs ({m['cpu']}), "
        f"Python {m['python']}; median of {r['repeat']} plans each.",
        "",
        *table(
            [
                "scale",
                "backups + dump sets",
                "WAL objects",
                "plan (median)",
                "per object",
                "vs 1× per object",
                "kept",
                "expired",
            ],
            [
                (
                    f"{x['scale']}×",
                    f"{x['backups']:,}",
                    f"{x['wal_objects']:,}",
                    f"{x['median_s'] * 1000:,.0f} ms",
                    f"{p * 1e6:.2f} µs",
                    f"{p / per[0]:.2f}×",
                    f"{x['kept']:,}",
                    f"{x['expired']:,}",
                )
                for x, p in zip(r["rows"], per, strict=True)
            ],
        ),
        "",
        _growth(r["rows"]),
        "",
    ]
    return "\n".join(lines)


def _growth(rows: list[dict]) -> str:
    """How the time grows with the objects, step by step, from the numbers alone."""
    steps = []
    for a, b in itertools.pairwise(rows):
        objects = (b["backups"] + b["wal_objects"]) / (a["backups"] + a["wal_objects"])
        steps.append(
            f"from {a['scale']}× to {b['scale']}× the objects grow {objects:,.0f}× and the "
            f"time {b['median_s'] / a['median_s']:,.1f}×"
        )
    return (
        f"Ten years of daily backups plan in {rows[0]['median_s'] * 1000:,.0f} ms; "
        + "; ".join(steps)
        + " (linear: the same factor; see bench/README.md for the step where the objects "
        "outgrow the CPU caches)."
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--scales", type=int, nargs="+", default=[1, 10, 100])
    p.add_argument("--repeat", type=int, default=5)
    report_options(p)
    args = p.parse_args(argv)
    if args.render_only:
        return rerender(NAME, HEADING, render, "a check of the run failed", args.no_report)
    return bench(args)


if __name__ == "__main__":
    sys.exit(main())
