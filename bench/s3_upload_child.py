"""The uploads ``bench/s3_upload.py`` compares, and one of them in a fresh process.

``uploader()`` is the single definition of each variant's code path: the benchmark calls
it in its own process for the timed rounds, and runs this file as a fresh process for the
peak-RSS measurement::

    python bench/s3_upload_child.py {ours,boto3,boto3-shape} ENDPOINT BUCKET FILE SHA256

which prints one JSON line: the process's peak RSS before the upload (after its imports,
the client and a first request) and at the end (``VmHWM`` from ``/proc/self/status``), and
the upload's seconds. Only the standard library is imported at module level, so the
child's numbers are the upload's, not the benchmark's.

    python bench/s3_upload_child.py measure CMD [ARG...]

runs CMD (e.g. ``aws s3 cp`` or the line above) and prints its wall seconds and its
``ru_maxrss`` from ``wait4``. This small launcher exists because Linux carries a parent's
peak RSS over ``fork`` and ``execve`` into the child's ``ru_maxrss``: measured straight
from the benchmark's process (over 100 MiB), every child would report at least that.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REGION = "us-east-1"
OURS = "ours"
BOTO = "boto3"
BOTO_SHAPE = "boto3-shape"
MODES = (OURS, BOTO, BOTO_SHAPE)


def client_for(endpoint: str) -> Any:
    """The client every variant uses: the one ``pgbackup`` builds outside Dagster."""
    from pg_backup_assets.core.storage.s3 import s3_client

    return s3_client(endpoint, REGION)


def ours_shape() -> dict[str, int]:
    """``TransferConfig`` arguments that give boto3 the part size and concurrency of ours."""
    from pg_backup_assets.core.storage.s3 import PART_SIZE, _Upload

    return {
        "multipart_threshold": PART_SIZE,
        "multipart_chunksize": PART_SIZE,
        "max_concurrency": _Upload.IN_FLIGHT,
    }


def uploader(mode: str, client: Any, bucket: str, path: Path, sha256: str) -> Callable[[], Any]:
    """A call that uploads ``path`` to ``bucket`` under the key ``path.name``.

    - ``ours``: ``copy_key`` from a ``LocalStorage`` over the file's folder into an
      ``S3Storage`` (what ``offsite_base_backup`` does through ``copy_set``);
    - ``boto3``: ``client.upload_file`` with boto3's default ``TransferConfig``;
    - ``boto3-shape``: the same in ours' shape, ``S3Storage``'s part size and parts in
      flight (16 MiB, 4), read from the engine so the two cannot drift apart.
    """
    if mode == OURS:
        from pg_backup_assets.core.offsite.copy import copy_key
        from pg_backup_assets.core.storage.local import LocalStorage
        from pg_backup_assets.core.storage.s3 import S3Storage

        src, dst = LocalStorage(path.parent), S3Storage(client, bucket)
        return lambda: copy_key(src, dst, path.name, sha256)
    from boto3.s3.transfer import TransferConfig

    if mode == BOTO:
        config = TransferConfig()
    elif mode == BOTO_SHAPE:
        config = TransferConfig(**ours_shape())
    else:
        raise ValueError(f"unknown mode {mode!r}")
    return lambda: client.upload_file(str(path), bucket, path.name, Config=config)


def vm_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return -1


def measure(cmd: list[str]) -> int:
    import os
    import subprocess

    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        return proc.returncode
    out = {
        "seconds": seconds,
        "ru_maxrss_kib": usage.ru_maxrss,
        "launcher_hwm_kib": vm_kib("VmHWM"),
    }
    print(json.dumps(out))
    return 0


def main(argv: list[str]) -> int:
    if argv[0] == "measure":
        return measure(argv[1:])
    mode, endpoint, bucket, file, sha256 = argv
    client = client_for(endpoint)
    client.head_bucket(Bucket=bucket)  # connection and service model loaded before "before"
    upload = uploader(mode, client, bucket, Path(file), sha256)
    before = {"hwm_kib": vm_kib("VmHWM"), "rss_kib": vm_kib("VmRSS")}
    t0 = time.perf_counter()
    upload()
    seconds = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "mode": mode,
                "seconds": seconds,
                "before": before,
                "hwm_kib": vm_kib("VmHWM"),
                "rss_kib": vm_kib("VmRSS"),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
