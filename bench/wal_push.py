"""Side-by-side benchmark: ``pgbackup wal-push`` against pgBackRest's synchronous ``archive-push``.

Both tools push the same real 16 MiB WAL segments, one fresh process per segment (that is
how PostgreSQL's ``archive_command`` calls them), as the ``postgres`` OS user, into
separate repositories on the same disk, with zstd level 3. Three passes over the same
segments, each alternating two variants per segment (AB on even segments, BA on odd ones,
so drift in the machine's speed cancels out) and each into fresh repositories:

1. ours against pgBackRest (the comparison);
2. ours plain against ours age-encrypted (pgBackRest has no age);
3. ours with its bytecode cached against ours compiling its own modules on every call.

Afterwards every stored object is counted and decoded back to the original bytes; only
then are the numbers reported.

Run from the checkout (as root on Debian, so pgBackRest can be installed and PostgreSQL
can run as ``postgres``)::

    .venv/bin/python bench/wal_push.py [--segments 40]

The raw results go to ``bench/out/wal_push-last.json``; the section ``## wal-push vs
pgBackRest archive-push`` of ``BENCHMARKS.md`` is rendered from that file alone (tables;
how to read them: ``bench/README.md``), printed, and replaces the old one.
``--render-only`` renders it again without measuring. There are no timing assertions:
this measures, it does not judge.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import importlib.util
import io
import json
import os
import pwd
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyrage
import zstandard
from common import (
    PGBACKUP,
    PYTHON,
    ROOT,
    ZSTD_LEVEL,
    BenchError,
    as_postgres,
    as_ratio,
    files_under,
    finish,
    foreign_cpu,
    load_now,
    log,
    machine,
    measured,
    mib,
    ours_conf,
    owned_dir,
    pgbackrest_cmd,
    pgbackrest_conf,
    pgbench,
    report_options,
    rerender,
    run,
    run_with_pgbackrest,
    sha256_file,
    sql,
    switch_and_wait,
    table,
    timed,
    tool_env,
    tree_bytes,
    wait_idle,
)

from pg_backup_assets.core.postgres.local_cluster import SERVER_USER, LocalCluster

NAME = "wal_push"
HEADING = "## wal-push vs pgBackRest archive-push"
WHY = "a variant did not store every segment intact"
SEGMENT = re.compile(r"^[0-9A-F]{24}$")
SEG_BYTES = 16 << 20

PGBR = "pgBackRest archive-push"
OURS = "pgbackup wal-push"
OURS_AGE = "pgbackup wal-push, age"
OURS_NOPYC = "pgbackup wal-push, no .pyc"
PASSES = ((OURS, PGBR), (OURS, OURS_AGE), (OURS, OURS_NOPYC))


# -- ours ----------------------------------------------------------------------------------
def ours_cmd(conf: Path, segment: Path) -> list[str]:
    return [*as_postgres(), str(PGBACKUP), "--config", str(conf), "wal-push", str(segment)]


def wal_push_available() -> bool:
    proc = subprocess.run(
        [str(PGBACKUP), "wal-push", "--help"], capture_output=True, check=False, cwd=ROOT
    )
    return proc.returncode == 0


def stale_bytecode() -> list[str]:
    """Modules of the checkout whose ``__pycache__`` .pyc is missing or older than the
    source: ``postgres`` compiles those from source on every call (it cannot write there)."""
    stale = []
    for src in sorted((ROOT / "pg_backup_assets").rglob("*.py")):
        pyc = Path(importlib.util.cache_from_source(str(src)))
        try:
            head = pyc.read_bytes()[:16]
        except OSError:
            stale.append(str(src.relative_to(ROOT)))
            continue
        st = src.stat()
        flags, mtime, size = (int.from_bytes(head[i : i + 4], "little") for i in (4, 8, 12))
        if flags != 0 or mtime != int(st.st_mtime) & 0xFFFFFFFF or size != st.st_size & 0xFFFFFFFF:
            stale.append(str(src.relative_to(ROOT)))
    return stale


def checkout_has_bytecode() -> bool:
    return any((ROOT / "pg_backup_assets").rglob("*.pyc"))


# -- real WAL ------------------------------------------------------------------------------
def archived(archive: Path) -> list[str]:
    return sorted(p.name for p in archive.iterdir() if SEGMENT.match(p.name))


def generate_wal(cluster: LocalCluster, archive: Path, want: int, scale: int) -> dict[str, int]:
    """Load the cluster until at least ``want`` completed segments sit in ``archive``.

    pgbench -i (compressible: fillers, index builds), rounds of pgbench transactions (page
    images and small updates) and random bytea rows (incompressible), interleaved so that
    segments picked evenly across the archive see all three.
    """
    stats = {"scale": scale, "rounds": 0, "tx_seconds_per_round": 10, "random_mib_per_round": 32}
    log(f"pgbench -i -s {scale}")
    pgbench(cluster, "-i", "-q", "-s", str(scale))
    sql(
        cluster,
        "CREATE EXTENSION IF NOT EXISTS pgcrypto",
        "CREATE TABLE noise (id bigserial PRIMARY KEY, payload bytea)",
    )
    rows = stats["random_mib_per_round"] * 1024  # 1 KiB of random bytes per row
    while True:
        stats["rounds"] += 1
        pgbench(cluster, "-n", "-c", "4", "-j", "4", "-T", str(stats["tx_seconds_per_round"]))
        sql(
            cluster,
            "INSERT INTO noise (payload) SELECT gen_random_bytes(1024) "
            f"FROM generate_series(1, {rows})",
        )
        switch_and_wait(cluster)
        have = len(archived(archive))
        log(f"round {stats['rounds']}: {have} segments archived")
        if have >= want and stats["rounds"] >= 3:
            stats["archived"] = have
            return stats


def pick_evenly(items: Sequence[str], n: int) -> list[str]:
    if len(items) < n:
        raise BenchError(f"only {len(items)} segments to choose from, need {n}")
    if n == 1:
        return [items[len(items) // 2]]
    return [items[round(i * (len(items) - 1) / (n - 1))] for i in range(n)]


# -- verification --------------------------------------------------------------------------
def unzstd(data: bytes) -> bytes:
    return zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read()


@dataclass
class Stored:
    objects: int = 0
    object_bytes: int = 0
    repo_files: int = 0
    repo_bytes: int = 0
    other_files: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def verify_ours(repo: Path, segments: dict[str, Path], identity: object | None) -> Stored:
    """Each segment stored exactly once as ``<segment>[-<raw sha256>].zst[.age]``, decoding
    to its original bytes (and to the sha256 its name records, when it records one)."""
    files = files_under(repo)
    out = Stored(repo_files=len(files), repo_bytes=tree_bytes(repo))
    suffix = ".zst.age" if identity is not None else ".zst"
    for name, src in segments.items():
        hits = [
            p
            for p in files
            if p.name.endswith(suffix)
            and re.fullmatch(rf"{name}(-[0-9a-f]+)?", p.name[: -len(suffix)])
        ]
        if len(hits) != 1:
            seen = [str(p.relative_to(repo)) for p in files if p.name.startswith(name)]
            out.problems.append(f"{name}: expected one {name}[-<sha256>]{suffix}, found {seen}")
            continue
        data = hits[0].read_bytes()
        out.objects += 1
        out.object_bytes += len(data)
        if identity is not None:
            data = pyrage.decrypt(data, [identity])
        raw_sha = hashlib.sha256(unzstd(data)).hexdigest()
        if raw_sha != sha256_file(src):
            out.problems.append(f"{name}: stored object does not decode to the segment")
        recorded = hits[0].name[len(name) + 1 : -len(suffix)]
        if recorded and recorded != raw_sha:
            out.problems.append(f"{name}: the sha256 in its name does not match the content")
    # Anything else (sidecars, indexes) is listed; what looks like a temporary is a problem.
    out.other_files = [
        str(p.relative_to(repo)) for p in files if not any(p.name.startswith(n) for n in segments)
    ]
    temporaries = [f for f in out.other_files if "tmp" in f.lower() or "/." in f"/{f}"]
    if temporaries:
        out.problems.append(f"temporary files left in the repository: {temporaries[:10]}")
    return out


def verify_pgbackrest(repo: Path, segments: dict[str, Path]) -> Stored:
    """``archive/<stanza>/<db-id>/<first 16>/<segment>-<sha1>.zst``, decoding to its bytes."""
    out = Stored(repo_files=len(files_under(repo)), repo_bytes=tree_bytes(repo))
    objects = [p for p in files_under(repo / "archive") if re.match(r"^[0-9A-F]{24}-", p.name)]
    for name, src in segments.items():
        hits = [p for p in objects if p.name.startswith(name + "-") and p.name.endswith(".zst")]
        if len(hits) != 1:
            out.problems.append(f"{name}: expected one {name}-<sha1>.zst, found {hits}")
            continue
        data = hits[0].read_bytes()
        out.objects += 1
        out.object_bytes += len(data)
        raw = unzstd(data)
        if hashlib.sha256(raw).hexdigest() != sha256_file(src):
            out.problems.append(f"{name}: stored object does not decode to the segment")
        if hits[0].name != f"{name}-{hashlib.sha1(raw).hexdigest()}.zst":
            out.problems.append(f"{name}: sha1 in the name does not match the content")
    if len(objects) != len(segments):
        out.problems.append(f"{len(objects)} WAL objects for {len(segments)} segments")
    return out


# -- statistics ----------------------------------------------------------------------------
def summary(times: Sequence[float]) -> dict[str, float]:
    ms = sorted(t * 1000 for t in times)
    return {
        "n": len(ms),
        "median_ms": statistics.median(ms),
        "p90_ms": statistics.quantiles(ms, n=10, method="inclusive")[8],
        "mean_ms": statistics.fmean(ms),
        "min_ms": ms[0],
        "max_ms": ms[-1],
    }


@dataclass
class Variant:
    """One way of pushing a segment: the command for a segment and its environment."""

    label: str
    argv: Callable[[Path], list[str]]
    env: dict[str, str]
    repo: Path
    verify: Callable[[], Stored]


def alternate(segments: Sequence[Path], a: Variant, b: Variant) -> dict[str, list[float]]:
    """Push every segment with both variants, one process per call: AB on even, BA on odd."""
    times: dict[str, list[float]] = {a.label: [], b.label: []}
    for i, seg in enumerate(segments):
        for v in (a, b) if i % 2 == 0 else (b, a):
            times[v.label].append(timed(v.argv(seg), v.env, f"{v.label} {seg.name}"))
    return times


def median_ms(cmd: list[str], env: dict[str, str], n: int, what: str) -> float:
    return statistics.median(timed(cmd, env, what) for _ in range(n)) * 1000


def import_profile(cmd: list[str], env: dict[str, str]) -> dict[str, object]:
    """One call under ``-X importtime``: total, site's share, self time per top package."""
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise BenchError(f"import profile run failed: {proc.stderr.strip()[-2000:]}")
    total = site = 0.0
    groups: dict[str, float] = {}
    for line in proc.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if not m:
            continue
        self_ms, cum_ms, name = int(m.group(1)) / 1000, int(m.group(2)) / 1000, m.group(4)
        if m.group(3) == " ":  # one space: a top-level import
            total += cum_ms
            if name == "site":
                site = cum_ms
        root = name.split(".")[0]
        if root.startswith("__editable__"):
            root = "editable-install finder"
        groups[root] = groups.get(root, 0.0) + self_ms
    heavy = sorted(groups.items(), key=lambda kv: -kv[1])[:8]
    return {"total_ms": total, "site_ms": site, "heaviest_self_ms": heavy}


def in_process(segments: Sequence[Path], recipient: object) -> dict[str, float]:
    """Medians, per segment, of the pure work in this process (page cache, no processes)."""
    cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True)
    out: dict[str, list[float]] = {"read_ms": [], "sha256_ms": [], "zstd3_ms": [], "age_ms": []}
    for seg in segments:
        t0 = time.perf_counter()
        raw = seg.read_bytes()
        t1 = time.perf_counter()
        hashlib.sha256(raw).hexdigest()
        t2 = time.perf_counter()
        packed = cctx.compress(raw)
        t3 = time.perf_counter()
        pyrage.encrypt(packed, [recipient])
        t4 = time.perf_counter()
        for key, d in zip(out, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            out[key].append(d * 1000)
    return {k: statistics.median(v) for k, v in out.items()}


_WARM_PUSHES = """
import json, sys, time
from pg_backup_assets.cli import main
conf, warm, *segs = sys.argv[1:]
if main(["--config", conf, "wal-push", warm]) != 0:
    raise SystemExit("warm-up push failed")
out = []
for seg in segs:
    t0 = time.perf_counter()
    rc = main(["--config", conf, "wal-push", seg])
    out.append((time.perf_counter() - t0) * 1000)
    if rc != 0:
        raise SystemExit(f"wal-push {seg} exited {rc}")
print(json.dumps(out))
"""


def warm_pushes(
    conf: Path, warm: Path, segments: Sequence[Path], env: dict[str, str]
) -> list[float]:
    """Per-segment ms of ``main([... "wal-push", SEG])`` in one process, after a first push
    has done every import: the push's own work (config, read, hash, zstd, write, fsync)."""
    cmd = [*as_postgres(), str(PYTHON), "-c", _WARM_PUSHES, str(conf), str(warm)]
    proc = subprocess.run(
        [*cmd, *map(str, segments)], env=env, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise BenchError(f"in-process wal-push failed: {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def render(r: dict) -> str:
    """The report, from the raw results alone (what the columns mean: bench/README.md)."""
    m, st, b, wl = r["machine"], r["stored"], r["breakdown"], r["workload"]
    p1, p2, p3 = (x["summaries"] for x in r["passes"])
    raw = r["segments"] * SEG_BYTES
    pgbr, ours = p1[PGBR]["median_ms"], p1[OURS]["median_ms"]
    ratio = ours / pgbr
    rows = []
    for n, summ in enumerate((p1, p2, p3), start=1):
        for label, x in summ.items():
            s = st[f"{n}:{label}"]
            if label == PGBR:
                vs = as_ratio(1)
            elif label == OURS:
                vs = as_ratio(ratio, bold=True) if n == 1 else "(reference)"
            else:  # chained through ours plain in the same pass
                vs = f"≈{as_ratio(x['median_ms'] / summ[OURS]['median_ms'] * ratio)}"
            rows.append(
                (n, label, f"{x['median_ms']:.1f}", f"{x['p90_ms']:.1f}", f"{x['mean_ms']:.1f}")
                + (vs, mib(s["object_bytes"]), f"{s['object_bytes'] / raw:.1%}")
                + (f"{mib(s['repo_bytes'])}, {s['repo_files']} files",)
            )
    spawn = b["launch_floor_ms"]
    start = b["python_startup_ms"] - spawn
    imports = b["imports"]["total_ms"] - b["imports"]["site_ms"]
    work, floor = b["warm_push_ms"], b["pgbackrest_version_ms"]
    parts = [
        ("spawn via `runuser` (`runuser … /bin/true`)", spawn),
        ("interpreter start incl. `site`, minus the spawn", start),
        ("imports of `wal-push` beyond `site`", imports),
        ("the push itself, in a warm process", work),
        ("sum of the four", spawn + start + imports + work),
        ("in-process: one read of a segment (page cache)", b["work"]["read_ms"]),
        ("in-process: one sha256 pass over a segment", b["work"]["sha256_ms"]),
        ("in-process: zstd level 3 of a segment", b["work"]["zstd3_ms"]),
        ("in-process: age-encrypting the compressed segment", b["work"]["age_ms"]),
        ("pgBackRest: whole median call", pgbr),
        ("pgBackRest: `pgbackrest version` (its start-up floor)", floor),
        ("pgBackRest: its push beyond that floor", pgbr - floor),
    ]
    stale = r["stale_pyc"] if r["checkout_pyc"] else ["all (the checkout had no `.pyc`)"]
    heavy = ", ".join(f"{n} {t:.1f}" for n, t in b["imports"]["heaviest_self_ms"])
    head = ("pass", "variant", "median ms", "p90 ms", "mean ms", "vs pgBackRest", "stored")
    return "\n".join(
        [
            HEADING,
            "",
            measured(
                r,
                "bench-wal",
                f"PostgreSQL {r['pg_version']}, {r['pgbackrest_version']} (Debian's libzstd "
                f"{r['system_libzstd']}), Python {m['python']}, zstandard {m['zstandard']}",
            ),
            "",
            *table((*head, "of raw", "repository"), rows, "cl" + "r" * 7),
            "",
            *table(
                ("where one call of ours goes", "ms", "of ours' median"),
                ((what, f"{ms:.1f}", f"{ms / ours:.0%}") for what, ms in parts),
            ),
            "",
            f"- Segments: {r['segments']} × 16 MiB ({mib(raw)}), picked evenly from "
            f"{wl['archived']} archived during `pgbench -i -s {wl['scale']}` and {wl['rounds']} "
            f"rounds of `pgbench -T {wl['tx_seconds_per_round']}` + "
            f"{wl['random_mib_per_round']} MiB of random rows.",
            f"- Other activity: {r['foreign_cpu']} CPUs; other PostgreSQL servers: "
            f"{r['foreign_servers']}.",
            f"- Our push in a warm process ÷ pgBackRest's beyond its floor: "
            f"{as_ratio(work / (pgbr - floor))}; interpreter start and imports: "
            f"{(start + imports) / ours:.0%} of our median call. Import self-time (ms): {heavy}.",
            f"- Modules compiled from source on every *no .pyc* call (stale or missing `.pyc`): "
            f"{', '.join(f'`{x}`' for x in stale) or 'none'}.",
            "",
        ]
    )


# -- the benchmark -------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--segments", type=int, default=40, help="segments to push (default 40)")
    p.add_argument("--scale", type=int, default=30, help="pgbench -i scale (default 30)")
    p.add_argument(
        "--pgbackrest-only",
        action="store_true",
        help="time pgBackRest alone (while wal-push does not exist yet); writes no report",
    )
    report_options(p)
    p.add_argument("--keep", action="store_true", help="keep the scratch folder in bench/out")
    p.add_argument(
        "--wait-idle",
        type=float,
        default=0,
        metavar="S",
        help="before each pass, wait up to S seconds until no other PostgreSQL server runs "
        "(e.g. a test suite); default 0",
    )
    args = p.parse_args(argv)
    if args.render_only:
        return rerender(NAME, HEADING, render, WHY, args.no_report)
    if args.segments < 2:
        p.error("--segments must be at least 2")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SERVER_USER)
        except KeyError:
            p.error("running as root but there is no postgres OS user to run PostgreSQL as")
    if not args.pgbackrest_only and not wal_push_available():
        log("`pgbackup wal-push` does not exist yet; use --pgbackrest-only meanwhile")
        return 2
    return run_with_pgbackrest(NAME, args, bench)


def stage_segments(cluster: LocalCluster, work: Path, n: int, scale: int) -> tuple[dict, Path]:
    """Real WAL from the cluster, copied by archive_command; n evenly picked + 1 warm-up."""
    archive = work / "archive"
    stage = work / "stage"
    stage.mkdir()
    stage.chmod(0o755)
    workload = generate_wal(cluster, archive, n + 1, scale)
    names = archived(archive)
    workload["archived"] = len(names)
    warm_name, picked = names[0], pick_evenly(names[1:], n)
    for name in [warm_name, *picked]:
        shutil.copyfile(archive / name, stage / name)
        (stage / name).chmod(0o644)
        (stage / name).read_bytes()  # into the page cache, equally for every variant
    shutil.rmtree(archive, ignore_errors=True)
    log(f"staged {n} segments ({picked[0]} … {picked[-1]}) + warm-up {warm_name}")
    return workload, stage


def bench(args: argparse.Namespace, exe: str, work: Path, cluster: LocalCluster) -> int:
    n = args.segments
    archive = owned_dir(work / "archive")
    cluster.init(
        {
            "archive_mode": "on",
            "archive_command": f"'test ! -f {archive}/%f && cp %p {archive}/%f'",
            "wal_level": "replica",
            "max_wal_size": "'1GB'",
            "checkpoint_timeout": "'30min'",
            "shared_buffers": "'256MB'",
            "autovacuum": "off",
            "fsync": "off",  # the server only makes WAL here; the tools do their own fsync
            "synchronous_commit": "off",
        },
        fast=True,
    ).start()
    pg_version = sql(cluster, "SHOW server_version")[0][0]
    workload, stage = stage_segments(cluster, work, n, args.scale)
    staged = sorted(p for p in stage.iterdir())
    warm, seg_paths = staged[0], staged[1:]
    segments = {p.name: p for p in seg_paths}
    pgbr_version = run([*as_postgres(), exe, "version"], "pgbackrest version").stdout.strip()

    identity = pyrage.x25519.Identity.generate()
    recipient = str(identity.to_public())
    pycache = owned_dir(work / "pycache")
    cached_env = tool_env(PYTHONPYCACHEPREFIX=str(pycache))

    def make(label: str, slot: str) -> Variant:
        """A variant writing into its own fresh repository ``WORK/<slot>-repo``."""
        repo = owned_dir(work / f"{slot}-repo")
        if label == PGBR:
            conf = pgbackrest_conf(
                work / f"{slot}-pgbackrest.conf", repo, work, cluster, {"archive-async": "n"}
            )
            run(pgbackrest_cmd(exe, conf, "stanza-create"), "pgbackrest stanza-create")
            return Variant(
                label,
                lambda seg: pgbackrest_cmd(exe, conf, "archive-push", str(seg)),
                tool_env(),
                repo,
                lambda: verify_pgbackrest(repo, segments),
            )
        age = label == OURS_AGE
        conf = ours_conf(work / f"{slot}-ours.yaml", repo, cluster, recipient if age else None)
        return Variant(
            label,
            lambda seg: ours_cmd(conf, seg),
            tool_env() if label == OURS_NOPYC else cached_env,
            repo,
            lambda: verify_ours(repo, segments, identity if age else None),
        )

    labels = (PGBR,) if args.pgbackrest_only else (PGBR, OURS, OURS_AGE, OURS_NOPYC)
    for label in labels:  # warm-up: one untimed push each, into a scratch repository
        v = make(label, f"warm-{labels.index(label)}")
        timed(v.argv(warm), v.env, f"{label} warm-up")
    sql(cluster, "CHECKPOINT")

    if args.pgbackrest_only:
        v = make(PGBR, "p1-pgbackrest")
        times = [timed(v.argv(seg), v.env, f"{PGBR} {seg.name}") for seg in seg_paths]
        st = v.verify()
        log(f"{PGBR}: {st.objects}/{n} stored and decoded; {st.problems or 'no problems'}")
        x = summary(times)
        log(
            f"{PGBR}: median {x['median_ms']:.1f} ms, p90 {x['p90_ms']:.1f} ms, "
            f"mean {x['mean_ms']:.1f} ms"
        )
        return 1 if st.problems else 0

    passes, stored, loads = [], {}, []
    for i, (a, b) in enumerate(PASSES, start=1):
        va, vb = make(a, f"p{i}-a"), make(b, f"p{i}-b")
        log(f"pass {i}: {a} vs {b}, alternating, {n} segments")
        before = wait_idle(args.wait_idle, str(cluster.data))
        times = alternate(seg_paths, va, vb)
        after = load_now()
        servers = sorted({*before["postgres_servers"], *after["postgres_servers"]})
        loads.append(
            {**after, "postgres_servers": servers, "foreign_cpu": foreign_cpu(before, after)}
        )
        passes.append({"times_s": times, "summaries": {k: summary(t) for k, t in times.items()}})
        for v in (va, vb):
            stored[f"{i}:{v.label}"] = v.verify()
        for label, x in passes[-1]["summaries"].items():
            log(
                f"  {label:<28} median {x['median_ms']:6.1f} ms  p90 {x['p90_ms']:6.1f}  "
                f"mean {x['mean_ms']:6.1f}"
            )

    problems = [f"pass {k}: {p}" for k, s in stored.items() for p in s.problems]
    for key, s in stored.items():
        log(f"pass {key}: {s.objects}/{n} segments stored and decoded, {s.object_bytes:,} B")

    # Where the time goes (bytecode cached, as in pass 1).
    reps = 15
    floor = median_ms([*as_postgres(), "/bin/true"], tool_env(), reps, "true")
    profile_repo = owned_dir(work / "importtime-repo")
    profile_conf = ours_conf(work / "importtime.yaml", profile_repo, cluster, None)
    profile = [*as_postgres(), str(PYTHON), "-X", "importtime", "-m", "pg_backup_assets.cli"]
    profile += ["--config", str(profile_conf), "wal-push", str(warm)]
    imports = import_profile(profile, cached_env)
    breakdown = {
        "launch_floor_ms": floor,
        "python_startup_ms": median_ms(
            [*as_postgres(), str(PYTHON), "-c", "pass"], cached_env, reps, "python -c pass"
        ),
        "cli_help_ms": median_ms(
            [*as_postgres(), str(PGBACKUP), "wal-push", "--help"], cached_env, reps, "--help"
        ),
        "pgbackrest_version_ms": median_ms(
            [*as_postgres(), exe, "version"], tool_env(), reps, "pgbackrest version"
        ),
        "imports": imports,
        "work": in_process(seg_paths, identity.to_public()),
        "warm_push_ms": statistics.median(
            warm_pushes(
                ours_conf(work / "warm.yaml", owned_dir(work / "warm-repo"), cluster, None),
                warm,
                seg_paths,
                cached_env,
            )
        ),
    }

    fcpu = [x["foreign_cpu"] for x in loads]
    foreign = sorted({s for x in loads for s in x["postgres_servers"]} - {str(cluster.data)})
    pyc_prefix = f"PYTHONPYCACHEPREFIX=WORK/pycache {' '.join(as_postgres())} "
    report = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "fs": subprocess.run(
            ["stat", "-f", "-c", "%T", str(work)], capture_output=True, text=True
        ).stdout.strip(),
        "pg_version": pg_version,
        "pgbackrest_version": pgbr_version,
        "segments": n,
        "segment_names": list(segments),
        "workload": workload,
        "passes": passes,
        "stored": {k: vars(v) for k, v in stored.items()},
        "breakdown": breakdown,
        "loads": loads,
        "foreign_cpu": " / ".join(f"{x:.2f}" for x in fcpu) + " (passes 1 / 2 / 3)",
        "foreign_servers": len(foreign),
        "checkout_pyc": checkout_has_bytecode(),
        "stale_pyc": stale_bytecode(),
        "system_libzstd": subprocess.run(
            ["dpkg-query", "-W", "-f", "${Version}", "libzstd1"], capture_output=True, text=True
        ).stdout.strip()
        or "unknown",
        "problems": problems,
        "commands": [
            f"# pass 1: {OURS} / {PGBR}; pass 2: {OURS} / {OURS_AGE}; pass 3: {OURS} / "
            f"{OURS_NOPYC}",
            f"{pyc_prefix}{PGBACKUP} --config WORK/ours.yaml wal-push SEG",
            f"{pyc_prefix}{PGBACKUP} --config WORK/ours-age.yaml wal-push SEG",
            f"{' '.join(as_postgres())} {PGBACKUP} --config WORK/ours.yaml wal-push SEG"
            "   # no .pyc",
            " ".join(pgbackrest_cmd(exe, Path("WORK/pgbackrest.conf"), "archive-push", "SEG")),
            "# once per pgBackRest repository, before pushing:",
            " ".join(pgbackrest_cmd(exe, Path("WORK/pgbackrest.conf"), "stanza-create")),
        ],
        "ours_yaml": (work / "p1-a-ours.yaml").read_text().replace(str(work), "WORK"),
        "pgbackrest_conf": (work / "p1-b-pgbackrest.conf").read_text().replace(str(work), "WORK"),
    }
    log(f"breakdown: {json.dumps(breakdown, default=str)}")
    log(f"other activity: {report['foreign_cpu']} CPUs; other PostgreSQL servers: {foreign}")
    return finish(NAME, HEADING, render, report, WHY, args.no_report)


if __name__ == "__main__":
    sys.exit(main())
