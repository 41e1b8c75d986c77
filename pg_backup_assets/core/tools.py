"""The command-line tools the engine runs besides PostgreSQL's: checked once, before use."""

from __future__ import annotations

import functools
import shutil

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
