"""Side-by-side benchmark: ``pgbackup wal-push`` against pgBackRest's ``archive-push``,
synchronous and asynchronous.

Both tools push the same real 16 MiB WAL segments, one fresh process per segment (that is
how PostgreSQL's ``archive_command`` calls them), as the ``postgres`` OS user, into
separate repositories on the same disk, with zstd level 3. Three synchronous passes over
the same segments, each alternating two variants per segment (AB on even segments, BA on
odd ones, so drift in the machine's speed cancels out) and each into fresh repositories:

1. ours against pgBackRest (the comparison);
2. ours plain against ours age-encrypted (pgBackRest has no age);
3. ours with its bytecode cached against ours compiling its own modules on every call.

Then the asynchronous modes (ours ``archive: {async: true, parallel: 2}``, pgBackRest
``archive-async=y, process-max=2``): rounds in which each drains a backlog of all the
segments the way PostgreSQL's archiver would (``pg_wal/*.ready``, one call per segment,
oldest first, each tool's archive_command through ``sh -c`` as the archiver runs it: ours
the line ``pgbackup archive-command`` prints), and calls whose segment is already done.
Last, each of the four archivers is the benchmark server's ``archive_command`` while
``pgbench`` writes WAL as fast as it can: segments archived per second, the peak of
``pg_wal`` and of its backlog.

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
import contextlib
import hashlib
import importlib.util
import io
import json
import os
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
    STANZA,
    ZSTD_LEVEL,
    BenchError,
    as_postgres,
    as_ratio,
    files_under,
    finish,
    foreign_cpu,
    load_now,
    log,
    measured,
    mib,
    ours_conf,
    owned_dir,
    pgbackrest_cmd,
    pgbackrest_conf,
    pgbench,
    postmaster_pid,
    report_head,
    report_options,
    require_server_user,
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

from pg_backup_assets.core.postgres.client import bindir
from pg_backup_assets.core.postgres.local_cluster import LocalCluster, hand_over_tree
from pg_backup_assets.core.wal.archive import archive_command, quote_setting

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
OURS_ASYNC = "pgbackup wal-push, async"
PGBR_ASYNC = "pgBackRest archive-push, async"
PARALLEL = 2  # ours' archive.parallel and pgBackRest's process-max
SUSTAINED = (OURS, OURS_ASYNC, PGBR, PGBR_ASYNC)
# The sustained load: pgbench with this one statement, as fast as 4 clients can run it
# (~160 MiB of WAL a second on the reference machine without archiving): a quarter
# compressible text, the rest random bytes.
CHURN = (
    "INSERT INTO churn SELECT g, repeat(md5(g::text), 4), gen_random_bytes(256) "
    "FROM generate_series(1, 200) g;\n"
)


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


def import_profile(
    cmd: list[str], env: dict[str, str], cwd: Path | None = None, runs: int = 7
) -> dict[str, object]:
    """``runs`` calls under ``-X importtime``, the median of each figure: the imports after
    ``site`` (what the command itself imports; the interpreter's own start-up imports come
    before it), ``site``'s share, and the self time per top package of those imports. (One
    call is not enough: a single stall of the machine once put 0.7 s on one module.)"""
    profiles = [_import_profile(cmd, env, cwd) for _ in range(runs)]
    groups: dict[str, list[float]] = {}
    for p in profiles:
        for name, ms in p["heaviest_self_ms"]:
            groups.setdefault(name, []).append(ms)
    medians = {name: statistics.median(v + [0.0] * (runs - len(v))) for name, v in groups.items()}
    return {
        "after_site_ms": statistics.median(p["after_site_ms"] for p in profiles),
        "site_ms": statistics.median(p["site_ms"] for p in profiles),
        "heaviest_self_ms": sorted(medians.items(), key=lambda kv: -kv[1])[:8],
        "runs": runs,
    }


def _import_profile(cmd: list[str], env: dict[str, str], cwd: Path | None) -> dict[str, object]:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False, cwd=cwd)
    if proc.returncode != 0:
        raise BenchError(f"import profile run failed: {proc.stderr.strip()[-2000:]}")
    after_site = site = 0.0
    seen_site = False
    groups: dict[str, float] = {}
    for line in proc.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if not m:
            continue
        self_ms, cum_ms, name = int(m.group(1)) / 1000, int(m.group(2)) / 1000, m.group(4)
        if m.group(3) == " ":  # one space: a top-level import
            if name == "site":
                site, seen_site = cum_ms, True
                continue
            if seen_site:
                after_site += cum_ms
        if not seen_site:
            continue  # the interpreter's start-up (site's own imports come before it)
        root = name.split(".")[0]
        if root.startswith("__editable__"):
            root = "editable-install finder"
        groups[root] = groups.get(root, 0.0) + self_ms
    heavy = sorted(groups.items(), key=lambda kv: -kv[1])[:16]
    return {"after_site_ms": after_site, "site_ms": site, "heaviest_self_ms": heavy}


def in_process(segments: Sequence[Path], recipient: object, scratch: Path) -> dict[str, float]:
    """Medians, per segment, of the pure work in this process (page cache, no processes)."""
    cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True)
    out: dict[str, list[float]] = {
        "read_ms": [],
        "sha256_ms": [],
        "zstd3_ms": [],
        "write_fsync_ms": [],
        "age_ms": [],
    }
    target = scratch / "write-fsync"
    for seg in segments:
        t0 = time.perf_counter()
        raw = seg.read_bytes()
        t1 = time.perf_counter()
        hashlib.sha256(raw).hexdigest()
        t2 = time.perf_counter()
        packed = cctx.compress(raw)
        t3 = time.perf_counter()
        with open(target, "wb") as f:
            f.write(packed)
            f.flush()
            os.fsync(f.fileno())
        t4 = time.perf_counter()
        pyrage.encrypt(packed, [recipient])
        t5 = time.perf_counter()
        deltas = (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)
        for key, d in zip(out, deltas, strict=True):
            out[key].append(d * 1000)
    target.unlink()
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


# -- asynchronous archiving: PostgreSQL's archiver over a backlog ------------------------------
def data_dir(work: Path, slot: str, segments: dict[str, Path], pg_control: Path) -> Path:
    """A data directory as PostgreSQL's archiver leaves it to archive_command: every staged
    segment in pg_wal, marked ready; PG_VERSION and global/pg_control for pgBackRest's checks."""
    data = work / f"{slot}-data"
    status = data / "pg_wal" / "archive_status"
    status.mkdir(parents=True)
    (data / "global").mkdir()
    shutil.copyfile(pg_control, data / "global" / "pg_control")
    (data / "PG_VERSION").write_text("15\n")
    for name, src in segments.items():
        shutil.copyfile(src, data / "pg_wal" / name)
        (status / f"{name}.ready").touch()
    hand_over_tree(data)
    data.chmod(0o700)
    for name in segments:
        (data / "pg_wal" / name).read_bytes()  # into the page cache, as for every variant
    return data


@dataclass
class Archiver:
    """An asynchronous variant with a backlog of its own in a data directory."""

    label: str
    data: Path
    argv: Callable[[str], list[str]]  # archive_command for pg_wal/<name>
    env: dict[str, str]
    marker: str  # in the command line of its background processes: its config file
    repo: Path
    verify: Callable[[], Stored]


def async_variant(
    label: str,
    slot: str,
    work: Path,
    cluster: LocalCluster,
    exe: str,
    segments: dict[str, Path],
    pg_control: Path,
    env: dict[str, str],
) -> Archiver:
    """``OURS_ASYNC`` or ``PGBR_ASYNC`` with a fresh repository, spool and data directory."""
    data = data_dir(work, slot, segments, pg_control)
    repo, spool = owned_dir(work / f"{slot}-repo"), owned_dir(work / f"{slot}-spool")
    if label == OURS_ASYNC:
        conf = ours_conf(work / f"{slot}.yaml", repo, cluster, None, spool=spool, parallel=PARALLEL)
        # The line `pgbackup archive-command` prints: its shell check answers a file the
        # pusher is done with, and the rest runs wal-push.
        ours = archive_command(conf, STANZA)
        return Archiver(
            label,
            data,
            lambda name: as_archiver(ours, name),
            env,
            str(conf),
            repo,
            lambda: verify_ours(repo, segments, None),
        )
    # The stanza is made against the running cluster; the pushes read pg1-path's pg_control.
    create = pgbackrest_conf(work / f"{slot}-create.conf", repo, work, cluster)
    run(pgbackrest_cmd(exe, create, "stanza-create"), "pgbackrest stanza-create")
    here = LocalCluster(cluster.base, port=cluster.port, data=data)
    options = {"archive-async": "y", "process-max": str(PARALLEL), "spool-path": str(spool)}
    conf = pgbackrest_conf(work / f"{slot}-pgbackrest.conf", repo, work, here, options)
    return Archiver(
        label,
        data,
        lambda name: as_archiver(pgbr_archive_command(exe, conf), name),
        tool_env(),
        str(conf),
        repo,
        lambda: verify_pgbackrest(repo, segments),
    )


def pgbr_archive_command(exe: str, conf: Path) -> str:
    return " ".join(pgbackrest_cmd(exe, conf, "archive-push")[len(as_postgres()) :]) + " %p"


def as_archiver(command: str, name: str) -> list[str]:
    """``command`` (an archive_command) as PostgreSQL's archiver runs it for pg_wal/``name``:
    %p, %f and %% filled in, through ``sh -c``, as the server's OS user."""
    fill = {"%p": f"pg_wal/{name}", "%f": name, "%%": "%"}
    return [*as_postgres(), "sh", "-c", re.sub("%[pf%]", lambda m: fill[m.group()], command)]


def call(cmd: list[str], cwd: Path, env: dict[str, str], what: str) -> float:
    """Seconds of one archive_command, spawn to exit, in a data directory (it must exit 0)."""
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, check=False)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip()[-2000:]
        raise BenchError(f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}\n{err}")
    return elapsed


def archive_backlog(v: Archiver) -> tuple[list[float], float]:
    """PostgreSQL's archiver over ``v``'s backlog: for each ready file, oldest first, one
    archive_command in the data directory, then .ready renamed .done; (each call's
    seconds, the whole backlog's)."""
    status = v.data / "pg_wal" / "archive_status"
    names = sorted(p.name[: -len(".ready")] for p in status.iterdir() if p.name.endswith(".ready"))
    times = []
    t0 = time.perf_counter()
    for name in names:
        times.append(call(v.argv(name), v.data, v.env, f"{v.label} {name}"))
        os.rename(status / f"{name}.ready", status / f"{name}.done")
    return times, time.perf_counter() - t0


def wait_gone(marker: str, timeout: float = 120) -> float:
    """Wait until no process names ``marker`` on its command line (a background pusher or
    pgBackRest's async process, which leave when idle); the seconds waited."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        ps = subprocess.run(["ps", "-eo", "args="], capture_output=True, text=True).stdout
        if marker not in ps:
            return time.monotonic() - t0
        time.sleep(0.1)
    raise BenchError(f"a process of {marker} still runs after {timeout:.0f}s")


def async_rounds(
    args: argparse.Namespace,
    exe: str,
    work: Path,
    cluster: LocalCluster,
    segments: dict[str, Path],
    pg_control: Path,
    env: dict[str, str],
) -> list[dict]:
    """Each round: both asynchronous variants drain a backlog of every staged segment,
    one after the other, the order swapped every round; one untimed round of 4 first."""
    out = []
    names = list(segments)
    for r in range(-1, args.async_rounds):
        order = (OURS_ASYNC, PGBR_ASYNC) if r % 2 == 0 else (PGBR_ASYNC, OURS_ASYNC)
        backlog = segments if r >= 0 else {n: segments[n] for n in names[:4]}
        wait_idle(args.wait_idle, str(cluster.data))
        for label in order:
            slot = f"async{r + 1}-{'ours' if label == OURS_ASYNC else 'pgbr'}"
            v = async_variant(label, slot, work, cluster, exe, backlog, pg_control, env)
            before = load_now()
            times, drain = archive_backlog(v)
            lingered = wait_gone(v.marker)
            after = load_now()
            stored = v.verify()
            shutil.rmtree(v.data)
            if r < 0:
                continue
            out.append(
                {
                    "label": label,
                    "round": r,
                    "times_s": times,
                    "drain_s": drain,
                    "lingered_s": lingered,
                    "stored": vars(stored),
                    # The background processes left this script's process tree: no
                    # "foreign" share can be told apart, so all CPU use is recorded.
                    "cpus_in_use": (after["busy_s"] - before["busy_s"])
                    / (after["t"] - before["t"]),
                    "other_servers": sorted(
                        {*before["postgres_servers"], *after["postgres_servers"]}
                        - {str(cluster.data)}
                    ),
                }
            )
            log(
                f"  async round {r + 1} {label:<32} median {statistics.median(times) * 1000:6.1f} "
                f"ms, {len(times) / drain:5.1f} segments/s"
            )
    return out


def hit_latency(
    exe: str,
    work: Path,
    cluster: LocalCluster,
    warm: Path,
    pg_control: Path,
    env: dict[str, str],
    reps: int = 21,
) -> dict[str, object]:
    """An asynchronous call whose segment is already done (its status left by the
    background process), repeated, alternating the tools; and ours under -X importtime."""
    seg = {warm.name: warm}
    variants = [
        async_variant(label, f"hit-{i}", work, cluster, exe, seg, pg_control, env)
        for i, label in enumerate((OURS_ASYNC, PGBR_ASYNC))
    ]
    for v in variants:  # the first call has the segment pushed
        call(v.argv(warm.name), v.data, v.env, f"{v.label} {warm.name}")
        wait_gone(v.marker)
    times: dict[str, list[float]] = {v.label: [] for v in variants}
    for i in range(reps):
        for v in variants if i % 2 == 0 else variants[::-1]:
            times[v.label].append(call(v.argv(warm.name), v.data, v.env, f"{v.label} hit"))
    ours = variants[0]
    profile = [
        *as_postgres(),
        str(PYTHON),
        "-X",
        "importtime",
        # The Python part of ours (the shell check answers a hit without it).
        *ours_cmd(Path(ours.marker), Path("pg_wal") / warm.name)[len(as_postgres()) :],
    ]
    imports = import_profile(profile, ours.env, cwd=ours.data)
    for v in variants:
        shutil.rmtree(v.data)
    return {"times_s": times, "imports": imports}


# -- sustained load on the benchmark cluster ---------------------------------------------------
def pg_wal_now(cluster: LocalCluster) -> tuple[int, int]:
    """(bytes of files in pg_wal, files marked ready in archive_status)."""
    total = 0
    for e in os.scandir(cluster.data / "pg_wal"):
        # The server removes and renames files meanwhile (recycled segments, xlogtemp.*).
        with contextlib.suppress(FileNotFoundError):
            total += e.stat().st_size if e.is_file() else 0
    status = cluster.data / "pg_wal" / "archive_status"
    ready = sum(1 for e in os.scandir(status) if e.name.endswith(".ready"))
    return total, ready


def archiver_counts(cluster: LocalCluster) -> tuple[int, int, int]:
    """(archived_count, failed_count, current WAL position in bytes)."""
    ((archived, failed, lsn),) = sql(
        cluster,
        "SELECT archived_count, failed_count, pg_current_wal_lsn() - '0/0'::pg_lsn "
        "FROM pg_stat_archiver",
    )
    return int(archived), int(failed), int(lsn)


def sustained_command(
    label: str, slot: str, work: Path, cluster: LocalCluster, exe: str
) -> tuple[str, Path, Path]:
    """(archive_command, its config file, its repository) for one sustained run."""
    repo = owned_dir(work / f"{slot}-repo")
    if label in (OURS, OURS_ASYNC):
        spool = owned_dir(work / f"{slot}-spool") if label == OURS_ASYNC else None
        conf = ours_conf(work / f"{slot}.yaml", repo, cluster, None, spool=spool, parallel=PARALLEL)
        return archive_command(conf, STANZA), conf, repo
    options = {"archive-async": "n"}
    if label == PGBR_ASYNC:
        spool = owned_dir(work / f"{slot}-spool")
        options = {"archive-async": "y", "process-max": str(PARALLEL), "spool-path": str(spool)}
    conf = pgbackrest_conf(work / f"{slot}-pgbackrest.conf", repo, work, cluster, options)
    run(pgbackrest_cmd(exe, conf, "stanza-create"), "pgbackrest stanza-create")
    return pgbr_archive_command(exe, conf), conf, repo


def sustained_run(
    label: str, slot: str, seconds: int, work: Path, cluster: LocalCluster, exe: str, script: Path
) -> dict:
    """``seconds`` of pgbench as fast as it goes with ``label`` as archive_command: WAL
    written and archived per second, the peak of pg_wal and of its backlog, then the time
    the archiver needs to catch up once the load stops."""
    command, conf, repo = sustained_command(label, slot, work, cluster, exe)
    sql(cluster, f"ALTER SYSTEM SET archive_command = {quote_setting(command)}")
    sql(cluster, "SELECT pg_reload_conf()")
    switch_and_wait(cluster)  # the new command runs, and everything before is archived
    sql(cluster, "TRUNCATE churn", "CHECKPOINT")
    switch_and_wait(cluster)
    sql(cluster, "CHECKPOINT")  # pg_wal back to what the checkpoints keep
    base_bytes, _ = pg_wal_now(cluster)
    archived0, failed0, lsn0 = archiver_counts(cluster)
    exe_pgbench = str(bindir(15) / "pgbench")
    conn = ["-h", "127.0.0.1", "-p", str(cluster.port), "-U", "postgres"]
    load = [exe_pgbench, *conn, "-n", "-c", "4", "-j", "2", "-T", str(seconds), "-f", str(script)]
    before = load_now([postmaster_pid(cluster) or 0])
    peak_bytes, peak_ready, samples = base_bytes, 0, []
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [*load, "postgres"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    while proc.poll() is None:
        size, ready = pg_wal_now(cluster)
        peak_bytes, peak_ready = max(peak_bytes, size), max(peak_ready, ready)
        samples.append((round(time.monotonic() - t0, 2), size, ready))
        time.sleep(0.25)
    loaded_s = time.monotonic() - t0
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise BenchError(f"pgbench failed: {err.strip()[-2000:]}")
    tps = float(re.search(r"tps = ([0-9.]+)", out).group(1))
    archived1, _, lsn1 = archiver_counts(cluster)
    _, ready_at_end = pg_wal_now(cluster)
    while True:  # catching up after the load
        size, ready = pg_wal_now(cluster)
        peak_bytes, peak_ready = max(peak_bytes, size), max(peak_ready, ready)
        if not ready:
            break
        if time.monotonic() - t0 > seconds + 600:
            raise BenchError(f"{label}: {ready} segments still not archived 600 s after the load")
        time.sleep(0.1)
    drained_s = time.monotonic() - t0 - loaded_s
    archived2, failed2, _ = archiver_counts(cluster)
    after = load_now([postmaster_pid(cluster) or 0])
    lingered = wait_gone(str(conf))  # a background process left to stop when idle
    objects = sum(1 for p in files_under(repo) if SEGMENT.match(p.name[:24]) and "-" in p.name)
    shutil.rmtree(repo)
    run_ = {
        "label": label,
        "seconds": loaded_s,
        "wal_bytes": lsn1 - lsn0,
        "archived_during_load": archived1 - archived0,
        "archived_total": archived2 - archived0,
        "failed": failed2 - failed0,
        "objects": objects,
        "ready_at_end_of_load": ready_at_end,
        "drain_s": drained_s,
        "peak_pg_wal_bytes": peak_bytes,
        "base_pg_wal_bytes": base_bytes,
        "peak_ready": peak_ready,
        "tps": tps,
        "lingered_s": lingered,
        "cpu_busy_s": after["busy_s"] - before["busy_s"],
        "samples": samples,
    }
    log(
        f"  sustained {label:<32} {run_['archived_during_load'] / loaded_s:5.1f} segments/s "
        f"archived ({(lsn1 - lsn0) / loaded_s / SEG_BYTES:5.1f} written), peak pg_wal "
        f"{peak_bytes / 2**20:,.0f} MiB, peak backlog {peak_ready}, caught up in {drained_s:.1f} s"
    )
    return run_


def sustained(args: argparse.Namespace, exe: str, work: Path, cluster: LocalCluster) -> list[dict]:
    """Rounds of the four archivers under the same load, the order reversed every round."""
    script = work / "churn.sql"
    script.write_text(CHURN)
    script.chmod(0o644)
    sql(cluster, "CREATE TABLE IF NOT EXISTS churn (id int, note text, blob bytea)")
    runs = []
    for r in range(args.sustained_rounds):
        wait_idle(args.wait_idle, str(cluster.data))
        for label in SUSTAINED if r % 2 == 0 else SUSTAINED[::-1]:
            slot = f"sustained{r + 1}-{SUSTAINED.index(label)}"
            runs.append(
                {
                    **sustained_run(
                        label, slot, args.sustained_seconds, work, cluster, exe, script
                    ),
                    "round": r,
                }
            )
    return runs


def render(r: dict) -> str:
    """The report, from the raw results alone (what the columns mean: bench/README.md)."""
    m, st, b, wl = r["machine"], r["stored"], r["breakdown"], r["workload"]
    p1, p2, p3 = (x["summaries"] for x in r["passes"])
    raw = r["segments"] * SEG_BYTES
    pgbr, ours = p1[PGBR]["median_ms"], p1[OURS]["median_ms"]
    ratio = ours / pgbr
    n = r["segments"]

    # Table 1: the four archivers per call, on the same segments.
    rounds = r["async"]
    a_times = {
        lab: [t for x in rounds if x["label"] == lab for t in x["times_s"]]
        for lab in (OURS_ASYNC, PGBR_ASYNC)
    }
    a_sum = {lab: summary(t) for lab, t in a_times.items()}
    a_rate = {
        lab: statistics.median(
            len(x["times_s"]) / x["drain_s"] for x in rounds if x["label"] == lab
        )
        for lab in a_times
    }
    hits = {lab: summary(t) for lab, t in r["hits"]["times_s"].items()}
    sync_rate = {lab: 1000 / p1[lab]["mean_ms"] for lab in (OURS, PGBR)}
    per_call = [
        ("sync", OURS, p1[OURS], as_ratio(ratio, bold=True), sync_rate[OURS]),
        ("sync", PGBR, p1[PGBR], as_ratio(1), sync_rate[PGBR]),
        (
            f"async, backlog of {n}",
            OURS_ASYNC,
            a_sum[OURS_ASYNC],
            as_ratio(a_sum[OURS_ASYNC]["median_ms"] / a_sum[PGBR_ASYNC]["median_ms"], bold=True),
            a_rate[OURS_ASYNC],
        ),
        (f"async, backlog of {n}", PGBR_ASYNC, a_sum[PGBR_ASYNC], as_ratio(1), a_rate[PGBR_ASYNC]),
        (
            "async, segment already done",
            OURS_ASYNC,
            hits[OURS_ASYNC],
            as_ratio(hits[OURS_ASYNC]["median_ms"] / hits[PGBR_ASYNC]["median_ms"]),
            None,
        ),
        ("async, segment already done", PGBR_ASYNC, hits[PGBR_ASYNC], as_ratio(1), None),
    ]
    t1 = [
        (
            mode,
            label,
            f"{x['median_ms']:.1f}",
            f"{x['p90_ms']:.1f}",
            f"{x['mean_ms']:.1f}",
            vs,
            f"{rate:.1f}" if rate else "",
        )
        for mode, label, x, vs, rate in per_call
    ]

    # Table 2: sustained load.
    runs = r["sustained"]
    agg = {}
    for lab in SUSTAINED:
        mine = [x for x in runs if x["label"] == lab]
        agg[lab] = {
            "runs": len(mine),
            "written": statistics.median(x["wal_bytes"] / x["seconds"] / 2**20 for x in mine),
            "rate": statistics.median(x["archived_during_load"] / x["seconds"] for x in mine),
            "share": statistics.median(
                x["archived_during_load"] * SEG_BYTES / x["wal_bytes"] for x in mine
            ),
            "peak_ready": max(x["peak_ready"] for x in mine),
            "peak_wal": max(x["peak_pg_wal_bytes"] for x in mine),
            "base_wal": statistics.median(x["base_pg_wal_bytes"] for x in mine),
            "drain": statistics.median(x["drain_s"] for x in mine),
            "tps": statistics.median(x["tps"] for x in mine),
        }
    ref = agg[PGBR_ASYNC]
    t2 = [
        (
            lab,
            x["runs"],
            f"{x['written']:.1f}",
            f"{x['rate']:.1f}",
            as_ratio(x["rate"] / ref["rate"], bold=lab == OURS_ASYNC),
            f"{x['share']:.0%}",
            x["peak_ready"],
            mib(x["peak_wal"]),
            as_ratio(x["peak_wal"] / ref["peak_wal"], bold=lab == OURS_ASYNC),
            f"{x['drain']:.1f}",
            f"{x['tps']:.0f}",
        )
        for lab, x in agg.items()
    ]

    # Table 3: the synchronous passes, as before.
    rows = []
    for k, summ in enumerate((p1, p2, p3), start=1):
        for label, x in summ.items():
            s_ = st[f"{k}:{label}"]
            if label == PGBR:
                vs = as_ratio(1)
            elif label == OURS:
                vs = as_ratio(ratio, bold=True) if k == 1 else "(reference)"
            else:  # chained through ours plain in the same pass
                vs = f"≈{as_ratio(x['median_ms'] / summ[OURS]['median_ms'] * ratio)}"
            rows.append(
                (k, label, f"{x['median_ms']:.1f}", f"{x['p90_ms']:.1f}", f"{x['mean_ms']:.1f}")
                + (vs, mib(s_["object_bytes"]), f"{s_['object_bytes'] / raw:.1%}")
                + (f"{mib(s_['repo_bytes'])}, {s_['repo_files']} files",)
            )

    # Table 4: where one call goes.
    spawn = b["launch_floor_ms"]
    start = b["python_startup_ms"] - spawn
    imports = b["imports"]["after_site_ms"]
    work, floor = b["warm_push_ms"], b["pgbackrest_version_ms"]
    hit_imports = r["hits"]["imports"]["after_site_ms"]
    hit = hits[OURS_ASYNC]["median_ms"]
    parts = [
        ("sync: spawn via `runuser` (`runuser … /bin/true`)", spawn, ours),
        ("sync: interpreter start incl. `site` (no teardown), minus the spawn", start, ours),
        ("sync: imports of `wal-push` beyond `site`", imports, ours),
        ("sync: the push itself, in a warm process", work, ours),
        ("sync: sum of the four", spawn + start + imports + work, ours),
        ("sync, in-process: one read of a segment (page cache)", b["work"]["read_ms"], ours),
        ("sync, in-process: one sha256 pass over a segment", b["work"]["sha256_ms"], ours),
        ("sync, in-process: zstd level 3 of a segment", b["work"]["zstd3_ms"], ours),
        (
            "sync, in-process: writing the compressed segment, fsynced",
            b["work"]["write_fsync_ms"],
            ours,
        ),
        ("sync, in-process: age-encrypting the compressed segment", b["work"]["age_ms"], ours),
        ("async, done: spawn via `runuser`", spawn, hit),
        ("async, done: the archive_command's shell check (`sh`, one `stat`)", hit - spawn, hit),
        ("async, done, in Python: imports of `wal-push` beyond `site`", hit_imports, ours),
        ("pgBackRest sync: whole median call", pgbr, pgbr),
        ("pgBackRest: `pgbackrest version` (its start-up floor)", floor, pgbr),
        ("pgBackRest sync: its push beyond that floor", pgbr - floor, pgbr),
    ]
    stale = r["stale_pyc"] if r["checkout_pyc"] else ["all (the checkout had no `.pyc`)"]
    heavy = ", ".join(f"{n_} {t:.1f}" for n_, t in b["imports"]["heaviest_self_ms"])
    hit_heavy = ", ".join(f"{n_} {t:.1f}" for n_, t in r["hits"]["imports"]["heaviest_self_ms"])
    head = ("pass", "variant", "median ms", "p90 ms", "mean ms", "vs pgBackRest", "stored")
    a_cpu = (
        f"{min(x['cpus_in_use'] for x in rounds):.2f}–{max(x['cpus_in_use'] for x in rounds):.2f}"
    )
    a_others = len({s_ for x in rounds for s_ in x["other_servers"]})
    s_cpu = max(x["cpu_busy_s"] / (x["seconds"] + x["drain_s"]) for x in runs)
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
            *table(
                (
                    "mode",
                    "archiver",
                    "median ms",
                    "p90 ms",
                    "mean ms",
                    "vs pgBackRest",
                    "segments/s",
                ),
                t1,
                "ll" + "r" * 5,
            ),
            "",
            *table(
                (
                    "under load",
                    "runs",
                    "WAL written MiB/s",
                    "archived segments/s",
                    "vs pgBackRest async",
                    "of WAL written",
                    "peak backlog",
                    "peak pg_wal",
                    "vs pgBackRest async",
                    "caught up after s",
                    "pgbench tps",
                ),
                t2,
            ),
            "",
            *table((*head, "of raw", "repository"), rows, "cl" + "r" * 7),
            "",
            *table(
                ("where one call of ours goes", "ms", "of that call's median"),
                ((what, f"{ms:.1f}", f"{ms / of:.0%}") for what, ms, of in parts),
            ),
            "",
            f"- Segments: {n} × 16 MiB ({mib(raw)}), picked evenly from "
            f"{wl['archived']} archived during `pgbench -i -s {wl['scale']}` and {wl['rounds']} "
            f"rounds of `pgbench -T {wl['tx_seconds_per_round']}` + "
            f"{wl['random_mib_per_round']} MiB of random rows.",
            f"- Asynchronous: {PARALLEL} workers each (`archive.parallel`, `process-max`); "
            f"{r['async_rounds']} rounds per tool, each a backlog of all {n} segments, "
            f"the order swapped every round; CPUs in use (of {m['nproc']}, everything "
            f"included) {a_cpu} per round; other PostgreSQL servers: {a_others}.",
            f"- Under load: {r['sustained_rounds']} rounds of {r['sustained_seconds']} s of "
            f"`pgbench -c 4 -j 2` per archiver (order reversed every round); pg_wal after a "
            f"checkpoint before each run: {mib(agg[OURS]['base_wal'])}; CPUs in use (of "
            f"{m['nproc']}), at most, averaged over a run: {s_cpu:.2f}.",
            f"- Other activity (sync passes): {r['foreign_cpu']} CPUs; other PostgreSQL servers: "
            f"{r['foreign_servers']}.",
            f"- Our push in a warm process ÷ pgBackRest's beyond its floor: "
            f"{as_ratio(work / (pgbr - floor))}; interpreter start and imports: "
            f"{(start + imports) / ours:.0%} of our median sync call. Import self-time (ms), "
            f"sync: {heavy}; async, a done file in Python: {hit_heavy}.",
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
        "--async-rounds",
        type=int,
        default=4,
        help="backlogs drained by each asynchronous archiver (default 4)",
    )
    p.add_argument(
        "--sustained-rounds",
        type=int,
        default=3,
        help="runs of each archiver under pgbench load (default 3)",
    )
    p.add_argument(
        "--sustained-seconds",
        type=int,
        default=30,
        help="seconds of pgbench load per run (default 30)",
    )
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
    require_server_user(p)
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

    # Asynchronous: PostgreSQL's archiver over a backlog, then calls whose segment is done.
    pg_control = work / "pg_control"
    shutil.copyfile(cluster.data / "global" / "pg_control", pg_control)
    log(f"async: {args.async_rounds} rounds, each tool draining a backlog of {n} segments")
    rounds = async_rounds(args, exe, work, cluster, segments, pg_control, cached_env)
    for x in rounds:
        problems += [
            f"async round {x['round'] + 1} {x['label']}: {p}" for p in x["stored"]["problems"]
        ]
        if x["stored"]["objects"] != n:
            problems.append(
                f"async round {x['round'] + 1} {x['label']}: {x['stored']['objects']}/{n} stored"
            )
    hits = hit_latency(exe, work, cluster, warm, pg_control, cached_env)

    # Where the time goes (bytecode cached, as in pass 1).
    reps = 15
    floor = median_ms([*as_postgres(), "/bin/true"], tool_env(), reps, "true")
    profile_repo = owned_dir(work / "importtime-repo")
    profile_conf = ours_conf(work / "importtime.yaml", profile_repo, cluster, None)
    profile = [*as_postgres(), str(PYTHON), "-X", "importtime", str(PGBACKUP)]
    profile += ["--config", str(profile_conf), "wal-push", str(warm)]
    run(profile, "a first call, which caches the config")  # as every later call finds it
    imports = import_profile(profile, cached_env)
    breakdown = {
        "launch_floor_ms": floor,
        "python_startup_ms": median_ms(
            # Without the interpreter's teardown, which wal-push skips too (os._exit).
            [*as_postgres(), str(PYTHON), "-c", "import os; os._exit(0)"],
            cached_env,
            reps,
            "python start",
        ),
        "cli_help_ms": median_ms(
            [*as_postgres(), str(PGBACKUP), "wal-push", "--help"], cached_env, reps, "--help"
        ),
        "pgbackrest_version_ms": median_ms(
            [*as_postgres(), exe, "version"], tool_env(), reps, "pgbackrest version"
        ),
        "imports": imports,
        "work": in_process(seg_paths, identity.to_public(), work),
        "warm_push_ms": statistics.median(
            warm_pushes(
                ours_conf(work / "warm.yaml", owned_dir(work / "warm-repo"), cluster, None),
                warm,
                seg_paths,
                cached_env,
            )
        ),
    }

    # Sustained load on the benchmark cluster itself, each archiver as archive_command.
    log(
        f"sustained: {args.sustained_rounds} rounds of {args.sustained_seconds} s of pgbench "
        "per archiver"
    )
    runs = sustained(args, exe, work, cluster)
    for x in runs:
        if x["failed"]:
            problems.append(f"sustained {x['label']}: archive_command failed {x['failed']} times")
        if x["objects"] < x["archived_total"]:
            problems.append(
                f"sustained {x['label']}: {x['objects']} objects for {x['archived_total']} archived"
            )

    fcpu = [x["foreign_cpu"] for x in loads]
    foreign = sorted({s for x in loads for s in x["postgres_servers"]} - {str(cluster.data)})
    pyc_prefix = f"PYTHONPYCACHEPREFIX=WORK/pycache {' '.join(as_postgres())} "
    report = {
        **report_head(work),
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
        "async_rounds": args.async_rounds,
        "async": rounds,
        "hits": hits,
        "sustained_rounds": args.sustained_rounds,
        "sustained_seconds": args.sustained_seconds,
        "sustained": runs,
        "churn": CHURN,
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
            "# asynchronous, in a data directory DATA whose pg_wal holds the backlog:",
            f"cd DATA && {' '.join(as_postgres())} {PGBACKUP} --config WORK/ours-async.yaml "
            "wal-push pg_wal/SEG",
            "cd DATA && "
            + " ".join(
                pgbackrest_cmd(
                    exe, Path("WORK/pgbackrest-async.conf"), "archive-push", "pg_wal/SEG"
                )
            ),
        ],
        "ours_yaml": (work / "p1-a-ours.yaml").read_text().replace(str(work), "WORK"),
        "pgbackrest_conf": (work / "p1-b-pgbackrest.conf").read_text().replace(str(work), "WORK"),
    }
    log(f"breakdown: {json.dumps(breakdown, default=str)}")
    log(f"other activity: {report['foreign_cpu']} CPUs; other PostgreSQL servers: {foreign}")
    return finish(NAME, HEADING, render, report, WHY, args.no_report)


if __name__ == "__main__":
    sys.exit(main())
