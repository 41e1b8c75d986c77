"""A throwaway S3 endpoint on loopback: moto's server as a separate process.

For the demo and the tests (moto comes with the dev extras); never for real backups,
and the three_two_one check says so: an endpoint on this machine is not offsite.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from pg_backup_assets.core.errors import PgBackupError
from pg_backup_assets.core.postgres.local_cluster import free_port
from pg_backup_assets.core.tools import stop

MOTO_SERVER = Path(sys.executable).parent / "moto_server"


def available() -> bool:
    return MOTO_SERVER.exists()


@contextlib.contextmanager
def local_s3_endpoint(keep_running: bool = False) -> Iterator[str]:
    """Start moto's S3 server on a free loopback port; yield its URL; stop it afterwards.

    Sets dummy AWS credentials in this process's environment when none are set.
    """
    for var, value in (
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
    ):
        os.environ.setdefault(var, value)
    port = free_port()
    proc = subprocess.Popen(
        [str(MOTO_SERVER), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(url + "/moto-api/", timeout=1)
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise PgBackupError(
                        "moto_server (the local S3 endpoint) did not start"
                    ) from None
                time.sleep(0.1)
        yield url
    finally:
        if not keep_running:
            stop(proc)
