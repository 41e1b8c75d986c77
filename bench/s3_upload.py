"""Side-by-side benchmark: our offsite upload to S3 against boto3's managed ``upload_file``.

The same files (one 1 GiB file and a few of 64-256 MiB, each half random and half
repetitive bytes) are uploaded to one local S3 endpoint, moto's server run as a separate
process on loopback, by

1. ours: ``copy_key`` from a ``LocalStorage`` holding the files into an ``S3Storage``
   (what ``offsite_base_backup`` does, through ``copy_set``): one stream cut into 16 MiB
   parts, up to four in flight, each with a CRC32 checksum the store checks, the sha256
   of the whole checked before the upload is completed;
2. boto3's ``upload_file`` with its default ``TransferConfig`` (8 MiB parts, 10 threads);
3. ``aws s3 cp`` (one process per file), when the AWS CLI is installed;
4. as a diagnostic, ``upload_file`` with ours' part size and parts in flight (16 MiB, 4):
   boto3 in ours' shape, which separates the transfer's shape from the engine's own work.

Tools alternate round by round (ABCD, ABCD, ...), each round into a fresh bucket; every
uploaded object is read back and its sha256 compared, untimed. Then each upload runs once
more in a fresh process (``bench/s3_upload_child.py``) per file size for its peak RSS.

Run from the checkout::

    .venv/bin/python bench/s3_upload.py [--reps 3]

The raw results go to ``bench/out/s3_upload-last.json``; the section ``## Offsite upload
to S3 vs boto3`` of ``BENCHMARKS.md`` is rendered from that file alone (tables; how to
read them: ``bench/README.md``), printed, and replaces the old one. ``--render-only``
renders it again without measuring. There are no timing assertions: this measures, it
does not judge.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from common import (
    OUT,
    PYTHON,
    ROOT,
    BenchError,
    as_ratio,
    finish,
    load_now,
    log,
    measured,
    mib,
    report_head,
    report_options,
    rerender,
    server_cpu_s,
    sha256_file,
    table,
    wait_idle,
)
from s3_upload_child import BOTO, BOTO_SHAPE, OURS, REGION, client_for, uploader

from pg_backup_assets.core.offsite.copy import copy_key
from pg_backup_assets.core.postgres.local_cluster import free_port
from pg_backup_assets.core.storage.base import CHUNK
from pg_backup_assets.core.storage.local import LocalStorage
from pg_backup_assets.core.storage.s3 import PART_SIZE, S3Storage

NAME = "s3_upload"
HEADING = "## Offsite upload to S3 vs boto3"
WHY = "an uploaded object did not read back as the file"
MIB = 1 << 20
GIB = 1 << 30
BLOCK = 4 * MIB  # files alternate blocks of random and repetitive bytes
CLI = "awscli"
LABELS = {
    OURS: "ours: `copy_key` → `S3Storage`",
    BOTO: "boto3 `upload_file` (default `TransferConfig`)",
    CLI: "`aws s3 cp`",
    BOTO_SHAPE: "boto3 `upload_file` in ours' shape (diagnostic)",
}
WIRE_HEADERS = (
    "Content-MD5",
    "X-Amz-Content-SHA256",
    "x-amz-checksum-crc32",
    "x-amz-sdk-checksum-algorithm",
)
TARGET = 0.9  # ours ÷ boto3 upload_file: the goal this benchmark was written to check
CHILD = ROOT / "bench" / "s3_upload_child.py"
OTHER_BENCHMARKS = ("bench/base_backup.py", "bench/wal_push.py")
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": REGION,
}


@dataclass
class File:
    name: str
    path: Path
    size: int
    sha256: str


# -- the endpoint --------------------------------------------------------------------------
class Moto:
    """moto's S3 server as a separate process on loopback (as the tests run it)."""

    def __init__(self, work: Path, env: dict[str, str]):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.tmp = work / "moto-tmp"  # where it spools objects above its buffer size
        self.tmp.mkdir()
        self.log = open(work / "moto.log", "wb")  # noqa: SIM115 - closed in stop()
        exe = Path(sys.executable).parent / "moto_server"
        self.argv = [str(exe), "-H", "127.0.0.1", "-p", str(self.port)]
        self.proc = subprocess.Popen(
            self.argv,
            env={**env, "TMPDIR": str(self.tmp)},
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.pid = self.proc.pid
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(self.url + "/moto-api/", timeout=1)
                return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise BenchError("moto_server did not start") from None
                time.sleep(0.1)

    def memory(self) -> dict[str, int]:
        """VmRSS and VmHWM (peak) of the server, KiB."""
        out = {}
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith(("VmRSS:", "VmHWM:")):
                    out[line.split(":")[0]] = int(line.split()[1])
        except OSError:
            pass
        return out

    def cpu_s(self) -> float:
        return server_cpu_s([self.pid])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.log.close()


def new_bucket(client: Any, tag: str) -> str:
    name = f"bench-{tag}-{uuid.uuid4().hex[:10]}"
    client.create_bucket(Bucket=name)
    return name


def drop_bucket(client: Any, bucket: str) -> None:
    """Empty and delete a bucket, so that moto holds nothing from earlier rounds."""
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            client.delete_object(Bucket=bucket, Key=obj["Key"])
    for up in client.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
        client.abort_multipart_upload(Bucket=bucket, Key=up["Key"], UploadId=up["UploadId"])
    client.delete_bucket(Bucket=bucket)


def verify(client: Any, bucket: str, files: Sequence[File]) -> tuple[list[str], dict[str, int]]:
    """Read every object back: its size and sha256 must be the file's; no multipart upload
    may be left open. Returns the problems and each object's part count (from its ETag)."""
    problems, parts = [], {}
    for f in files:
        head = client.head_object(Bucket=bucket, Key=f.name)
        if head["ContentLength"] != f.size:
            problems.append(f"{f.name}: {head['ContentLength']} bytes, expected {f.size}")
        etag = head["ETag"].strip('"')
        parts[f.name] = int(etag.rsplit("-", 1)[1]) if "-" in etag else 1
        h = hashlib.sha256()
        body = client.get_object(Bucket=bucket, Key=f.name)["Body"]
        for chunk in body.iter_chunks(CHUNK):
            h.update(chunk)
        if h.hexdigest() != f.sha256:
            problems.append(f"{f.name}: read back with sha256 {h.hexdigest()}, not {f.sha256}")
    left = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    if left:
        problems.append(f"{len(left)} multipart uploads left open: {[u['Key'] for u in left]}")
    return problems, parts


# -- the files -----------------------------------------------------------------------------
def write_file(path: Path, size: int) -> File:
    """``size`` bytes alternating 4 MiB of os.urandom and 4 MiB of one repeated line."""
    pattern = (b"pg-backup-assets offsite benchmark, repetitive half.\n" * (BLOCK // 53 + 1))[
        :BLOCK
    ]
    h = hashlib.sha256()
    left, i = size, 0
    with open(path, "wb") as out:
        while left:
            n = min(BLOCK, left)
            block = os.urandom(n) if i % 2 == 0 else pattern[:n]
            out.write(block)
            h.update(block)
            left -= n
            i += 1
    return File(path.name, path, size, h.hexdigest())


def size_label(size: int) -> str:
    if size % GIB == 0:
        return f"{size // GIB} GiB"
    return f"{size / MIB:g} MiB"


# -- the AWS CLI ---------------------------------------------------------------------------
def find_aws() -> tuple[str, str] | None:
    """The ``aws`` executable (behind a pyenv shim, the real one) and its version line."""
    exe = shutil.which("aws")
    if not exe:
        return None
    if "/shims/" in exe and shutil.which("pyenv"):
        real = subprocess.run(["pyenv", "which", "aws"], capture_output=True, text=True)
        if real.returncode == 0 and real.stdout.strip():
            exe = real.stdout.strip()
    proc = subprocess.run([exe, "--version"], capture_output=True, text=True)
    if proc.returncode != 0:
        return None
    return exe, (proc.stdout or proc.stderr).strip()


def aws_cmd(exe: str, url: str, f: File, bucket: str) -> list[str]:
    dest = f"s3://{bucket}/{f.name}"
    return [exe, "--endpoint-url", url, "s3", "cp", "--only-show-errors", str(f.path), dest]


# -- measuring -----------------------------------------------------------------------------
def spawn(cmd: Sequence[str], env: dict[str, str], what: str, work: Path) -> dict[str, Any]:
    """Run a process to its end: wall seconds, its CPU seconds and peak RSS (``wait4``)."""
    out_path, err_path = work / "child.out", work / "child.err"
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(list(cmd), env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = err_path.read_text(errors="replace").strip()[-3000:]
        raise BenchError(f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}\n{tail}")
    return {
        "seconds": seconds,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "ru_maxrss_kib": usage.ru_maxrss,
        "stdout": out_path.read_text(),
    }


def own_cpu_s() -> float:
    """CPU seconds of this process (all its threads) and of its reaped children."""
    usage = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(r.ru_utime + r.ru_stime for r in usage)


@dataclass
class Ctx:
    args: argparse.Namespace
    work: Path
    moto: Moto
    client: Any
    files: list[File]
    env: dict[str, str]
    aws: tuple[str, str] | None


def upload_all(c: Ctx, variant: str, bucket: str) -> dict[str, float]:
    """Upload every file with one tool; seconds per file."""
    out = {}
    for f in c.files:
        if variant == CLI:
            assert c.aws is not None
            cmd = aws_cmd(c.aws[0], c.moto.url, f, bucket)
            out[f.name] = spawn(cmd, c.env, "aws s3 cp", c.work)["seconds"]
        else:
            go = uploader(variant, c.client, bucket, f.path, f.sha256)
            t0 = time.perf_counter()
            go()
            out[f.name] = time.perf_counter() - t0
    return out


def one_round(c: Ctx, variant: str, rnd: int) -> dict[str, Any]:
    waited = time.monotonic()
    if wait_for_other_benchmarks(c.args.wait_idle):
        raise BenchError("another benchmark is still running: not measuring beside it")
    wait_idle(c.args.wait_idle, (), c.args.max_busy, [c.moto.pid])
    waited = time.monotonic() - waited
    bucket = new_bucket(c.client, f"r{rnd}")
    before, cpu0, moto0 = load_now([c.moto.pid]), own_cpu_s(), c.moto.cpu_s()
    per_file = upload_all(c, variant, bucket)
    after, cpu1, moto1 = load_now([c.moto.pid]), own_cpu_s(), c.moto.cpu_s()
    mem = c.moto.memory()
    problems, parts = verify(c.client, bucket, c.files)
    drop_bucket(c.client, bucket)
    total = sum(per_file.values())
    size = sum(f.size for f in c.files)
    busy = after["busy_s"] - before["busy_s"] - (after["ours_s"] - before["ours_s"])
    rec = {
        "variant": variant,
        "round": rnd,
        "per_file_s": per_file,
        "seconds": total,
        "bytes": size,
        "mib_s": size / MIB / total,
        "client_cpu_s": cpu1 - cpu0,
        "moto_cpu_s": moto1 - moto0,
        "foreign_cpu": max(0.0, busy) / max(after["t"] - before["t"], 1e-9),
        "other_postgres": after["postgres_servers"],
        "moto_after_kib": mem,
        "waited_idle_s": waited,
        "parts": parts,
        "problems": problems,
    }
    log(
        f"round {rnd + 1} {variant:9s}: {rec['mib_s']:7.1f} MiB/s over {size / MIB:,.0f} MiB "
        f"({total:.2f} s; client CPU {rec['client_cpu_s']:.1f} s, moto CPU "
        f"{rec['moto_cpu_s']:.1f} s){'; PROBLEMS: ' + '; '.join(problems) if problems else ''}"
    )
    return rec


def memory_run(c: Ctx, variant: str, f: File) -> dict[str, Any]:
    """One upload in a fresh process: its peak RSS, and the object checked afterwards."""
    bucket = new_bucket(c.client, "mem")
    if variant == CLI:
        assert c.aws is not None
        cmd = aws_cmd(c.aws[0], c.moto.url, f, bucket)
    else:
        cmd = [str(PYTHON), str(CHILD), variant, c.moto.url, bucket, str(f.path), f.sha256]
    got = spawn([str(PYTHON), str(CHILD), "measure", *cmd], c.env, f"{variant} child", c.work)
    lines = [json.loads(x) for x in got["stdout"].splitlines() if x.startswith("{")]
    problems, _ = verify(c.client, bucket, [f])
    drop_bucket(c.client, bucket)
    rec = {"variant": variant, "file": f.name, "size": f.size, "launcher": lines[-1]}
    if variant != CLI:
        rec["child"] = lines[0]
    rec["problems"] = problems
    peak = lines[-1]["ru_maxrss_kib"] / 1024
    pre = (
        f" (before the upload {lines[0]['before']['hwm_kib'] / 1024:.1f})" if len(lines) > 1 else ""
    )
    log(f"memory {variant:9s} {size_label(f.size):>10s}: peak {peak:.1f} MiB{pre}")
    return rec


# -- where ours' time goes -------------------------------------------------------------------
OTHER_CALLS = ("list_multipart_uploads", "create_multipart_upload", "put_object")


class TimedClient:
    """A client proxy that records when each S3 call ran (start, end), from any thread.

    ``S3Storage`` sends up to four parts at once from a thread pool, so the calls' durations
    overlap: their sum is part-seconds, not wall time. ``covered`` turns them into wall time.
    """

    TIMED = ("upload_part", "complete_multipart_upload", *OTHER_CALLS)

    def __init__(self, client: Any):
        self._client = client
        self.calls: list[tuple[str, float, float]] = []  # list.append is thread-safe

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if name not in self.TIMED:
            return attr

        def call(**kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return attr(**kwargs)
            finally:
                self.calls.append((name, t0, time.perf_counter()))

        return call


def covered(spans: Sequence[tuple[float, float]]) -> float:
    """Wall seconds during which at least one of the (start, end) spans was running."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(spans):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


class NullClient:
    """An S3 client that accepts everything and sends nothing: the engine's own cost."""

    meta = SimpleNamespace(endpoint_url="null")

    def list_multipart_uploads(self, **_: Any) -> dict[str, Any]:
        return {}

    def create_multipart_upload(self, **_: Any) -> dict[str, Any]:
        return {"UploadId": "null"}

    def upload_part(self, **_: Any) -> dict[str, Any]:
        return {"ETag": '"null"'}

    def complete_multipart_upload(self, **_: Any) -> dict[str, Any]:
        return {}

    def put_object(self, **_: Any) -> dict[str, Any]:
        return {}

    def abort_multipart_upload(self, **_: Any) -> dict[str, Any]:
        return {}


def per_gib(fn: Callable[[], Any], nbytes: int, reps: int = 3) -> float:
    """Median seconds of ``fn`` scaled to one GiB."""
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * GIB / nbytes


def breakdown(c: Ctx, big: File) -> dict[str, Any]:
    """Ours on the big file once more, its S3 calls timed; the engine alone (no network);
    and single-thread reference costs of the per-byte work, per GiB."""
    wait_idle(c.args.wait_idle, (), c.args.max_busy, [c.moto.pid])
    bucket = new_bucket(c.client, "breakdown")
    timed_client = TimedClient(c.client)
    src, dst = LocalStorage(big.path.parent), S3Storage(timed_client, bucket)
    t0 = time.perf_counter()
    copy_key(src, dst, big.name, big.sha256)
    t1 = time.perf_counter()
    problems, _ = verify(c.client, bucket, [big])
    drop_bucket(c.client, bucket)
    calls = timed_client.calls
    spans = {name: [(a, b) for n, a, b in calls if n == name] for name in TimedClient.TIMED}
    parts = spans["upload_part"]
    wall = {
        "upload_part": covered(parts),
        "complete_multipart_upload": covered(spans["complete_multipart_upload"]),
        "other_calls": covered([s for n in OTHER_CALLS for s in spans[n]]),
        "no_call": (t1 - t0) - covered([(a, b) for _, a, b in calls]),
    }

    null = S3Storage(NullClient(), "null")
    engine = per_gib(lambda: copy_key(src, null, big.name, big.sha256), big.size)

    with open(big.path, "rb") as f:
        buf = bytearray(f.read(PART_SIZE))
    n = GIB // PART_SIZE

    def each(fn: Callable[[bytearray], Any]) -> Callable[[], None]:
        def go() -> None:
            for _ in range(n):
                fn(buf)

        return go

    def read_file() -> None:
        with open(big.path, "rb") as f:
            while f.read(CHUNK):
                pass

    ref = {
        "read 1 MiB chunks (page cache)": per_gib(read_file, big.size),
        "sha256": per_gib(each(lambda b: hashlib.sha256(b).digest()), GIB),
        "crc32 (zlib, botocore's checksum)": per_gib(each(lambda b: zlib.crc32(b)), GIB),
        "bytes(bytearray[:16 MiB]) copy": per_gib(each(lambda b: bytes(b[:PART_SIZE])), GIB),
    }
    log(
        f"breakdown: ours {t1 - t0:.2f} s for {size_label(big.size)}: a part in flight "
        f"{wall['upload_part']:.2f} s, no S3 call in flight {wall['no_call']:.2f} s; engine "
        f"alone {engine:.2f} s/GiB"
    )
    return {
        "file": big.name,
        "size": big.size,
        "total_s": t1 - t0,
        "wall_s": wall,
        "part_seconds": sum(b - a for a, b in parts),
        "calls": {name: len(v) for name, v in spans.items() if v},
        "max_in_flight": max_overlap(parts),
        "engine_null_client_s_per_gib": engine,
        "reference_s_per_gib": ref,
        "problems": problems,
    }


def max_overlap(spans: Sequence[tuple[float, float]]) -> int:
    """The most spans running at one moment."""
    edges = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans])
    most = now = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


def wire_headers(c: Ctx) -> dict[str, str]:
    """The checksum and signing headers botocore puts on one UploadPart to this endpoint."""
    seen: dict[str, str] = {}

    def grab(request: Any, **_: Any) -> None:
        for k in WIRE_HEADERS:
            v = request.headers.get(k)
            seen[k] = "(absent)" if v is None else (v.decode() if isinstance(v, bytes) else v)

    client = client_for(c.moto.url)
    client.meta.events.register("before-send.s3.UploadPart", grab)
    bucket = new_bucket(client, "hdr")
    multipart = [f for f in c.files if f.size > PART_SIZE] or c.files
    one = min(multipart, key=lambda f: f.size)
    copy_key(LocalStorage(one.path.parent), S3Storage(client, bucket), one.name)
    drop_bucket(client, bucket)
    if len(seen.get("X-Amz-Content-SHA256", "")) == 64:
        seen["X-Amz-Content-SHA256"] = "(the body's sha256, hex)"
    return seen


# -- the run -------------------------------------------------------------------------------
def wait_for_other_benchmarks(limit: float) -> list[str]:
    """Wait (up to ``limit`` seconds) until no other benchmark of ``bench/`` runs."""
    deadline = time.monotonic() + limit
    said = False
    while True:
        running = []
        for pattern in OTHER_BENCHMARKS:
            proc = subprocess.run(["pgrep", "-af", pattern], capture_output=True, text=True)
            running += [
                line for line in proc.stdout.splitlines() if int(line.split()[0]) != os.getpid()
            ]
        if not running or time.monotonic() >= deadline:
            if running:
                log(f"still running beside us: {running}")
            return running
        if not said:
            log(f"waiting up to {limit:.0f}s for other benchmarks to end: {running}")
            said = True
        time.sleep(10)


def variants(args: argparse.Namespace, aws: tuple[str, str] | None) -> list[str]:
    out = [OURS, BOTO]
    if aws is not None:
        out.append(CLI)
    if not args.no_diagnostic:
        out.append(BOTO_SHAPE)
    return out


def bench(args: argparse.Namespace, work: Path) -> int:
    env = {**os.environ, **CREDENTIALS}
    env["AWS_CONFIG_FILE"] = env["AWS_SHARED_CREDENTIALS_FILE"] = str(work / "no-aws-config")
    os.environ.update({k: env[k] for k in (*CREDENTIALS, "AWS_CONFIG_FILE")})
    os.environ["AWS_SHARED_CREDENTIALS_FILE"] = env["AWS_SHARED_CREDENTIALS_FILE"]
    aws = None if args.no_awscli else find_aws()
    if aws is None and not args.no_awscli:
        log("the AWS CLI is not installed: skipping `aws s3 cp`")

    folder = work / "files"
    folder.mkdir()
    sizes = [int(args.big_mib * MIB)] + [int(s * MIB) for s in args.small_mib]
    log(f"writing {len(sizes)} files, {sum(sizes) / MIB:,.0f} MiB, into {folder}")
    files = [write_file(folder / f"mixed-{size_label(s).replace(' ', '')}.bin", s) for s in sizes]
    for f in files:  # read back once (page cache) and check what was written
        if sha256_file(f.path) != f.sha256:
            raise BenchError(f"{f.path} does not read back as written")

    moto = Moto(work, env)
    try:
        client = client_for(moto.url)
        c = Ctx(args, work, moto, client, files, env, aws)
        moto_start = moto.memory()
        order = variants(args, aws)
        headers = wire_headers(c)

        log("warm-up: every tool uploads the smallest file once, untimed")
        smallest = min(files, key=lambda f: f.size)
        for v in order:
            bucket = new_bucket(client, "warm")
            if v == CLI:
                assert aws is not None
                spawn(aws_cmd(aws[0], moto.url, smallest, bucket), env, "aws", work)
            else:
                uploader(v, client, bucket, smallest.path, smallest.sha256)()
            problems, _ = verify(client, bucket, [smallest])
            drop_bucket(client, bucket)
            if problems:
                raise BenchError(f"warm-up with {v}: {problems}")

        rounds = [one_round(c, v, rnd) for rnd in range(args.reps) for v in order]
        memory = [memory_run(c, v, f) for f in files for v in order]
        parts = breakdown(c, files[0])
        moto_end = moto.memory()
    finally:
        moto.stop()

    report = {
        **report_head(work),
        "versions": {
            p: version(p) for p in ("boto3", "botocore", "s3transfer", "moto", "werkzeug")
        },
        "awscli": aws[1] if aws else None,
        "awscli_path": aws[0] if aws else None,
        "reps": args.reps,
        "max_busy": args.max_busy,
        "order": order,
        "files": [{"name": f.name, "size": f.size, "sha256": f.sha256} for f in files],
        "rounds": rounds,
        "memory": memory,
        "breakdown": parts,
        "wire_headers": headers,
        "moto": {"start_kib": moto_start, "end_kib": moto_end, "argv": moto.argv},
        "problems": [
            *(f"{x['variant']} round {x['round'] + 1}: {p}" for x in rounds for p in x["problems"]),
            *(f"{x['variant']} memory run: {p}" for x in memory for p in x["problems"]),
            *(f"breakdown: {p}" for p in parts["problems"]),
        ],
    }
    return finish(NAME, HEADING, render, report, WHY, args.no_report)


# -- the report ----------------------------------------------------------------------------
def per_tool(r: dict) -> dict[str, dict[str, Any]]:
    """Each tool's medians over its rounds: MiB/s (all files, the big one, the others), CPU
    seconds per GiB (client, moto), seconds per file; and its part count of the big file."""
    names = [f["name"] for f in r["files"]]
    sizes = {f["name"]: f["size"] for f in r["files"]}
    out = {}
    for tool in r["order"]:
        recs = [x for x in r["rounds"] if x["variant"] == tool]

        def med(fn: Callable[[dict], float], recs: list[dict] = recs) -> float:
            return statistics.median(fn(x) for x in recs)

        def mib_s(x: dict, keys: Sequence[str]) -> float:
            return sum(sizes[k] for k in keys) / MIB / sum(x["per_file_s"][k] for k in keys)

        out[tool] = {
            "rounds": [x["mib_s"] for x in recs],
            "mib_s": med(lambda x: x["mib_s"]),
            "big": med(lambda x: mib_s(x, names[:1])),
            "small": med(lambda x: mib_s(x, names[1:])) if names[1:] else float("nan"),
            "client_cpu": med(lambda x: x["client_cpu_s"] / (x["bytes"] / GIB)),
            "moto_cpu": med(lambda x: x["moto_cpu_s"] / (x["bytes"] / GIB)),
            "per_file": [med(lambda x, k=k: x["per_file_s"][k]) for k in names],
            "parts": recs[-1]["parts"].get(names[0], "?"),
        }
    return out


def render(r: dict) -> str:
    """The report, from the raw results alone (what the columns mean: bench/README.md)."""
    m, v, files, order, b = r["machine"], r["versions"], r["files"], r["order"], r["breakdown"]
    st = per_tool(r)
    big = size_label(files[0]["size"])
    rows = [
        (LABELS[x], f"{s['mib_s']:.1f}", f"{min(s['rounds']):.1f}–{max(s['rounds']):.1f}")
        + (as_ratio(s["mib_s"] / st[BOTO]["mib_s"], bold=x == OURS), f"{s['big']:.1f}")
        + (f"{s['small']:.1f}", f"{s['client_cpu']:.2f}", f"{s['moto_cpu']:.2f}", s["parts"])
        for x, s in st.items()
    ]
    head = ("tool", "median MiB/s", "min–max", "vs boto3", f"{big} file MiB/s", "smaller files")
    head += ("client CPU s/GiB", "moto CPU s/GiB", f"parts ({big} file)")
    memory = []
    for x in sorted(r["memory"], key=lambda x: (order.index(x["variant"]), x["size"])):
        peak = (LABELS[x["variant"]], size_label(x["size"]), kib(x["launcher"]["ru_maxrss_kib"]))
        c = x.get("child")  # none for the AWS CLI
        end, pre = (c["hwm_kib"], c["before"]["hwm_kib"]) if c else (None, None)
        memory.append((*peak, kib(end), kib(pre), kib(end - pre) if c else kib(None)))
    gib, total, w = b["size"] / GIB, b["total_s"], b["wall_s"]
    in_flight = b["part_seconds"] / w["upload_part"]
    spent = [
        ("ours, whole `copy_key`", total),
        (f"a part in flight ({b['calls']['upload_part']} parts)", w["upload_part"]),
        ("`complete_multipart_upload`", w["complete_multipart_upload"]),
        ("other S3 calls (list uploads, create)", w["other_calls"]),
        ("no S3 call in flight", w["no_call"]),
        ("the engine alone (a client that sends nothing)", b["engine_null_client_s_per_gib"] * gib),
        *((f"reference: {k}", x * gib) for k, x in b["reference_s_per_gib"].items()),
    ]
    ratio = st[OURS]["mib_s"] / st[BOTO]["mib_s"]
    paired = zip(st[OURS]["rounds"], st[BOTO]["rounds"], strict=True)
    shape = st.get(BOTO_SHAPE, {}).get("mib_s")
    ms, me = r["moto"]["start_kib"], r["moto"]["end_kib"]
    return "\n".join(
        [
            HEADING,
            "",
            measured(
                r,
                "bench-s3",
                f"Python {m['python']}, boto3 {v['boto3']}, botocore {v['botocore']}, s3transfer "
                f"{v['s3transfer']}, moto {v['moto']} (werkzeug {v['werkzeug']}), "
                + (f"AWS CLI `{r['awscli']}`" if r["awscli"] else "no AWS CLI"),
            ),
            "",
            *table(head, rows),
            "",
            *table(
                ("median s per file", *(size_label(f["size"]) for f in files)),
                ((LABELS[x], *(f"{t:.2f}" for t in s["per_file"])) for x, s in st.items()),
            ),
            "",
            *table(("peak RSS", "file", "`wait4`", "VmHWM at the end", "before", "own"), memory),
            "",
            *table(
                (f"where ours' time goes ({big} file)", "s per GiB", "of ours"),
                ((what, f"{t / gib:.2f}", f"{t / total:.0%}") for what, t in spent),
            ),
            "",
            f"- Files: {', '.join(size_label(f['size']) for f in files)} "
            f"({mib(sum(f['size'] for f in files))}); {r['reps']} rounds of {', '.join(order)}; "
            f"other processes used at most {max(x['foreign_cpu'] for x in r['rounds']):.2f} CPUs.",
            f"- Ours ÷ boto3 per round: {', '.join(f'{a / c:.2f}' for a, c in paired)}"
            + (
                f"; ours ÷ boto3 = (ours ÷ boto3 in ours' shape) × (that ÷ boto3) = "
                f"{st[OURS]['mib_s'] / shape:.2f} × {shape / st[BOTO]['mib_s']:.2f}"
                if shape
                else ""
            )
            + f"; {'at least' if ratio >= TARGET else 'below'} the {TARGET}× goal.",
            f"- Parts of ours in flight: {in_flight:.1f} on average, {b['max_in_flight']} at most.",
            f"- moto: {kib(ms.get('VmRSS'))} RSS after start, {kib(me.get('VmRSS'))} at the end, "
            f"peak {kib(me.get('VmHWM'))}.",
            "- Headers on an `UploadPart` of ours: "
            + ", ".join(f"`{k}`: {val}" for k, val in r["wire_headers"].items())
            + ".",
            "",
        ]
    )


def kib(n: int | None) -> str:
    return "–" if n is None else mib(n * 1024)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=3, help="rounds per tool (default 3, at least 3)")
    p.add_argument("--big-mib", type=float, default=1024, help="the big file (default 1024)")
    p.add_argument(
        "--small-mib",
        type=lambda s: [float(x) for x in s.split(",") if x],
        default=[64.0, 150.5, 256.0],
        help="the other files, comma-separated MiB (default 64,150.5,256)",
    )
    p.add_argument(
        "--wait-idle",
        type=float,
        default=1800,
        metavar="S",
        help="wait up to S seconds for other benchmarks to end and, before each round, for "
        "other processes to use at most --max-busy CPUs (default 1800)",
    )
    p.add_argument("--max-busy", type=float, default=0.25, help="CPUs (default 0.25)")
    p.add_argument("--no-awscli", action="store_true", help="leave out `aws s3 cp`")
    p.add_argument("--no-diagnostic", action="store_true", help="leave out boto3 in ours' shape")
    report_options(p)
    p.add_argument("--keep", action="store_true", help="keep the scratch folder in bench/out")
    args = p.parse_args(argv)
    if args.render_only:
        return rerender(NAME, HEADING, render, WHY, args.no_report)
    if args.reps < 3 and not args.no_report:
        p.error("--reps must be at least 3 for a report (or pass --no-report)")

    if wait_for_other_benchmarks(args.wait_idle):
        log("error: another benchmark is still running: not measuring beside it")
        return 1
    OUT.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="s3_upload-", dir=OUT))
    try:
        return bench(args, work)
    except BenchError as exc:
        log(f"error: {exc}")
        return 1
    finally:
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
