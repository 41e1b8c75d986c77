"""The command-line tools the engine runs besides PostgreSQL's: checked once, before use."""

from __future__ import annotations

import functools
import re
import shutil
import subprocess

from pg_backup_assets.core.errors import PgBackupError

TAR_MIN = (1, 31)  # the first GNU tar with --zstd


@functools.cache
def require_tar_zstd() -> None:
    """Base backups are extracted by ``tar --zstd``: GNU tar >= 1.31 and the zstd command."""
    problems = []
    tar = shutil.which("tar")
    version = _version(tar, r"GNU tar\)? (\d+)\.(\d+)") if tar else None
    if version is None or version < TAR_MIN:
        found = f"found {'.'.join(map(str, version))}" if version else "not found"
        problems.append(f"GNU tar >= {'.'.join(map(str, TAR_MIN))} ({found})")
    if shutil.which("zstd") is None:
        problems.append("the zstd command (not found)")
    if problems:
        raise PgBackupError(
            f"extracting base backups needs {' and '.join(problems)}: install them "
            "(Debian: apt-get install tar zstd)"
        )


@functools.cache
def require_zstd() -> None:
    """Parts of base backups are compressed by the zstd command."""
    if shutil.which("zstd") is None:
        raise PgBackupError(
            "base backups in parts are compressed by the zstd command, which was not found: "
            "install it (Debian: apt-get install zstd), or set base_backup: {layout: single}"
        )


def age_command() -> str | None:
    """The age command, when installed: parts of encrypted base backups are encrypted and
    decrypted by it (faster than pyrage in-process); without it, by Python processes."""
    return shutil.which("age")


def _version(exe: str, pattern: str) -> tuple[int, int] | None:
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=False).stdout
    m = re.search(pattern, out)
    return (int(m.group(1)), int(m.group(2))) if m else None
