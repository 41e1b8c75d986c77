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

Results go to stdout, to ``BENCHMARKS.md`` (section ``## wal-push vs pgBackRest
archive-push``, replaced on each run) and, raw, to ``bench/out/wal_push-last.json``.
There are no timing assertions: this measures, it does not judge.
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
    OUT,
    PGBACKUP,
    PYTHON,
    ROOT,
    ZSTD_LEVEL,
    BenchError,
    as_postgres,
    files_under,
    foreign_cpu,
    load_now,
    log,
    machine,
    ours_conf,
    owned_dir,
    pgbackrest_cmd,
    pgbackrest_conf,
    pgbench,
    publish,
    run,
    run_with_pgbackrest,
    sha256_file,
    sql,
    switch_and_wait,
    timed,
    tool_env,
    tree_bytes,
    wait_idle,
)

from pg_backup_assets.core.postgres.local_cluster import SERVER_USER, LocalCluster

HEADING = "## wal-push vs pgBackRest archive-push"
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


def nopyc_text(r: dict) -> str:
    """What the *no .pyc* row measured, given the checkout's bytecode at run time."""
    if not r["checkout_pyc"]:
        return (
            "The *no .pyc* row runs it as this checkout's editable install runs for `postgres` "
            "when nothing has written `pg_backup_assets/**/__pycache__` (root-owned, so "
            "`postgres` cannot; at run time the checkout had no `.pyc` files): every call "
            "compiles our modules from source."
        )
    stale = r.get("stale_pyc")
    which = (
        f" At run time {len(stale)} module(s) had a stale or missing `.pyc`"
        f"{': ' + ', '.join(f'`{s}`' for s in stale) if stale else ''}."
        if stale is not None
        else ""
    )
    return (
        "The *no .pyc* row runs it without that folder, as this checkout's editable install "
        "runs for `postgres`: `scripts/bootstrap` byte-compiles the package, so it loads the "
        "`.pyc` files in `pg_backup_assets/**/__pycache__` and compiles from source only the "
        "modules edited since the last `make setup` (the folders are root-owned, so `postgres` "
        f"cannot refresh them).{which} The row's extra cost is what such stale modules cost."
    )


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
    m, p, st, b = r["machine"], r["passes"], r["stored"], r["breakdown"]
    raw = r["segments"] * SEG_BYTES
    p1, p2, p3 = (x["summaries"] for x in p)
    pgbr, ours = p1[PGBR]["median_ms"], p1[OURS]["median_ms"]
    ratio = ours / pgbr
    wl = r["workload"]
    lines = [
        HEADING,
        "",
        f"Measured {r['date']} with `bench/wal_push.py` (`make bench-wal`): one run, the same "
        f"{r['segments']} real WAL segments for every tool, the same machine and disk.",
        "",
        f"- Machine: {m['nproc']} CPUs (`nproc`), {m['cpu']} (/proc/cpuinfo), Linux "
        f"{m['kernel']}, repositories on {r['fs']}",
        f"- PostgreSQL {r['pg_version']}; {r['pgbackrest_version']} (Debian package); "
        f"Python {m['python']}; zstandard {m['zstandard']}",
        f"- {r['segments']} segments × 16 MiB ({raw / 2**20:,.0f} MiB), picked evenly from "
        f"{wl['archived']} archived while running `pgbench -i -s {wl['scale']}`, then "
        f"{wl['rounds']} rounds of `pgbench -c 4 -j 4 -T {wl['tx_seconds_per_round']}` + "
        f"{wl['random_mib_per_round']} MiB of `gen_random_bytes` rows (incompressible)",
        "- Every call is a fresh process run as `postgres` through `runuser`, timed from spawn "
        "to exit (exit 0 = durable). Each pass alternates its two variants per segment "
        "(AB, BA, AB, …) so drift cancels, into fresh, separate repositories. Afterwards "
        "every repository was checked: one object per segment, each decoding (zstd, age) "
        "to the original segment's bytes",
        f"- Other activity during the passes: {r['foreign_cpu']} CPUs busy outside the "
        "benchmark's own processes (kernel I/O work such as fsync included); other "
        f"PostgreSQL servers running meanwhile: {r['foreign_servers']}",
        "",
        "| variant | pass | median ms | p90 ms | mean ms | median vs pgBackRest "
        "| stored | of raw | repository |",
        "|---|:-:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def row(label: str, n: int, summ: dict, vs: str) -> str:
        x, s = summ[label], st[f"{n}:{label}"]
        return (
            f"| {label} | {n} | {x['median_ms']:.1f} | {x['p90_ms']:.1f} | {x['mean_ms']:.1f} "
            f"| {vs} | {s['object_bytes'] / 2**20:,.1f} MiB | {s['object_bytes'] / raw:.1%} "
            f"| {s['repo_bytes'] / 2**20:,.1f} MiB, {s['repo_files']} files |"
        )

    chain_age = p2[OURS_AGE]["median_ms"] / p2[OURS]["median_ms"]
    chain_nopyc = p3[OURS_NOPYC]["median_ms"] / p3[OURS]["median_ms"]
    lines += [
        row(PGBR, 1, p1, "1.00×"),
        row(OURS, 1, p1, f"**{ratio:.2f}×**"),
        row(OURS_AGE, 2, p2, f"≈{chain_age * ratio:.2f}× ¹"),
        row(OURS_NOPYC, 3, p3, f"≈{chain_nopyc * ratio:.2f}× ¹"),
        "",
        "¹ Passes 2 and 3 alternate with ours plain, not with pgBackRest: the ratio is "
        "chained (variant ÷ ours plain within its pass) × (ours ÷ pgBackRest in pass 1). "
        f"Within pass 2, age costs {chain_age:.2f}× plain (ours plain there: "
        f"{p2[OURS]['median_ms']:.1f} ms); within pass 3, compiling our modules on every call "
        f"costs {chain_nopyc:.2f}× having them cached (ours plain there: "
        f"{p3[OURS]['median_ms']:.1f} ms).",
        "",
        f"**Ours takes {ratio:.2f}× pgBackRest's median time per segment** and stores "
        f"{st['1:' + OURS]['object_bytes'] / st['1:' + PGBR]['object_bytes']:.3f}× its bytes "
        f"(both zstd level 3: ours through python-zstandard's bundled libzstd "
        f"{r['machine']['zstandard'].split('libzstd ')[-1].rstrip(')')} with a content checksum, "
        f"pgBackRest through Debian's libzstd {r['system_libzstd']}).",
        "",
        "Bytecode: ours runs with `PYTHONPYCACHEPREFIX` pointing at a cache folder the "
        "`postgres` user may write, warmed by the untimed first push, as an installed wheel "
        "has its `.pyc` files. " + nopyc_text(r),
        "",
        "Where one call of ours goes (medians, bytecode cached; fresh processes as `postgres` "
        "except where marked in-process):",
        "",
        "| part | ms | of ours' median |",
        "|---|---:|---:|",
    ]
    spawn = b["launch_floor_ms"]
    start = b["python_startup_ms"] - spawn
    imports = b["imports"]["total_ms"] - b["imports"]["site_ms"]
    work = b["warm_push_ms"]
    pgbr_work = pgbr - b["pgbackrest_version_ms"]
    parts = [
        ("spawn via `runuser` (`runuser … /bin/true`; in every row, pgBackRest's too)", spawn),
        ("interpreter start incl. `site` (`python -c pass`, minus the spawn)", start),
        ("imports of `wal-push` beyond `site` (`-X importtime`)", imports),
        ("the push itself: `main([... 'wal-push', SEG])` again in a warm process", work),
        ("sum of the four (vs the measured median)", spawn + start + imports + work),
        ("in-process reference: one read of a segment from page cache", b["work"]["read_ms"]),
        ("in-process reference: one sha256 pass over a segment", b["work"]["sha256_ms"]),
        ("in-process reference: zstd level 3 of a segment, one shot", b["work"]["zstd3_ms"]),
        ("in-process reference: age-encrypting the compressed segment", b["work"]["age_ms"]),
        ("pgBackRest: whole median call", pgbr),
        (
            "pgBackRest: `runuser … pgbackrest version` (its start-up floor)",
            b["pgbackrest_version_ms"],
        ),
        ("pgBackRest: its push beyond that floor (difference)", pgbr_work),
    ]
    lines += [f"| {what} | {ms:.1f} | {ms / ours:.0%} |" for what, ms in parts]
    heavy = ", ".join(f"{n} {t:.1f}" for n, t in b["imports"]["heaviest_self_ms"])
    lines += [
        "",
        f"Import self-time by package (ms): {heavy}.",
        "",
        f"Read as ratios: our push's own work in a warm process is {work / pgbr_work:.2f}× "
        f"pgBackRest's push beyond its start-up floor; interpreter start and imports add "
        f"{(start + imports) / ours:.0%} of our median call.",
        "",
        "Exact commands (one per segment; `SEG` = the staged segment's path, `WORK` the "
        "benchmark's scratch folder):",
        "",
        "```sh",
        *r["commands"],
        "```",
        "",
        "`WORK/ours.yaml` (`ours-age.yaml` adds `encryption: {recipients: [age1…]}`, a fresh "
        "x25519 key):",
        "",
        "```yaml",
        r["ours_yaml"].rstrip(),
        "```",
        "",
        "`WORK/pgbackrest.conf` (log settings otherwise default):",
        "",
        "```ini",
        r["pgbackrest_conf"].rstrip(),
        "```",
        "",
        "Before timing, each variant pushed one other segment, untimed, into a scratch "
        "repository, and every staged segment was read once, so no variant pays for a cold "
        "page cache or cold binaries. The PostgreSQL server stays up and idle (autovacuum "
        "off, CHECKPOINT before the first call), as it is when archive_command runs. Raw "
        "per-call timings: `bench/out/wal_push-last.json`.",
        "",
    ]
    return "\n".join(lines)


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
    p.add_argument("--no-report", action="store_true", help="leave BENCHMARKS.md alone")
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
    return run_with_pgbackrest("wal_push", args, bench)


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
    (OUT / "wal_push-last.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    log(f"breakdown: {json.dumps(breakdown, default=str)}")
    log(f"other activity: {report['foreign_cpu']} CPUs; other PostgreSQL servers: {foreign}")
    why = "a variant did not store every segment intact"
    return publish(HEADING, render(report), problems, why, args.no_report)


if __name__ == "__main__":
    sys.exit(main())
