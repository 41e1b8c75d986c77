"""What the fault tests share: a small filesystem to fill, a process to kill at a random
moment, an S3 endpoint that answers "denied", and output with no traceback."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tests.conftest import REPO_ROOT

PYTHON = sys.executable


@contextlib.contextmanager
def tmpfs(path: Path, size_mib: int) -> Iterator[Path]:
    """A small filesystem of its own at ``path`` (root only), unmounted afterwards."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mib}m,mode=0755", "tmpfs", str(path)],
        check=True,
    )
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path: Path, leave_bytes: int) -> Path:
    """Fill the filesystem of ``path`` until ``leave_bytes`` are free; returns the ballast."""
    ballast = path / "ballast"
    free = os.statvfs(path).f_bavail * os.statvfs(path).f_frsize
    with open(ballast, "wb") as f:
        remaining = max(free - leave_bytes, 0)
        chunk = b"\0" * (1 << 20)
        while remaining > 0:
            n = f.write(chunk[: min(len(chunk), remaining)])
            remaining -= n
    return ballast


def kill_at(args: Sequence[str], delay_s: float, env: dict | None = None) -> int | None:
    """Start ``args`` in a session of its own, SIGKILL the whole session after ``delay_s``
    (a run worker dying with its children); the exit status if it ended before that."""
    proc = subprocess.Popen(
        list(args),
        cwd=REPO_ROOT,
        env={**os.environ, **(env or {})},
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        return proc.wait(timeout=delay_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return None


def engine(op: str, config: Path, *args: str) -> list[str]:
    """The command line of one engine operation in a child process (tests/faults/child.py)."""
    return [PYTHON, "-m", "tests.faults.child", op, str(config), *args]


class DeniedS3:
    """An HTTP endpoint that answers every S3 request as S3 does when access is denied."""

    BODY = (
        b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code>'
        b"<Message>Access Denied</Message></Error>"
    )

    def __init__(self) -> None:
        body = self.BODY

        class Handler(BaseHTTPRequestHandler):
            def _deny(self) -> None:
                self.send_response(403)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _deny  # noqa: N815

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def one_clear_line(stderr: str) -> str:
    """The error is one line (``pgbackup: ...``; progress lines may come before it), and
    there is no traceback; returns it."""
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert lines and lines[-1].startswith("pgbackup: "), stderr
    assert not any(line.startswith("pgbackup: ") for line in lines[:-1]), stderr
    assert "Traceback" not in stderr
    return lines[-1]


def wait_until(what: str, fn, timeout_s: float = 60):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")
