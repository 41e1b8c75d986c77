"""The command-line tools the engine runs besides PostgreSQL's: checked once, before use."""

from __future__ import annotations

import functools
import shutil
import subprocess

from pg_backup_assets.core.errors import PgBackupError


@functools.cache
def require_zstd() -> None:
    """Parts of base backups are compressed by the zstd command."""
    if shutil.which("zstd") is None:
        raise PgBackupError(
            "base backups in parts are compressed by the zstd command, which was not found: "
            "install it (Debian: apt-get install zstd), or set base_backup: {layout: single}"
        )


def age_command() -> str | None:
    """The age command, when installed: parts of encrypted base backups are encrypted by it
    (faster than pyrage in-process); without it, by Python processes. (Restores decrypt in
    process: ``storage/agefile.py``.)"""
    return shutil.which("age")


STOP_GRACE_S = 5.0


def stop(proc: subprocess.Popen, grace_s: float = STOP_GRACE_S) -> None:
    """End a child tool: SIGTERM, then SIGKILL if it is still there after ``grace_s``.

    SIGTERM alone is not enough: an ignored signal stays ignored across exec, and Dagster's
    run and step processes map SIGTERM to SIGINT's handler, which is "ignore" in a process
    started in the background by a shell without job control. pg_basebackup run from there
    ignores SIGTERM, and a bare ``terminate(); wait()`` waits for ever."""
    proc.terminate()
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
