"""Side-by-side benchmark: a restore rehearsal (``core/rehearsal/rehearse.py``) against
``pgbackrest restore`` of the same data.

The benchmark database of ``base_backup.py`` (its ``load``: pgbench tables plus random
``bytea``, archived by ``pgbackup wal-push`` and ``pgbackrest archive-push`` both), at a
smaller default scale. One base backup and one logical dump with ours, copied to an offsite
store (a second folder: ``offsite: {path: ...}``), and one ``pgbackrest backup
--type=full``. Then, alternating round by round (AB, BA, ...):

- ``pgbackrest restore --pg1-path=DIR`` into an empty folder, then starting that folder
  until it has recovered to the end of the archive and accepts writes;
- a full rehearsal, ``rehearse(config, "bench", week)``, phase by phase: its restore part
  (the ``restore`` call: fetch and extract from the offsite copy, then start until the
  restore point is reached and the server accepts writes) and its verification (the
  reference on the source, the checks of the copy, the dump restored and counted).

Run from the checkout (as root on Debian, so pgBackRest can be installed and PostgreSQL
can run as ``postgres``)::

    .venv/bin/python bench/rehearsal.py [--rounds 3] [--scale 20]

Raw results: ``bench/out/rehearsal-last.json``; the section ``## Restore rehearsal vs
pgBackRest restore`` of ``BENCHMARKS.md`` is rendered from that file alone
(``--render-only`` renders it again). How to read it: ``bench/README.md``. No timing
assertions: this measures, it does not judge.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import os
import shutil
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from base_backup import (
    GIB,
    PGBR_OPTIONS,
    empty_dir,
    engine_fingerprint,
    fingerprint,
    load,
    pgbr_sets,
    shown,
    source_settings,
    sync_all,
)
from common import (
    STANZA,
    BenchError,
    as_postgres,
    as_ratio,
    engine_note,
    finish,
    load_now,
    log,
    measured,
    mib,
    ours_conf,
    owned_dir,
    pgbackrest_cmd,
    pgbackrest_conf,
    postmaster_pid,
    quiet_options,
    report_head,
    report_options,
    require_server_user,
    rerender,
    run,
    run_with_pgbackrest,
    sql,
    table,
    tree_bytes,
    wait_idle,
)

import pg_backup_assets.core.rehearsal.rehearse as rehearse_module
from pg_backup_assets.core.base.backup import take_base_backup
from pg_backup_assets.core.config import load_config
from pg_backup_assets.core.dumps.dump import take_dump_set
from pg_backup_assets.core.offsite.copy import copy_set
from pg_backup_assets.core.offsite.store import offsite_repository
from pg_backup_assets.core.postgres.local_cluster import LocalCluster
from pg_backup_assets.core.rehearsal.rehearse import rehearse, week_of
from pg_backup_assets.core.storage.repository import Repository

NAME = "rehearsal"
HEADING = "## Restore rehearsal vs pgBackRest restore"
WHY = "a restore did not recover the source's rows, or a rehearsal did not pass"
TARGET = 1.1  # issue 11: the rehearsal's restore part within 1.1x of the plain restore
PGBR = "pgBackRest restore"
REH = "rehearsal"


# -- the CPU our own servers use ---------------------------------------------------------------
class ServerCpu:
    """CPU seconds of every PostgreSQL server whose data directory is under ``root`` (the
    benchmark's restored copies come and go while an operation runs, so a thread samples
    them every 0.2 s: the postmaster, its reaped children and its live children with
    theirs, e.g. the startup process with the restore_commands it ran)."""

    def __init__(self, root: Path, source: Path):
        self.root, self.source = str(root), str(source)
        self.seen: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> ServerCpu:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def total(self) -> float:
        return sum(self.seen.values())

    def _loop(self) -> None:
        while not self._stop.wait(0.2):
            self._sample()

    def _sample(self) -> None:
        tick = os.sysconf("SC_CLK_TCK")
        stats: dict[int, list[str]] = {}
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                try:
                    text = Path(f"/proc/{entry.name}/stat").read_text()
                except OSError:
                    continue
                stats[int(entry.name)] = text[text.rindex(")") + 2 :].split()
        masters = []
        for pid in stats:
            try:
                args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"-D" in args and args.index(b"-D") + 1 < len(args):
                data = args[args.index(b"-D") + 1].decode(errors="replace")
                mine = data.startswith(self.root) and not data.startswith(self.source)
                if mine and args[0].endswith(b"postgres"):
                    masters.append(pid)
        for pid in masters:
            cpu = sum(int(x) for x in stats[pid][11:15])
            cpu += sum(sum(int(x) for x in st[11:15]) for st in stats.values() if int(st[1]) == pid)
            self.seen[pid] = max(self.seen.get(pid, 0.0), cpu / tick)


def other_servers(now: dict[str, object], work: Path) -> list[str]:
    return sorted(s for s in now["postgres_servers"] if not s.startswith(str(work)))


def measured_op(
    label: str, rnd: int, work: Path, source: LocalCluster, fn: Callable[[], dict[str, Any]]
) -> dict[str, Any]:
    """Run ``fn`` (dirty pages flushed first); its phases, plus what else used the CPUs
    (not this process, its children, the source server or the restored servers)."""
    own = [pid for pid in [postmaster_pid(source)] if pid]
    sync_all()
    before = load_now(own)
    with ServerCpu(work, source.data) as servers:
        t0 = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - t0
    after = load_now(own)
    busy = after["busy_s"] - before["busy_s"]
    ours = after["ours_s"] - before["ours_s"] + servers.total()
    others = {*other_servers(before, work), *other_servers(after, work)}
    op = {
        "label": label,
        "round": rnd,
        "seconds": seconds,
        "foreign_cpu": max(busy - ours, 0.0) / seconds,
        "other_servers": len(others),
        **out,
    }
    log(f"  {label:<20} {seconds:7.2f} s  other CPU {op['foreign_cpu']:.2f}  {out['phases']}")
    return op


# -- the two operations ------------------------------------------------------------------------
def pgbr_restore(exe: str, conf: Path, work: Path, rnd: int, want: list[str]) -> dict[str, Any]:
    """``pgbackrest restore`` into an empty folder, then start it until it has recovered
    (to the end of the archive, pgBackRest's default) and accepts writes; rows checked
    after the clock stopped."""
    dest = empty_dir(work / f"pgbr-restore-{rnd}")
    cmd = pgbackrest_cmd(exe, conf, f"--pg1-path={dest}", "restore")
    server = LocalCluster(work / f"pgbr-run-{rnd}", data=dest)
    try:
        t0 = time.perf_counter()
        run(cmd, "pgbackrest restore", timeout=3600)
        t1 = time.perf_counter()
        server.adopt({"archive_mode": "off"}).start(timeout=3600)
        while sql(server, "SELECT pg_is_in_recovery()")[0][0]:
            time.sleep(0.2)
        t2 = time.perf_counter()
        got = fingerprint(server)
        return {
            "phases": {"total_s": t2 - t0, "restore_s": t1 - t0, "start_recover_s": t2 - t1},
            "bytes": tree_bytes(dest),
            "rows": "identical rows" if got == want else f"DIFFERENT: {got} vs {want}",
            "command": shown(cmd, DIR=dest, WORK=work) + "   # as postgres",
        }
    finally:
        server.stop(mode="immediate")
        shutil.rmtree(dest, ignore_errors=True)
        shutil.rmtree(server.base, ignore_errors=True)


def timed_restores() -> list[float]:
    """Time every ``restore`` call a rehearsal makes (its restore part, whole): the
    rehearsal module's ``restore`` wrapped, nothing else changed (benchmark only)."""
    calls: list[float] = []
    inner = rehearse_module.restore

    def timed(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            calls.append(time.perf_counter() - t0)

    rehearse_module.restore = timed
    return calls


def one_rehearsal(conf: Path, week: str, calls: list[float]) -> dict[str, Any]:
    cfg = load_config(conf)
    lines: list[str] = []
    calls.clear()
    report = rehearse(cfg, STANZA, week, log=lines.append)
    if len(calls) != 1:
        raise BenchError(f"expected one restore call in the rehearsal, saw {len(calls)}")
    p = report.phases
    restore_s = calls[0]
    return {
        "phases": {
            "reference_s": p.get("reference_s", 0.0),
            "ship_s": p.get("ship_s", 0.0),
            "restore_s": restore_s,
            "fetch_s": p.get("fetch_s", 0.0),
            "replay_s": p.get("replay_s", 0.0),
            "restore_rest_s": restore_s - p.get("fetch_s", 0.0) - p.get("replay_s", 0.0),
            "rto_s": report.rto_s or 0.0,
            "verify_s": p.get("verify_s", 0.0),
            "dump_restore_s": p.get("dump_restore_s", 0.0),
            "total_s": p.get("total_s", 0.0),
        },
        "bytes": report.restored_bytes,
        "passed": report.passed,
        "problems": report.problems,
        "tables": len(report.tables),
        "dump_tables": len(report.dump.get("tables", [])),
        "checks": [c["check"] for c in report.checks],
        "pinned": report.pinned,
        "backup": report.backup,
        "wal": report.wal,
        "wal_fetched_ahead": report.wal_fetched_ahead,
        "log": lines[-40:],
    }


# -- the benchmark -----------------------------------------------------------------------------
def bench(args: argparse.Namespace, exe: str, work: Path, cluster: LocalCluster) -> int:
    engine = engine_fingerprint()
    today = dt.datetime.now(dt.UTC).date()
    day, week = today.isoformat(), week_of(today)
    ours_repo = owned_dir(work / "ours-repo")
    offsite = owned_dir(work / "offsite")  # restore_command reads WAL there as postgres
    pgbr_repo = owned_dir(work / "pgbackrest-repo")
    conf = ours_conf(work / "ours.yaml", ours_repo, cluster, None)
    pgbr_conf = pgbackrest_conf(work / "pgbackrest.conf", pgbr_repo, work, cluster, PGBR_OPTIONS)
    settings, both = source_settings(exe, conf, pgbr_conf)
    cluster.init(settings, fast=True).start()
    own = [pid for pid in [postmaster_pid(cluster)] if pid]
    pg_version = sql(cluster, "SHOW server_version")[0][0]
    pgbr_version = run([*as_postgres(), exe, "version"], "pgbackrest version").stdout.strip()
    run(pgbackrest_cmd(exe, pgbr_conf, "stanza-create"), "pgbackrest stanza-create")
    run(pgbackrest_cmd(exe, pgbr_conf, "check"), "pgbackrest check")
    db = load(cluster, args.scale, args.random_share, 0)
    want = fingerprint(cluster)
    log(f"database: {db['db_bytes'] / GIB:.2f} GiB (pg_database_size)")
    # The rehearsal's config: the offsite store, and one smoke query besides the defaults
    # (row counts and digests of every table, pg_amcheck --heapallindexed, pg_checksums).
    # scratch_dir: short, since the scratch server's socket path must fit in 107 bytes
    # (under the repository's .staging folder in bench/out it would not).
    scratch = owned_dir(work / "s")
    with open(conf, "a") as f:
        f.write(
            f"offsite: {{path: {offsite}}}\nscratch_dir: {scratch}\n"
            "rehearsal:\n  queries:\n"
            "    - {database: postgres, sql: 'SELECT count(*) FROM pgbench_branches', "
            f"expect: '{args.scale}'}}\n"
        )
    cfg = load_config(conf)
    repo, off = Repository.from_config(cfg), offsite_repository(cfg)

    log("our base backup and dump, copied offsite; a pgBackRest full backup")
    setup: dict[str, float] = {}
    t0 = time.perf_counter()
    backup = take_base_backup(repo, cfg.cluster(STANZA), day, log=lambda m: None)
    setup["ours_backup_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    dumps = take_dump_set(repo, cfg.cluster(STANZA), day, log=lambda m: None)
    setup["ours_dump_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    copies = [
        copy_set(repo, off, backup.objects.values(), backup.catalog_key, backup.raw_bytes),
        copy_set(repo, off, [o.record for o in dumps.objects], dumps.catalog_key, 0),
    ]
    setup["offsite_copy_s"] = time.perf_counter() - t0
    bad = [m for c in copies for m in c.mismatches]
    if bad:
        raise BenchError(f"offsite copy: {bad}")
    t0 = time.perf_counter()
    run(pgbackrest_cmd(exe, pgbr_conf, "backup", "--type=full"), "pgbackrest backup", 3600)
    setup["pgbr_backup_s"] = time.perf_counter() - t0
    if len(pgbr_sets(pgbr_repo)) != 1:
        raise BenchError(f"expected one pgBackRest backup set: {pgbr_sets(pgbr_repo)}")
    sizes = {
        "ours_backup_bytes": tree_bytes(ours_repo / backup.prefix),
        "pgbr_backup_bytes": tree_bytes(pgbr_repo / "backup" / STANZA / pgbr_sets(pgbr_repo)[0]),
    }

    calls = timed_restores()
    ops: list[dict[str, Any]] = []
    waits: list[dict[str, Any]] = []
    commands: dict[str, str] = {}
    for rnd in range(-args.warmup, args.rounds):
        t0 = time.monotonic()
        now = wait_idle(args.wait_idle, str(cluster.data), args.max_busy, own)
        waits.append({"round": rnd, "waited_s": time.monotonic() - t0})
        if other_servers(now, work):
            waits[-1]["other_servers"] = other_servers(now, work)
        log(f"round {rnd + 1}/{args.rounds}" if rnd >= 0 else "warm-up round (not counted)")
        order = (PGBR, REH) if rnd % 2 == 0 else (REH, PGBR)
        for label in order:
            if label == PGBR:
                go = functools.partial(pgbr_restore, exe, pgbr_conf, work, rnd, want)
                op = measured_op(label, rnd, work, cluster, go)
                commands[PGBR] = op.pop("command")
            else:
                go = functools.partial(one_rehearsal, conf, week, calls)
                op = measured_op(label, rnd, work, cluster, go)
            ops.append(op)

    problems = [
        f"round {o['round']}: {PGBR}: {o['rows']}"
        for o in ops
        if o["label"] == PGBR and o["rows"] != "identical rows"
    ] + [
        f"round {o['round']}: rehearsal: {p}"
        for o in ops
        if o["label"] == REH
        for p in (o["problems"] or ([] if o["passed"] else ["did not pass"]))
    ]
    report = {
        **report_head(work),
        "pg_version": pg_version,
        "pgbackrest_version": pgbr_version,
        "rounds": args.rounds,
        "warmup": args.warmup,
        "target": TARGET,
        "engine": engine,
        "engine_changed_during_run": engine != engine_fingerprint(),
        "database": db,
        "setup": setup,
        "sizes": sizes,
        "ops": ops,
        "waits": waits,
        "max_busy": args.max_busy,
        "wait_idle": args.wait_idle,
        "loadavg_end": os.getloadavg(),
        "commands": commands,
        "ours_yaml": conf.read_text().replace(str(work), "WORK"),
        "pgbackrest_conf": pgbr_conf.read_text().replace(str(work), "WORK"),
        "archive_command": both.replace(str(work), "WORK"),
        "problems": problems,
    }
    return finish(NAME, HEADING, render, report, WHY, args.no_report)


# -- the report --------------------------------------------------------------------------------
ROWS = (  # (label, phase key, how to name it)
    (PGBR, "total_s", "**pgBackRest: restore, then start until recovered**"),
    (PGBR, "restore_s", "  `pgbackrest restore` into an empty folder"),
    (PGBR, "start_recover_s", "  start until recovered and accepting writes"),
    (REH, "restore_s", "**rehearsal: restore part** (its `restore` call)"),
    (REH, "fetch_s", "  fetch and extract from the offsite copy (`fetch_s`)"),
    (REH, "restore_rest_s", "  checks, `sync -f`, `chown`, recovery settings"),
    (REH, "replay_s", "  start until the restore point is reached (`replay_s`)"),
    (REH, "rto_s", "rehearsal's RTO (`fetch_s` + `replay_s`)"),
    (REH, "verification_s", "**rehearsal: verification**"),
    (REH, "reference_s", "  reference on the source (`reference_s`)"),
    (REH, "verify_s", "  checks of the copy (`verify_s`)"),
    (REH, "dump_restore_s", "  dump restored and counted (`dump_restore_s`)"),
    (REH, "ship_s", "rehearsal: WAL switch, archived, shipped (`ship_s`)"),
    (REH, "total_s", "whole rehearsal (`total_s`)"),
)


def counted(ops: list[dict], label: str) -> list[dict]:
    return [o for o in ops if o["label"] == label and o["round"] >= 0]


def value(op: dict, key: str) -> float:
    if key == "verification_s":
        return sum(op["phases"][k] for k in ("reference_s", "verify_s", "dump_restore_s"))
    return op["phases"][key]


def segment_number(name: str) -> int:
    """The position of a WAL file in its timeline (16 MiB segments: 256 per log)."""
    return int(name[8:16], 16) * 0x100 + int(name[16:24], 16)


def render(r: dict) -> str:
    """The report, from the raw results alone (how to read it: bench/README.md)."""
    ops, db = r["ops"], r["database"]
    base = statistics.median(value(o, "total_s") for o in counted(ops, PGBR))
    rows = []
    medians: dict[str, float] = {}
    for label, key, name in ROWS:
        xs = [value(o, key) for o in counted(ops, label)]
        med = statistics.median(xs)
        medians[f"{label}:{key}"] = med
        bold = key == "restore_s" and label == REH
        rows.append(
            (
                name,
                len(xs),
                f"{med:.2f}",
                f"{min(xs):.2f}–{max(xs):.2f}",
                as_ratio(med / base, bold),
            )
        )
    ratio = medians[f"{REH}:restore_s"] / base
    per_round = [
        value(b, "restore_s") / value(a, "total_s")
        for a in counted(ops, PGBR)
        for b in counted(ops, REH)
        if a["round"] == b["round"]
    ]
    reh = counted(ops, REH)
    every = [o for o in ops if o["round"] >= 0]
    other = [o["other_servers"] for o in every]
    foreign_mean = statistics.fmean(o["foreign_cpu"] for o in every)
    rel = db["relations"]
    pgbench_bytes = sum(v for k, v in rel.items() if k.startswith("pgbench_"))
    verdict = "met" if ratio <= r["target"] else "missed"
    first, last = reh[-1]["wal"]
    segments = segment_number(last) - segment_number(first) + 1
    waited = sum(w["waited_s"] for w in r["waits"])
    return "\n".join(
        [
            HEADING,
            "",
            measured(
                r,
                "bench-rehearsal",
                f"PostgreSQL {r['pg_version']}, {r['pgbackrest_version']}, Python "
                f"{r['machine']['python']}",
            ),
            "",
            *table(
                ("what (medians over the rounds)", "runs", "median s", "min–max s", "÷ pgBackRest"),
                rows,
            ),
            "",
            f"- Target (issue 11): the rehearsal's restore part ≤ {r['target']:.1f}× the "
            f"plain restore: {as_ratio(ratio, True)}, **{verdict}** (per round: "
            + ", ".join(as_ratio(x) for x in per_round)
            + f"); the rehearsal's own RTO (`fetch_s` + `replay_s`) "
            f"{as_ratio(medians[f'{REH}:rto_s'] / base)}. Verification, extra: "
            f"{medians[f'{REH}:verification_s']:.2f} s (median).",
            f"- Database: {db['db_bytes'] / GIB:.2f} GiB: pgbench (`-s {db['scale']}`) "
            f"{mib(pgbench_bytes)}, random rows {mib(rel.get('noise', 0))}; data directory "
            f"without `pg_wal` {mib(db['data_dir_bytes'])}. One backup stored: ours "
            f"{mib(r['sizes']['ours_backup_bytes'])} (offsite copy: a second folder on the "
            f"same disk), pgBackRest {mib(r['sizes']['pgbr_backup_bytes'])}.",
            f"- Every rehearsal passed: {all(o['passed'] for o in reh)}; "
            f"{reh[-1]['tables']} tables compared (rows and digests), "
            f"{reh[-1]['dump_tables']} in the dump; checks: "
            f"{', '.join(sorted(set(reh[-1]['checks'])))}. Every pgBackRest restore held the "
            f"source's rows: {all(o['rows'] == 'identical rows' for o in counted(ops, PGBR))}.",
            f"- WAL the last rehearsal's restore replayed: {segments} segments ({first} to "
            f"{last}); {reh[-1].get('wal_fetched_ahead', 0)} WAL files taken from the "
            "restore's spool (fetched from the offsite store ahead of replay, two at a time), "
            "anything else by a `pgbackup wal-fetch` process each (pgBackRest's: "
            "`pgbackrest archive-get`).",
            f"- {r['rounds']} rounds, alternating (AB, BA, ...) after {r['warmup']} warm-up "
            f"round(s); other processes used {foreign_mean:.2f} CPUs on average during the "
            f"runs, {max(o['foreign_cpu'] for o in every):.2f} at "
            f"most; other PostgreSQL servers running: up to {max(other)}; {waited:.0f} s "
            f"waited for quiet (at most {r['wait_idle']:.0f} s a round).",
            engine_note(r),
            "",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3, help="rounds, each tool once (default 3)")
    p.add_argument("--warmup", type=int, default=0, help="uncounted rounds first (default 0)")
    p.add_argument("--scale", type=int, default=20, help="pgbench -i scale (default 20)")
    p.add_argument(
        "--random-share",
        type=float,
        default=0.4,
        help="share of the database that is random bytea (default 0.4, as bench-base)",
    )
    quiet_options(p, 120)
    report_options(p)
    p.add_argument("--keep", action="store_true", help="keep the scratch folder in bench/out")
    args = p.parse_args(argv)
    if args.render_only:
        return rerender(NAME, HEADING, render, WHY, args.no_report)
    if args.rounds < 3 and not args.no_report:
        p.error("--rounds must be at least 3 for a report (or pass --no-report)")
    require_server_user(p)
    return run_with_pgbackrest(NAME, args, bench)


if __name__ == "__main__":
    sys.exit(main())
