"""Decrypt an age-encrypted repository object to stdout, as a process of its own.

pyrage holds the GIL while it decrypts. In the restoring process it would keep everything
else there waiting, the sha256 of the stored bytes included; as a stage of the restore's
pipeline (object file -> this process -> ``tar --zstd -x``) it runs on a core of its own
while the restoring process hashes the same file::

    python -m pg_backup_assets.core.storage.age_decrypt IDENTITY_FILE OBJECT_FILE
"""

from __future__ import annotations

import contextlib
import fcntl
import sys
from pathlib import Path

import pyrage

from pg_backup_assets.core.errors import PgBackupError
from pg_backup_assets.core.storage.codec import load_identities

BUFFER = 1 << 20  # pyrage reads and writes 8 KiB at a time: buffered to 1 MiB each way


def main(argv: list[str]) -> int:
    identity_file, obj = argv
    # A wider pipe to the next stage: fewer switches between the two processes (nothing
    # when stdout is no pipe, or the system's pipe-max-size is lower).
    with contextlib.suppress(OSError):
        fcntl.fcntl(sys.stdout.fileno(), fcntl.F_SETPIPE_SZ, BUFFER)
    try:
        identities = load_identities(Path(identity_file))
        with (
            open(obj, "rb", buffering=BUFFER) as src,
            open(sys.stdout.fileno(), "wb", buffering=BUFFER, closefd=False) as out,
        ):
            pyrage.decrypt_io(src, out, identities)
    except (PgBackupError, pyrage.DecryptError, OSError) as exc:
        print(f"cannot decrypt {Path(obj).name}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
