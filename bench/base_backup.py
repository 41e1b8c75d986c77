"""Side-by-side benchmark: base backup and restore with pgbackup against pg_basebackup and
pgBackRest.

One throwaway PostgreSQL 15 cluster is loaded with a database of about 1.2 GiB (pgbench
tables, which compress very well, plus ~40 % random ``bytea``, which does not compress at
all). Its ``archive_command`` archives every WAL file twice, ``pgbackup wal-push`` first
and then ``pgbackrest archive-push``, so that both tools have what they need for their
backups and restores. Then, on that same idle database:

1. full backups, alternating the tools round by round (ABCD, BCDA, CDAB, ...):
   ``take_base_backup`` (ours, in parts, plain and age-encrypted), bare ``pg_basebackup``
   with server-side zstd, and ``pgbackrest backup --type=full`` (zstd level 3,
   ``process-max=2``);
2. restores of the newest backup into an empty folder, alternating the same way:
   ``restore(..., start=False)`` (ours, plain and age, 2 workers and 1), ``pgbackrest
   restore`` (``process-max`` 2 and 1) and, as a reference, bare ``tar --zstd -x`` of our
   stored parts one after another;
3. the size of one backup of each tool in its repository;
4. a check that the last restore of each tool starts, recovers and holds the same rows;
5. delta restores: a table of ~5 % of the database is rewritten, both tools back up again
   and refresh their last full restore in place (``restore(delta=True)``, ``pgbackrest
   restore --delta``), and those copies are started and compared too.

Run from the checkout (as root on Debian, so pgBackRest can be installed and PostgreSQL
can run as ``postgres``)::

    .venv/bin/python bench/base_backup.py [--reps 5] [--scale 50]

The raw results go to ``bench/out/base_backup-last.json``; the section ``## Base backup
and restore vs pg_basebackup and pgBackRest`` of ``BENCHMARKS.md`` is rendered from that
file alone (tables; how to read them: ``bench/README.md``), printed, and replaces the
old one. ``--render-only`` renders it again without measuring. There are no timing
assertions: this measures, it does not judge.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import importlib
import os
import re
import secrets
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from common import (
    STANZA,
    ZSTD_LEVEL,
    BenchError,
    as_postgres,
    as_ratio,
    engine_note,
    ensure_command,
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
    quiet_options,
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
    tree_bytes,
    wait_idle,
)

from pg_backup_assets.core.base.backup import PGBB_DONE, take_base_backup
from pg_backup_assets.core.base.extract import RECORD, run_dir
from pg_backup_assets.core.base.restore import Target, restore
from pg_backup_assets.core.config import load_config
from pg_backup_assets.core.postgres.client import tool
from pg_backup_assets.core.postgres.local_cluster import (
    LocalCluster,
    hand_over,
    hand_over_tree,
)
from pg_backup_assets.core.storage.codec import generate_identity
from pg_backup_assets.core.storage.repository import ObjectRecord, Repository, record_dict
from pg_backup_assets.core.wal.archive import archive_command, quote_setting

NAME = "base_backup"
HEADING = "## Base backup and restore vs pg_basebackup and pgBackRest"
WHY = "a restore did not recover to the source's rows"
GIB = 1 << 30
MIB = 1 << 20
RANDOM_BATCH_MIB = 32
PGBB_OPTIONS = ["-Ft", "-X", "none", "-c", "fast", "--compress=server-zstd:level=3,workers=2"]
PGBR_OPTIONS = {
    "process-max": "2",
    "start-fast": "y",
    "repo1-retention-full": "99",  # nothing expires during the run; silences a warning
    "archive-async": "n",
}
PGBR_CIPHER = "aes-256-cbc"  # pgBackRest's only cipher; its repo2, beside the plain repo1

B_OURS = "pgbackup base backup"
B_OURS_AGE = "pgbackup base backup, age"
B_PGBB = "pg_basebackup (bare)"
B_PGBR = "pgBackRest backup"
B_PGBR_ENC = "pgBackRest backup, aes-256-cbc"
# Where compression happens (issue: "decided by measurement"): the stream pg_basebackup
# sends with none, zstd on the client without cutting it into parts, and lz4 on the server
# then zstd on the client. The bare row above is zstd on the server.
B_RAW = "pg_basebackup, plain stream to /dev/null (reference)"
B_ZSTD = "pg_basebackup, zstd on the client, not cut into parts (reference)"
B_LZ4 = "pg_basebackup, lz4 on the server, zstd on the client (reference)"
BACKUPS = (B_OURS, B_OURS_AGE, B_PGBB, B_PGBR, B_PGBR_ENC, B_RAW, B_ZSTD, B_LZ4)
STREAMS = (B_RAW, B_ZSTD, B_LZ4)
R_OURS = "pgbackup restore"
R_OURS_AGE = "pgbackup restore, age"
R_PGBR = "pgBackRest restore"
R_PGBR_ENC = "pgBackRest restore, aes-256-cbc"
R_TAR = "tar --zstd -x of our parts, one by one (reference)"
R_OURS_1 = "pgbackup restore, 1 worker"
R_PGBR_1 = "pgBackRest restore, process-max=1"
RESTORES = (R_OURS, R_OURS_AGE, R_PGBR, R_PGBR_ENC, R_TAR, R_OURS_1, R_PGBR_1)
D_OURS = "pgbackup restore --delta"
D_OURS_READ = "pgbackup restore --delta, every file read (no restore record)"
D_PGBR = "pgBackRest restore --delta"
DELTAS = (D_OURS, D_OURS_READ, D_PGBR)
CHURN_SHARE = 0.05  # the share of the database a delta restore finds changed
# --largest: ours and pgBackRest only, plain, on the largest database the disk holds.
NAME_LARGEST = "base_backup_largest"
HEADING_LARGEST = "## Base backup and restore at the largest size this disk allows"


# -- ours, with its phases timed ------------------------------------------------------------
class TimedRepository(Repository):
    """A Repository that records when it stored objects (``put_file``/``put_stream``,
    outermost call only) and when it ran ``verify``; nothing else changes. Where a base
    backup or a restore of ours spends its time."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.calls: list[tuple[str, str, float, float]] = []
        self._depth = 0

    def _timed(self, what: str, key: str, fn: Callable[[], Any]) -> Any:
        if self._depth:
            return fn()
        self._depth += 1
        t0 = time.perf_counter()
        try:
            return fn()
        finally:
            self._depth -= 1
            self.calls.append((what, key, t0, time.perf_counter()))

    def put_stream(
        self, key: str, src: BinaryIO, progress: Any = None, precompressed: bool = False
    ) -> ObjectRecord:
        parent = super()
        return self._timed(
            "store", key, lambda: parent.put_stream(key, src, progress, precompressed)
        )

    def put_file(self, key: str, path: Path, precompressed: bool = False) -> ObjectRecord:
        parent = super()
        return self._timed("store", key, lambda: parent.put_file(key, path, precompressed))

    def put_encoded(self, key: str, path: Path, enc: Any) -> ObjectRecord:
        parent = super()
        return self._timed("store", key, lambda: parent.put_encoded(key, path, enc))

    def verify(self, record: ObjectRecord) -> None:
        parent = super()
        self._timed("verify", record.key, lambda: parent.verify(record))


# -- one timed operation -----------------------------------------------------------------------
@dataclass
class Op:
    """One timed run of one tool: wall time until it returned, then until ``sync -f``."""

    label: str
    round: int
    seconds: float
    sync_s: float
    foreign_cpu: float
    other_servers: int
    bytes: int = 0
    files: int = 0
    phases: dict[str, float] = field(default_factory=dict)
    detail: dict[str, Any] = field(default_factory=dict)
    discarded: bool = False  # other processes were too busy meanwhile; run again


def sync_all() -> None:
    subprocess.run(["sync"], check=False)


def drop_page_cache() -> None:
    """Write back, then drop the clean page cache (as root; else nothing)."""
    sync_all()
    with contextlib.suppress(OSError):
        Path("/proc/sys/vm/drop_caches").write_text("3\n")


def sync_fs(path: Path) -> float:
    """Seconds that ``sync -f PATH`` (syncfs of its filesystem) takes."""
    t0 = time.perf_counter()
    subprocess.run(["sync", "-f", str(path)], check=False)
    return time.perf_counter() - t0


def measure(
    label: str,
    rnd: int,
    fn: Callable[[], dict[str, Any]],
    durable: Path,
    own: Sequence[int],
    mine: set[str],
) -> Op:
    """Run ``fn`` timed (a clean page cache of dirty data first; ``sync -f`` timed after)."""
    sync_all()
    before = load_now(own)
    t0 = time.perf_counter()
    extra = fn()
    seconds = time.perf_counter() - t0
    sync_s = sync_fs(durable)
    after = load_now(own)
    others = {*before["postgres_servers"], *after["postgres_servers"]} - mine
    op = Op(label, rnd, seconds, sync_s, foreign_cpu(before, after), len(others), **extra)
    log(
        f"  {label:<38} {seconds:7.2f} s  (+ sync {sync_s:.2f} s)  "
        f"{op.bytes / MIB:8.1f} MiB  other CPU {op.foreign_cpu:.2f}"
    )
    return op


# -- the database ------------------------------------------------------------------------------
def load(cluster: LocalCluster, scale: int, share: float, min_bytes: int) -> dict[str, Any]:
    """pgbench -i (compressible) plus random bytea rows (incompressible) until they make up
    ``share`` of the database; then VACUUM, CHECKPOINT and an archived WAL switch."""
    log(f"pgbench -i -s {scale}")
    t0 = time.monotonic()
    pgbench(cluster, "-i", "-q", "-s", str(scale))
    sql(
        cluster,
        "CREATE EXTENSION IF NOT EXISTS pgcrypto",
        "CREATE TABLE noise (id bigserial PRIMARY KEY, payload bytea NOT NULL)",
    )
    rows = RANDOM_BATCH_MIB * 1024  # 1 KiB of random bytes per row, stored inline
    batches = 0
    while True:
        ((noise, total),) = sql(
            cluster, "SELECT pg_total_relation_size('noise'), pg_database_size('postgres')"
        )
        if noise >= share * total and total >= min_bytes:
            break
        sql(
            cluster,
            "INSERT INTO noise (payload) SELECT gen_random_bytes(1024) "
            f"FROM generate_series(1, {rows})",
        )
        batches += 1
        if batches % 4 == 0:
            log(f"random bytea: {batches * RANDOM_BATCH_MIB} MiB inserted")
    ((total,),) = sql(cluster, "SELECT pg_database_size('postgres')")
    churn_rows = int(total * CHURN_SHARE / 1100)  # ~1 KiB of random bytes per row
    sql(cluster, "CREATE TABLE churn (id bigserial PRIMARY KEY, payload bytea NOT NULL)")
    sql(cluster, churn_sql(churn_rows))
    log(f"churn: {churn_rows:,} rows (what the delta restore finds changed)")
    log("VACUUM ANALYZE, CHECKPOINT")
    sql(cluster, "VACUUM ANALYZE", "CHECKPOINT")
    switch_and_wait(cluster)
    rels = sql(
        cluster,
        "SELECT c.relname, pg_total_relation_size(c.oid) FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relkind = 'r' AND n.nspname = 'public' ORDER BY 2 DESC",
    )
    ((db_bytes, accounts_rows, noise_rows),) = sql(
        cluster,
        "SELECT pg_database_size('postgres'), (SELECT count(*) FROM pgbench_accounts), "
        "(SELECT count(*) FROM noise)",
    )
    data_bytes = tree_bytes(cluster.data) - tree_bytes(cluster.data / "pg_wal")
    if db_bytes < min_bytes:
        raise BenchError(f"the database is {db_bytes:,} bytes, less than wanted: raise --scale")
    return {
        "scale": scale,
        "share_wanted": share,
        "random_batches": batches,
        "random_batch_mib": RANDOM_BATCH_MIB,
        "db_bytes": db_bytes,
        "data_dir_bytes": data_bytes,
        "relations": {name: size for name, size in rels},
        "accounts_rows": accounts_rows,
        "churn_rows": churn_rows,
        "noise_rows": noise_rows,
        "load_s": time.monotonic() - t0,
    }


def churn_sql(rows: int) -> str:
    return (
        f"INSERT INTO churn (payload) SELECT gen_random_bytes(1024) FROM generate_series(1, {rows})"
    )


CHECKS = (
    "SELECT count(*), md5(string_agg(md5(payload), '' ORDER BY id)) FROM churn",
    "SELECT count(*), md5(string_agg(md5(payload), '' ORDER BY id)) FROM noise",
    "SELECT count(*), sum(abalance), sum(bid) FROM pgbench_accounts",
    "SELECT count(*) FROM pgbench_branches",
    "SELECT count(*) FROM pgbench_tellers",
)


def fingerprint(cluster: LocalCluster) -> list[str]:
    return [repr(sql(cluster, q)[0]) for q in CHECKS]


def check_restored(data: Path, base: Path, want: list[str], timeout: float = 900) -> str:
    """Start a restored data directory (archiving off), let it recover to the end of the
    archive and compare its rows with the source; the result in words."""
    server = LocalCluster(base, data=data)
    try:
        server.adopt({"archive_mode": "off"}).start(timeout=int(timeout))
        deadline = time.monotonic() + timeout
        while sql(server, "SELECT pg_is_in_recovery()")[0][0]:
            if time.monotonic() > deadline:
                return f"still recovering after {timeout:.0f}s"
            time.sleep(0.5)
        got = fingerprint(server)
        return "identical rows" if got == want else f"DIFFERENT: {got} vs {want}"
    except Exception as exc:  # reported, not raised: the report says it
        return f"FAILED to start: {exc}"
    finally:
        server.stop()
        if server.running():
            log(f"WARNING: the server in {data} is still running")


# -- the benchmark -----------------------------------------------------------------------------
@dataclass
class Setup:
    work: Path
    exe: str
    cluster: LocalCluster
    day: str
    ours_conf: Path
    pgbr_conf: Path
    ours_repo: Path
    pgbr_repo: Path
    # age and pgBackRest's encrypted repo2: the full benchmark only (not --largest)
    age_conf: Path | None = None
    age_repo: Path | None = None
    pgbr_enc_repo: Path | None = None
    own: list[int] = field(default_factory=list)

    def pgbr_path(self, repo: int) -> Path:
        path = self.pgbr_repo if repo == 1 else self.pgbr_enc_repo
        if path is None:
            raise BenchError(f"no pgBackRest repo{repo} in this run")
        return path

    @property
    def mine(self) -> set[str]:
        return {str(self.cluster.data)}


def pgbr_sets(repo: Path) -> list[str]:
    folder = repo / "backup" / STANZA
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if re.fullmatch(r"\d{8}-\d{6}F", p.name))


def ours_backup(s: Setup, conf: Path) -> Callable[[], dict[str, Any]]:
    cfg = load_config(conf)
    repo = TimedRepository.from_config(cfg)

    def go() -> dict[str, Any]:
        lines: list[tuple[float, str]] = []
        t0 = time.perf_counter()
        backup = take_base_backup(
            repo, cfg.cluster(STANZA), s.day, log=lambda m: lines.append((time.perf_counter(), m))
        )
        t1 = time.perf_counter()
        puts = [(a, b) for what, _k, a, b in repo.calls if what == "store"]
        repo.calls.clear()
        folder = Path(cfg.repository) / backup.prefix
        done = next(t for t, m in lines if m.startswith(PGBB_DONE))  # pg_basebackup ended
        meanwhile = sum(max(0.0, min(b, done) - a) for a, b in puts)  # with age: encrypting
        after = sum(max(0.0, b - max(a, done)) for a, b in puts)
        return {
            "bytes": tree_bytes(folder),
            "files": len(files_under(folder)),
            "phases": {
                "pg_basebackup_s": done - t0,
                "stored_meanwhile_s": meanwhile,
                "store_s": after,
                "rest_s": (t1 - t0) - (done - t0) - after,
            },
            "detail": {
                "label": backup.label,
                "prefix": backup.prefix,
                "objects": {k: record_dict(v) for k, v in backup.objects.items()},
                "log": [f"{t - t0:.2f}s {m}" for t, m in lines],
            },
        }

    return go


def pgbb_backup(s: Setup, rnd: str) -> tuple[Callable[[], dict[str, Any]], list[str], Path]:
    dest = s.work / f"pg_basebackup-{rnd}"
    conn = ["-h", "127.0.0.1", "-p", str(s.cluster.port), "-U", "postgres", "--no-password"]
    cmd = [tool("pg_basebackup", 15), *PGBB_OPTIONS, "-D", str(dest), *conn]

    def go() -> dict[str, Any]:
        proc = subprocess.run(cmd, env=dict(os.environ), capture_output=True, check=False)
        if proc.returncode != 0:
            raise BenchError(f"pg_basebackup failed: {proc.stderr.decode()[-2000:]}")
        return {"bytes": tree_bytes(dest), "files": len(files_under(dest))}

    return go, cmd, dest


def pgbr_backup(s: Setup, repo: int = 1) -> tuple[Callable[[], dict[str, Any]], list[str]]:
    """A full backup into pgBackRest's ``repo`` (1: plain, 2: encrypted)."""
    cmd = pgbackrest_cmd(s.exe, s.pgbr_conf, "backup", "--type=full", f"--repo={repo}")
    path = s.pgbr_path(repo)

    def go() -> dict[str, Any]:
        had = set(pgbr_sets(path))
        run(cmd, "pgbackrest backup", timeout=3600)
        new = [x for x in pgbr_sets(path) if x not in had]
        if len(new) != 1:
            raise BenchError(f"expected one new pgBackRest backup set, found {new}")
        folder = path / "backup" / STANZA / new[0]
        return {
            "bytes": tree_bytes(folder),
            "files": len(files_under(folder)),
            "detail": {"label": new[0]},
        }

    return go, cmd


def empty_dir(path: Path) -> Path:
    path.mkdir(parents=True)
    path.chmod(0o700)
    hand_over(path)
    return path


def ours_restore(
    s: Setup, conf: Path, dest: Path, workers: int | None = None, delta: bool = False
) -> Callable[[], dict[str, Any]]:
    cfg = load_config(conf)
    repo = TimedRepository.from_config(cfg)

    def go() -> dict[str, Any]:
        t0 = time.perf_counter()
        result = restore(
            repo,
            cfg.cluster(STANZA),
            conf,
            dest,
            Target.parse(None, None),
            start=False,
            log=_quiet,
            workers=workers,
            delta=delta,
        )
        total = time.perf_counter() - t0
        verify = sum(b - a for what, _k, a, b in repo.calls if what == "verify")
        repo.calls.clear()
        fe = result.fetch_extract_s
        return {
            "bytes": tree_bytes(dest),
            "files": len(files_under(dest)),
            "phases": {
                "verify_s": verify,
                "extract_s": fe - verify,
                "rest_s": total - fe,
            },
            "detail": {
                "label": result.backup.label,
                "workers": workers or os.cpu_count(),
                **({"extracted": vars(result.extracted)} if delta else {}),
            },
        }

    return go


def _quiet(_msg: str) -> None:
    pass


def pgbr_restore(
    s: Setup, dest: Path, *options: str, repo: int = 1
) -> tuple[Callable[[], dict[str, Any]], list[str]]:
    """A restore from pgBackRest's ``repo`` (named: with two, it would pick either)."""
    cmd = pgbackrest_cmd(
        s.exe, s.pgbr_conf, f"--pg1-path={dest}", f"--repo={repo}", *options, "restore"
    )

    def go() -> dict[str, Any]:
        run(cmd, "pgbackrest restore", timeout=3600)
        return {"bytes": tree_bytes(dest), "files": len(files_under(dest))}

    return go, cmd


def stream_backup(
    s: Setup, label: str, rnd: str
) -> tuple[Callable[[], dict[str, Any]], list[str], Path]:
    """``pg_basebackup``'s stream with compression in another place than ours (``STREAMS``),
    not cut into parts, without a manifest where a compressed stream cannot carry one."""
    out = s.work / f"stream-{rnd}.tar.zst"
    pgbb = [tool("pg_basebackup", 15), "-Ft", "-X", "none", "-c", "fast", "-D", "-"]
    conn = ["-h", "127.0.0.1", "-p", str(s.cluster.port), "-U", "postgres", "--no-password"]
    zstd = ["zstd", f"-{ZSTD_LEVEL}", f"-T{os.cpu_count() or 1}", "-q", "-f", "-o", str(out)]
    if label == B_RAW:
        stages = [[*pgbb, *conn]]
    elif label == B_ZSTD:
        stages = [[*pgbb, *conn], zstd]
    else:
        lz4 = ["--no-manifest", "--compress=server-lz4"]
        stages = [[*pgbb, *lz4, *conn], ["lz4", "-d", "-q"], zstd]
    cmd = " | ".join(shlex.join(st) for st in stages) + (" > /dev/null" if label == B_RAW else "")

    def go() -> dict[str, Any]:
        proc = subprocess.run(
            ["bash", "-o", "pipefail", "-c", cmd], capture_output=True, check=False
        )
        if proc.returncode != 0:
            raise BenchError(f"{label} failed: {proc.stderr.decode()[-2000:]}")
        size = out.stat().st_size if out.exists() else 0
        return {"bytes": size, "files": int(out.exists())}

    return go, [cmd], out


def tar_restore(archives: list[Path], dest: Path) -> tuple[Callable[[], dict[str, Any]], list[str]]:
    cmd = ["tar", "-x", "-f", "PART", "-C", str(dest), "--no-same-owner", "--zstd"]

    def go() -> dict[str, Any]:
        for archive in archives:
            proc = subprocess.run(
                [str(archive) if c == "PART" else c for c in cmd], capture_output=True, check=False
            )
            if proc.returncode != 0:
                raise BenchError(f"tar failed: {proc.stderr.decode()[-2000:]}")
        return {"bytes": tree_bytes(dest), "files": len(files_under(dest))}

    return go, ["for PART in part-*.tar.zst pg_control.tar.zst; do", *cmd, "; done"]


def shown(cmd: Sequence[str], **names: Path | str) -> str:
    """A command as the report shows it: ``names`` (e.g. ``DIR=dest``) replace paths."""
    text = " ".join(cmd)
    for name, value in sorted(names.items(), key=lambda kv: -len(str(kv[1]))):
        text = text.replace(str(value), name)
    return text


def references(archives: list[Path], scratch: Path, n: int = 3) -> dict[str, float]:
    """In-process medians on our stored parts (in the page cache): one read, one sha256
    pass, and a copy into new files on the same disk, fsynced (each after a ``sync``)."""
    out: dict[str, list[float]] = {"read_s": [], "sha256_s": [], "copy_fsync_s": []}
    for i in range(n):
        sync_all()
        t0 = time.perf_counter()
        for archive in archives:
            with open(archive, "rb") as f:
                while f.read(MIB):
                    pass
        t1 = time.perf_counter()
        for archive in archives:
            sha256_file(archive)
        t2 = time.perf_counter()
        for archive in archives:
            dst = scratch / f"copy-{i}"
            with open(archive, "rb") as f, open(dst, "wb") as g:
                shutil.copyfileobj(f, g, MIB)
                g.flush()
                os.fsync(g.fileno())
            dst.unlink()
        t3 = time.perf_counter()
        for key, d in zip(out, (t1 - t0, t2 - t1, t3 - t2), strict=True):
            out[key].append(d)
    size = sum(a.stat().st_size for a in archives)
    return {k: statistics.median(v) for k, v in out.items()} | {"bytes": size}


ENGINE_MODULES = (
    "pg_backup_assets.core.base.backup",
    "pg_backup_assets.core.base.restore",
    "pg_backup_assets.core.base.parts",
    "pg_backup_assets.core.base.extract",
    "pg_backup_assets.core.base.untar",
    "pg_backup_assets.core.storage.encoder",
    "pg_backup_assets.core.catalog",
    "pg_backup_assets.core.storage.repository",
    "pg_backup_assets.core.storage.local",
    "pg_backup_assets.core.storage.codec",
)


def engine_fingerprint() -> dict[str, str]:
    """Short sha256 of the engine modules this benchmark exercises (they change often),
    found through the modules themselves so that a move cannot leave a stale path here."""
    return {
        name.removeprefix("pg_backup_assets.core."): sha256_file(
            Path(importlib.import_module(name).__file__)
        )[:12]
        for name in ENGINE_MODULES
    }


def rotated(items: Sequence[str], rnd: int) -> list[str]:
    k = rnd % len(items)
    return [*items[k:], *items[:k]]


def source_settings(exe: str, ours: Path, pgbr: Path) -> tuple[dict[str, str], str]:
    """The benchmark database's server settings (also ``rehearsal.py``'s): every WAL file
    archived by ``pgbackup wal-push`` and then by ``pgbackrest archive-push``, so that both
    tools can back up and restore it; and that archive_command."""
    pgbr_push = " ".join(pgbackrest_cmd(exe, pgbr, "archive-push")[len(as_postgres()) :])
    both = f"{archive_command(ours, STANZA)} && {pgbr_push} %p"
    settings = {
        "archive_mode": "on",
        "archive_command": quote_setting(both),
        "wal_level": "replica",
        "max_wal_size": "'2GB'",
        "checkpoint_timeout": "'30min'",
        "shared_buffers": "'256MB'",
        "autovacuum": "off",
        "synchronous_commit": "off",
    }
    return settings, both


def bench(args: argparse.Namespace, exe: str, work: Path, cluster: LocalCluster) -> int:
    engine = engine_fingerprint()  # the code imported at start-up is the code that runs
    ensure_command("lz4", "lz4")  # the reference row with lz4 on the server
    day = dt.datetime.now(dt.UTC).date().isoformat()
    ours_repo = owned_dir(work / "ours-repo")
    age_repo = owned_dir(work / "ours-age-repo")
    pgbr_repo = owned_dir(work / "pgbackrest-repo")
    pgbr_enc_repo = owned_dir(work / "pgbackrest-enc-repo")
    cipher_pass = secrets.token_urlsafe(32)
    pgbr_options = {
        **PGBR_OPTIONS,
        "repo2-path": str(pgbr_enc_repo),
        "repo2-cipher-type": PGBR_CIPHER,
        "repo2-cipher-pass": cipher_pass,
        "repo2-retention-full": "99",
    }
    key_text, recipient = generate_identity()
    key = work / "age.key"
    key.write_text(key_text)
    key.chmod(0o600)
    hand_over(key)
    s = Setup(
        work=work,
        exe=exe,
        cluster=cluster,
        day=day,
        ours_conf=ours_conf(work / "ours.yaml", ours_repo, cluster, None),
        age_conf=ours_conf(work / "ours-age.yaml", age_repo, cluster, recipient, key),
        pgbr_conf=pgbackrest_conf(work / "pgbackrest.conf", pgbr_repo, work, cluster, pgbr_options),
        ours_repo=ours_repo,
        age_repo=age_repo,
        pgbr_repo=pgbr_repo,
        pgbr_enc_repo=pgbr_enc_repo,
    )
    s.pgbr_conf.chmod(0o640)  # it holds the cipher pass: readable by root and postgres only
    shutil.chown(s.pgbr_conf, group="postgres")
    settings, both = source_settings(exe, s.ours_conf, s.pgbr_conf)
    cluster.init(settings, fast=True).start()
    s.own = [pid for pid in [postmaster_pid(cluster)] if pid]
    pg_version = sql(cluster, "SHOW server_version")[0][0]
    pgbr_version = run([*as_postgres(), exe, "version"], "pgbackrest version").stdout.strip()
    run(pgbackrest_cmd(exe, s.pgbr_conf, "stanza-create"), "pgbackrest stanza-create")
    run(pgbackrest_cmd(exe, s.pgbr_conf, "check"), "pgbackrest check")  # archiving works
    db = load(cluster, args.scale, args.random_share, int(args.min_gib * GIB))
    want = fingerprint(cluster)
    log(
        f"database: {db['db_bytes'] / GIB:.2f} GiB (pg_database_size), noise "
        f"{db['relations']['noise'] / db['db_bytes']:.0%}; data directory without pg_wal "
        f"{db['data_dir_bytes'] / GIB:.2f} GiB"
    )

    ops: list[Op] = []
    waits: list[dict[str, Any]] = []
    commands: dict[str, str] = {}
    kept: dict[str, Any] = {}  # the newest backup of each tool, older ones are removed

    def idle(phase: str, rnd: int) -> None:
        t0 = time.monotonic()
        now = wait_idle(args.wait_idle, str(cluster.data), args.max_busy, s.own)
        others = sorted(set(now["postgres_servers"]) - s.mine)
        waits.append({"phase": phase, "round": rnd, "waited_s": time.monotonic() - t0})
        if others:
            waits[-1]["other_servers"] = others

    def sample(label: str, rnd: int, once: Callable[[str, int, int], Op]) -> None:
        """One timed run of ``label``; run again (after waiting for quiet) when other
        processes used more than --max-noise CPUs meanwhile. Discarded runs are kept in
        the raw data, marked, and counted in the report."""
        for attempt in range(args.retries + 1):
            op = once(label, rnd, attempt)
            ops.append(op)
            if op.foreign_cpu <= args.max_noise or attempt == args.retries:
                return
            op.discarded = True
            log(f"  discarded: other processes used {op.foreign_cpu:.2f} CPUs; again")
            idle(f"retry {label}", rnd)

    # -- backups -------------------------------------------------------------------------
    do_ours, do_age = ours_backup(s, s.ours_conf), ours_backup(s, s.age_conf)

    def backup_once(label: str, rnd: int, attempt: int) -> Op:
        if label in (B_OURS, B_OURS_AGE):
            repo = s.ours_repo if label == B_OURS else s.age_repo
            op = measure(label, rnd, do_ours if label == B_OURS else do_age, repo, s.own, s.mine)
            old = kept.get(label)
            if old:
                shutil.rmtree(repo / old["prefix"])
        elif label == B_PGBB:
            go, cmd, dest = pgbb_backup(s, f"{rnd}-{attempt}")
            commands[B_PGBB] = shown(cmd, DIR=dest, WORK=work) + "   # as root"
            op = measure(label, rnd, go, work, s.own, s.mine)
            shutil.rmtree(dest)
        elif label in STREAMS:
            go, cmd, dest = stream_backup(s, label, f"{rnd}-{attempt}")
            commands[label] = shown(cmd, FILE=dest, WORK=work) + "   # as root"
            op = measure(label, rnd, go, work, s.own, s.mine)
            dest.unlink(missing_ok=True)
        else:
            n = 1 if label == B_PGBR else 2
            go, cmd = pgbr_backup(s, n)
            commands[label] = shown(cmd, WORK=work) + "   # as postgres"
            op = measure(label, rnd, go, s.pgbr_path(n), s.own, s.mine)
            old = kept.get(label)
            if old:
                expire = pgbackrest_cmd(
                    exe, s.pgbr_conf, "expire", f"--repo={n}", f"--set={old['label']}"
                )
                run(expire, "pgbackrest expire")
        if label != B_PGBB and label not in STREAMS:
            kept[label] = op.detail
        return op

    for rnd in range(-args.warmup, args.reps):
        idle("backup", rnd)
        log(f"backup round {rnd + 1}/{args.reps}" if rnd >= 0 else "backup warm-up (untimed)")
        for label in rotated(BACKUPS, rnd):
            sample(label, rnd, backup_once)

    # The age repository gets a copy of the WAL archive, which restore checks for the
    # backup's WAL (restore with start=False fetches none of it).
    shutil.copytree(s.ours_repo / STANZA / "wal", s.age_repo / STANZA / "wal")
    hand_over_tree(s.age_repo / STANZA / "wal")  # wal-fetch runs as postgres
    objects = kept[B_OURS]["objects"]
    archives = [
        s.ours_repo / objects[k]["key"]
        for k in sorted(objects, key=lambda k: (k.startswith("pg_control"), k))
        if k != "backup_manifest"
    ]
    refs = references(archives, work)
    log(f"in-process references on the stored parts: {refs}")

    # -- restores ------------------------------------------------------------------------
    restored: dict[str, Path] = {}

    def restore_once(label: str, rnd: int, attempt: int) -> Op:
        slug = re.sub(r"[^a-z]+", "-", label.lower()).strip("-")[:20]
        dest = empty_dir(work / f"restore-{slug}-{rnd}-{attempt}")
        if label == R_OURS:
            go = ours_restore(s, s.ours_conf, dest)
        elif label == R_OURS_AGE:
            go = ours_restore(s, s.age_conf, dest)
        elif label == R_OURS_1:
            go = ours_restore(s, s.ours_conf, dest, workers=1)
        elif label == R_PGBR:
            go, cmd = pgbr_restore(s, dest)
            commands[R_PGBR] = shown(cmd, DIR=dest, WORK=work) + "   # as postgres"
        elif label == R_PGBR_ENC:
            go, cmd = pgbr_restore(s, dest, repo=2)
            commands[R_PGBR_ENC] = shown(cmd, DIR=dest, WORK=work) + "   # as postgres"
        elif label == R_PGBR_1:
            go, cmd = pgbr_restore(s, dest, "--process-max=1")
            commands[R_PGBR_1] = shown(cmd, DIR=dest, WORK=work) + "   # as postgres"
        else:
            go, cmd = tar_restore(archives, dest)
            commands[R_TAR] = shown(cmd, DIR=dest) + "   # as root, in the backup's folder"
        op = measure(label, rnd, go, dest, s.own, s.mine)
        old = restored.get(label)
        if old:
            shutil.rmtree(old)
        restored[label] = dest
        return op

    for rnd in range(-args.warmup, args.reps):
        idle("restore", rnd)
        log(f"restore round {rnd + 1}/{args.reps}" if rnd >= 0 else "restore warm-up (untimed)")
        for label in rotated(RESTORES, rnd):
            sample(label, rnd, restore_once)

    # -- are the restores usable? -------------------------------------------------------
    shutil.rmtree(restored.pop(R_TAR))  # no recovery settings: nothing to start
    verified = {}
    # The last full restores of ours and pgBackRest stay as they are (never started, which
    # would change every page it reads): the stale copies the delta restores refresh.
    # The 1-worker copy of ours is refreshed without its restore record: every file read.
    stale = {
        D_OURS: restored.pop(R_OURS),
        D_OURS_READ: restored.pop(R_OURS_1),
        D_PGBR: restored.pop(R_PGBR),
    }
    (run_dir(stale[D_OURS_READ]) / RECORD).unlink()
    for label, dest in restored.items():
        log(f"starting the last {label} to check it")
        verified[label] = check_restored(dest, work / f"check-{dest.name}", want)
        log(f"  {label}: {verified[label]}")
        shutil.rmtree(dest, ignore_errors=True)

    # -- delta restores into the stale copies, after a change -----------------------------
    log(f"changing ~{CHURN_SHARE:.0%} of the database (churn rewritten); new backups")
    sql(cluster, "TRUNCATE churn", churn_sql(db["churn_rows"]), "VACUUM ANALYZE churn")
    sql(cluster, "CHECKPOINT")
    switch_and_wait(cluster)
    for label in (B_OURS, B_PGBR):
        sample(label, -1, backup_once)  # untimed in the backup table: round -1
    want = fingerprint(cluster)

    def delta_once(label: str, rnd: int, attempt: int) -> Op:
        dest = stale[label]
        # A stale copy is not in memory: each tool reads (or not) from the disk.
        drop_page_cache()
        if label in (D_OURS, D_OURS_READ):
            go = ours_restore(s, s.ours_conf, dest, delta=True)
        else:
            go, cmd = pgbr_restore(s, dest, "--delta")
            commands[D_PGBR] = shown(cmd, DIR=dest, WORK=work) + "   # as postgres"
        return measure(label, rnd, go, dest, s.own, s.mine)

    idle("delta", 0)
    for label in DELTAS:  # once each: a second delta restore would find nothing to do
        ops.append(delta_once(label, 0, 0))
    restored = dict(stale)
    for label, dest in restored.items():
        log(f"starting the last {label} to check it")
        verified[label] = check_restored(dest, work / f"check-{dest.name}", want)
        log(f"  {label}: {verified[label]}")
        shutil.rmtree(dest, ignore_errors=True)

    report = {
        **report_head(work),
        "pg_version": pg_version,
        "pgbackrest_version": pgbr_version,
        "tar_version": subprocess.run(
            ["tar", "--version"], capture_output=True, text=True
        ).stdout.splitlines()[0],
        "zstd_cli": subprocess.run(
            ["zstd", "--version"], capture_output=True, text=True
        ).stdout.strip(),
        "reps": args.reps,
        "engine": engine,
        "engine_changed_during_run": engine != engine_fingerprint(),
        "warmup": args.warmup,
        "references": refs,
        "max_busy": args.max_busy,
        "max_noise": args.max_noise,
        "database": db,
        "ops": [vars(o) for o in ops],
        "waits": waits,
        "verified": verified,
        "commands": commands,
        "settings": settings,
        "ours_yaml": s.ours_conf.read_text().replace(str(work), "WORK"),
        "age_yaml": s.age_conf.read_text().replace(str(work), "WORK").replace(recipient, "age1…"),
        "pgbackrest_conf": s.pgbr_conf.read_text()
        .replace(str(work), "WORK")
        .replace(cipher_pass, "…"),
        "archive_command": both.replace(str(work), "WORK"),
        "problems": [f"{k}: {v}" for k, v in verified.items() if v != "identical rows"],
        "churn_share": CHURN_SHARE,
    }
    return finish(NAME, HEADING, render, report, WHY, args.no_report)


def bench_largest(args: argparse.Namespace, exe: str, work: Path, cluster: LocalCluster) -> int:
    """``--largest``: ours and pgBackRest only, plain, backup and restore; the disk holds
    the cluster, one or two backups per tool and one restored copy at a time. The load is
    not archived (nothing restores that far back): archiving starts after it."""
    engine = engine_fingerprint()
    at_start = shutil.disk_usage(work)
    base_used = at_start.used
    peak = {"used": 0}

    def disk() -> None:
        peak["used"] = max(peak["used"], shutil.disk_usage(work).used - base_used)

    day = dt.datetime.now(dt.UTC).date().isoformat()
    ours_repo, pgbr_repo = owned_dir(work / "ours-repo"), owned_dir(work / "pgbackrest-repo")
    ours_yaml = ours_conf(work / "ours.yaml", ours_repo, cluster, None)
    conf = pgbackrest_conf(work / "pgbackrest.conf", pgbr_repo, work, cluster, PGBR_OPTIONS)
    s = Setup(work, exe, cluster, day, ours_yaml, conf, ours_repo, pgbr_repo)  # no age, no repo2
    settings, both = source_settings(exe, s.ours_conf, s.pgbr_conf)
    cluster.init({**settings, "archive_command": "'/bin/true'"}, fast=True).start()
    s.own = [pid for pid in [postmaster_pid(cluster)] if pid]
    pg_version = sql(cluster, "SHOW server_version")[0][0]
    pgbr_version = run([*as_postgres(), exe, "version"], "pgbackrest version").stdout.strip()
    db = load(cluster, args.scale, args.random_share, int(args.min_gib * GIB))
    disk()
    sql(cluster, f"ALTER SYSTEM SET archive_command = {settings['archive_command']}")
    sql(cluster, "SELECT pg_reload_conf()")
    run(pgbackrest_cmd(exe, s.pgbr_conf, "stanza-create"), "pgbackrest stanza-create")
    run(pgbackrest_cmd(exe, s.pgbr_conf, "check"), "pgbackrest check")  # archiving works
    want = fingerprint(cluster)
    log(f"database: {db['db_bytes'] / GIB:.2f} GiB (pg_database_size)")

    ops: list[Op] = []
    kept: dict[str, Any] = {}
    verified: dict[str, str] = {}
    do_ours = ours_backup(s, s.ours_conf)
    for rnd in range(-args.warmup, args.reps):
        wait_idle(args.wait_idle, str(cluster.data), args.max_busy, s.own)
        log(f"backup round {rnd + 1}/{args.reps}" if rnd >= 0 else "backup warm-up (untimed)")
        for label in rotated((B_OURS, B_PGBR), rnd):
            old = kept.get(label)
            if label == B_OURS and old:  # before the next: one backup of ours at a time
                shutil.rmtree(s.ours_repo / old["prefix"])
            if label == B_OURS:
                op = measure(label, rnd, do_ours, s.ours_repo, s.own, s.mine)
            else:
                op = measure(label, rnd, pgbr_backup(s)[0], s.pgbr_repo, s.own, s.mine)
            disk()
            if label == B_PGBR and old:  # pgBackRest keeps a full backup: the old one after
                expire = pgbackrest_cmd(exe, s.pgbr_conf, "expire", f"--set={old['label']}")
                run(expire, "pgbackrest expire")
            kept[label] = op.detail
            ops.append(op)
    for rnd in range(-args.warmup, args.reps):
        wait_idle(args.wait_idle, str(cluster.data), args.max_busy, s.own)
        log(f"restore round {rnd + 1}/{args.reps}" if rnd >= 0 else "restore warm-up (untimed)")
        for label in rotated((R_OURS, R_PGBR), rnd):
            dest = empty_dir(work / f"restore-{rnd}")
            go = ours_restore(s, s.ours_conf, dest) if label == R_OURS else pgbr_restore(s, dest)[0]
            ops.append(measure(label, rnd, go, dest, s.own, s.mine))
            disk()
            if rnd == args.reps - 1:  # the last one of each is started and compared
                log(f"starting the last {label} to check it")
                verified[label] = check_restored(dest, work / f"check-{rnd}", want)
                log(f"  {label}: {verified[label]}")
                disk()
            shutil.rmtree(dest, ignore_errors=True)
            shutil.rmtree(work / f"check-{rnd}", ignore_errors=True)
    report = {
        **report_head(work),
        "pg_version": pg_version,
        "pgbackrest_version": pgbr_version,
        "reps": args.reps,
        "warmup": args.warmup,
        "engine": engine,
        "engine_changed_during_run": engine != engine_fingerprint(),
        "database": db,
        "ops": [vars(o) for o in ops],
        "verified": verified,
        "disk": {"peak_used": peak["used"], "free_at_start": at_start.free},
        "problems": [f"{k}: {v}" for k, v in verified.items() if v != "identical rows"],
    }
    return finish(NAME_LARGEST, HEADING_LARGEST, render_largest, report, WHY, args.no_report)


def table_row(st: dict[str, dict], kind: str, label: str, peers: Sequence[dict | None]) -> tuple:
    """A row of a report's first table: ``label``'s runs, median, spread, durable median,
    its ratio to each of ``peers`` (bold for ours plain) and its output."""
    x, bold = st[label], label in (B_OURS, R_OURS, R_OURS_1, D_OURS)
    vs = [as_ratio(x["median"] / p["median"], bold) if p else "" for p in peers]
    spread = f"{x['min']:.2f}–{x['max']:.2f}"
    return (kind, label, x["n"], f"{x['median']:.2f}", spread, f"{x['durable']:.2f}", *vs) + (
        f"{mib(x['bytes'])}, {x['files']:,} files",
    )


def render_largest(r: dict) -> str:
    """``--largest``'s report, from its raw results alone."""
    m, db, ops = r["machine"], r["database"], r["ops"]
    st = {x: stats(ops, x) for x in (B_OURS, B_PGBR, R_OURS, R_PGBR)}
    rows = [
        table_row(st, kind, label, (st[peer],))
        for kind, ours, peer in (("backup", B_OURS, B_PGBR), ("restore", R_OURS, R_PGBR))
        for label in (ours, peer)
    ]
    head = ("run", "tool", "runs", "median s", "min–max s", "durable s", "vs pgBackRest", "output")
    return "\n".join(
        [
            HEADING_LARGEST,
            "",
            measured(
                r,
                f'bench-base BENCH_ARGS="--largest --scale {db["scale"]}"',
                f"PostgreSQL {r['pg_version']}, {r['pgbackrest_version']}, Python {m['python']}",
            ),
            "",
            *table(head, rows, "llc" + "r" * 5),
            "",
            f"- Database: {db['db_bytes'] / GIB:.2f} GiB (`pgbench -s {db['scale']}` and "
            f"{db['share_wanted']:.0%} random rows); data directory without `pg_wal` "
            f"{mib(db['data_dir_bytes'])}. Peak disk use of the run "
            f"{r['disk']['peak_used'] / GIB:.1f} GiB; the same options and tools as the section "
            "above, plain only, 2 workers (`process-max=2`).",
            f"- {r['reps']} runs per tool after {r['warmup']} warm-up round(s). Restores started "
            "and compared with the source: "
            + "; ".join(f"{k}: {v}" for k, v in r["verified"].items())
            + ".",
            engine_note(r),
            "",
        ]
    )


# -- the report --------------------------------------------------------------------------------
PHASES = {  # rows of "where ours goes": what, and its phase (None: the whole run)
    "backup": (
        ("`pg_basebackup`, its stream cut into parts and encoded meanwhile", "pg_basebackup_s"),
        ("storing into the repository meanwhile (overlapped)", "stored_meanwhile_s"),
        ("storing after `pg_basebackup` ended: parts (fsync, rename), manifest", "store_s"),
        ("the rest (catalog, staging folder removed)", "rest_s"),
        ("whole run", None),
    ),
    "restore": (
        ("a separate sha256 pass (`verify`)", "verify_s"),
        ("extraction and the manifest", "extract_s"),
        ("the rest (WAL check, `chown`, settings)", "rest_s"),
        ("whole run", None),
    ),
}


def stats(ops: list[dict], label: str) -> dict[str, Any]:
    mine = [o for o in ops if o["label"] == label and o["round"] >= 0 and not o["discarded"]]
    secs = [o["seconds"] for o in mine]
    durable = [o["seconds"] + o["sync_s"] for o in mine]
    phases: dict[str, float] = {}
    for name in mine[0]["phases"]:
        phases[name] = statistics.median(o["phases"][name] for o in mine)
    return {
        "n": len(mine),
        "median": statistics.median(secs),
        "min": min(secs),
        "max": max(secs),
        "durable": statistics.median(durable),
        "sync": statistics.median(o["sync_s"] for o in mine),
        "bytes": mine[-1]["bytes"],
        "files": mine[-1]["files"],
        "foreign_max": max(o["foreign_cpu"] for o in mine),
        "other_servers": max(o["other_servers"] for o in mine),
        "phases": phases,
        "all": secs,
    }


def render(r: dict) -> str:
    """The report, from the raw results alone (what the columns mean: bench/README.md)."""
    m, db, ops = r["machine"], r["database"], r["ops"]
    present = {o["label"] for o in ops}  # older raw results lack the newer rows
    st = {x: stats(ops, x) for x in (*BACKUPS, *RESTORES, *DELTAS) if x in present}
    b_ours, b_age, b_pgbb, b_pgbr = (st[x] for x in (B_OURS, B_OURS_AGE, B_PGBB, B_PGBR))
    r_ours, r_age, r_pgbr, r_tar = (st[x] for x in (R_OURS, R_OURS_AGE, R_PGBR, R_TAR))
    r_ours1, r_pgbr1 = st[R_OURS_1], st[R_PGBR_1]
    b_enc, r_enc = st.get(B_PGBR_ENC), st.get(R_PGBR_ENC)
    d_ours, d_read, d_pgbr = (st[x] for x in DELTAS)
    delta_op = next(o for o in ops if o["label"] == D_OURS)
    extracted = delta_op["detail"].get("extracted", {})

    def row(kind: str, label: str, peers: tuple[dict, dict | None]) -> tuple:
        return table_row(st, kind, label, peers)

    def cells(v: float | None, of: dict) -> tuple[str, str]:
        return ("", "") if v is None else (f"{v:.2f}", f"{v / of['median']:.0%}")

    refs = {
        "backup": [
            ("bare `pg_basebackup`, same options", b_pgbb["median"]),
            (
                f"one read of our {mib(r['references']['bytes'])} of parts",
                r["references"]["read_s"],
            ),
            ("one sha256 pass over it", r["references"]["sha256_s"]),
            ("copying it to a new file, fsynced", r["references"]["copy_fsync_s"]),
        ],
        "restore": [
            ("bare `tar --zstd -x` of the parts, one by one", r_tar["median"]),
            (R_PGBR, r_pgbr["median"]),
        ],
    }
    parts = []
    for kind, plain, age in (("backup", b_ours, b_age), ("restore", r_ours, r_age)):
        for what, key in PHASES[kind]:
            v = [x["median"] if key is None else x["phases"].get(key, 0.0) for x in (plain, age)]
            # A restore verifies while extracting; a plain backup stores nothing meanwhile.
            if key not in ("verify_s", "stored_meanwhile_s") or max(v) > 0.005:
                parts.append((f"{kind}: {what}", *cells(v[0], plain), *cells(v[1], age)))
        parts += [(f"reference: {what}", *cells(v, plain), "", "") for what, v in refs[kind]]
    rel = db["relations"]
    pgbench_bytes = sum(v for k, v in rel.items() if k.startswith("pgbench_"))
    counted = [o for o in ops if o["round"] >= 0 and not o["discarded"]]
    dropped = Counter(o["label"] for o in ops if o["round"] >= 0 and o["discarded"])
    head = ("run", "tool", "runs", "median s", "min–max s", "durable s", "vs pgBackRest")
    return "\n".join(
        [
            HEADING,
            "",
            measured(
                r,
                "bench-base",
                f"PostgreSQL {r['pg_version']}, {r['pgbackrest_version']}, Python "
                f"{m['python']}, {r['tar_version']}, {r['zstd_cli'].strip('* ')}",
            ),
            "",
            *table(
                (*head, "vs pg_basebackup", "output"),
                [
                    row("backup", x, ((b_enc or b_pgbr) if x == B_OURS_AGE else b_pgbr, b_pgbb))
                    for x in BACKUPS
                    if x in st
                ]
                + [
                    row("restore", x, ((r_enc or r_pgbr) if x == R_OURS_AGE else r_pgbr, None))
                    for x in (R_OURS, R_OURS_AGE, R_PGBR, R_PGBR_ENC, R_TAR)
                    if x in st
                ]
                + [row("restore, 1 worker", x, (r_pgbr1, None)) for x in (R_OURS_1, R_PGBR_1)]
                + [row("delta restore", x, (d_pgbr, None)) for x in DELTAS],
                "llc" + "r" * 6,
            ),
            "",
            *table(("where ours goes", "ours s", "share", "ours, age s", "share"), parts),
            "",
            f"- Database: {db['db_bytes'] / GIB:.2f} GiB: pgbench (`-s {db['scale']}`) "
            f"{mib(pgbench_bytes)}, random rows {mib(rel.get('noise', 0))}; data directory "
            f"without `pg_wal` {mib(db['data_dir_bytes'])}.",
            "- Encryption (age ÷ plain, same tool, medians): backup "
            f"{as_ratio(b_age['median'] / b_ours['median'], bold=True)}, restore "
            f"{as_ratio(r_age['median'] / r_ours['median'], bold=True)}; durable: backup "
            f"{as_ratio(b_age['durable'] / b_ours['durable'])}, restore "
            f"{as_ratio(r_age['durable'] / r_ours['durable'])}."
            + (
                ""
                if b_enc is None or r_enc is None
                else f" pgBackRest ({PGBR_CIPHER} ÷ plain): backup "
                f"{as_ratio(b_enc['median'] / b_pgbr['median'])}, restore "
                f"{as_ratio(r_enc['median'] / r_pgbr['median'])}. The age rows compare with "
                f"pgBackRest's {PGBR_CIPHER} rows, the other rows with its plain ones."
            ),
            *(
                [
                    "- Where compression happens, backup medians: on the server (zstd, the "
                    f"bare `pg_basebackup` row) {b_pgbb['median']:.2f} s; on the client, "
                    f"cut into parts (ours) {b_ours['median']:.2f} s, not cut "
                    f"{st[B_ZSTD]['median']:.2f} s; lz4 on the server, then zstd on the client "
                    f"{st[B_LZ4]['median']:.2f} s; the plain stream alone, to /dev/null, "
                    f"{st[B_RAW]['median']:.2f} s."
                ]
                if all(x in st for x in STREAMS)
                else []
            ),
            "- Workers (ours: parts extracted at once; pgBackRest: `process-max`), restore "
            f"medians: ours 1 → 2 workers {r_ours1['median']:.2f} → {r_ours['median']:.2f} s "
            f"({as_ratio(r_ours['median'] / r_ours1['median'])}), pgBackRest 1 → 2 "
            f"{r_pgbr1['median']:.2f} → {r_pgbr['median']:.2f} s "
            f"({as_ratio(r_pgbr['median'] / r_pgbr1['median'])}). The 1-worker rows compare "
            "with pgBackRest at `process-max=1`, the other restore rows with `process-max=2`.",
            f"- Delta restore: after the table `churn` (~{r.get('churn_share', 0.05):.0%} of the "
            "database, random bytes) was rewritten and both tools backed up again, each "
            "refreshed its last full restore (never started) in place, once: ours "
            f"{d_ours['median']:.2f} s = {as_ratio(d_ours['median'] / r_ours['median'], True)} "
            f"of its full restore ({extracted.get('files_written', 0):,} files written, "
            f"{extracted.get('bytes_written', 0) / MIB:,.0f} MiB; "
            f"{extracted.get('files_kept', 0):,} kept, "
            f"{extracted.get('files_vouched', 0):,} of them without reading them, vouched for "
            f"by the restore record; {extracted.get('files_removed', 0):,} removed); ours "
            f"reading every file (the 1-worker copy, its record removed) {d_read['median']:.2f}"
            f" s = {as_ratio(d_read['median'] / r_ours['median'])}; pgBackRest `--delta` "
            f"{d_pgbr['median']:.2f} s = {as_ratio(d_pgbr['median'] / r_pgbr['median'])} of "
            "its full restore. The page cache was dropped before each delta restore.",
            "- Durable ratios: backup ours ÷ pgBackRest "
            f"{as_ratio(b_ours['durable'] / b_pgbr['durable'])}, ÷ pg_basebackup "
            f"{as_ratio(b_ours['durable'] / b_pgbb['durable'])}; restore ours ÷ pgBackRest "
            f"{as_ratio(r_ours['durable'] / r_pgbr['durable'])}. One backup's size, ours ÷ "
            f"pgBackRest: {b_ours['bytes'] / b_pgbr['bytes']:.3f}×.",
            f"- {r['reps']} runs per tool after {r['warmup']} warm-up round(s); other processes "
            f"used {statistics.fmean(o['foreign_cpu'] for o in counted):.2f} CPUs on average, "
            f"{max(o['foreign_cpu'] for o in counted):.2f} at most; "
            f"{sum(w['waited_s'] for w in r['waits']):.0f} s waited for quiet; discarded runs: "
            f"{', '.join(f'{k} ×{n}' for k, n in dropped.items()) or 'none'}.",
            "- Restores started and compared with the source: "
            + "; ".join(f"{k}: {v}" for k, v in r["verified"].items())
            + ".",
            engine_note(r),
            "",
        ]
    )


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=5, help="runs per tool (default 5, at least 3)")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first (default 1)")
    p.add_argument("--scale", type=int, default=50, help="pgbench -i scale (default 50)")
    p.add_argument(
        "--random-share",
        type=float,
        default=0.4,
        help="share of the database that is random bytea (default 0.4)",
    )
    p.add_argument(
        "--min-gib", type=float, default=1.0, help="smallest database size to accept (1.0)"
    )
    quiet_options(p, 1800)
    p.add_argument(
        "--max-noise",
        type=float,
        default=0.4,
        metavar="CPUS",
        help="run a tool again when other processes used more than this many CPUs during "
        "its run (default 0.4)",
    )
    p.add_argument(
        "--retries", type=int, default=3, help="at most this many such re-runs (default 3)"
    )
    report_options(p)
    p.add_argument("--keep", action="store_true", help="keep the scratch folder in bench/out")
    p.add_argument(
        "--largest",
        action="store_true",
        help="ours and pgBackRest only, plain: the largest database the disk holds (a "
        "section of its own)",
    )
    args = p.parse_args(argv)
    if args.render_only:
        if args.largest:
            return rerender(NAME_LARGEST, HEADING_LARGEST, render_largest, WHY, args.no_report)
        return rerender(NAME, HEADING, render, WHY, args.no_report)
    if args.reps < 3 and not args.no_report:
        p.error("--reps must be at least 3 for a report (or pass --no-report)")
    require_server_user(p)
    if args.largest:
        return run_with_pgbackrest(NAME_LARGEST, args, bench_largest)
    return run_with_pgbackrest(NAME, args, bench)


if __name__ == "__main__":
    sys.exit(main())
