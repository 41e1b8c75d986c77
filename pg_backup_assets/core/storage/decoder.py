"""Decode an encrypted repository object (age, then zstd) to stdout, as a process of its own.

pyrage holds the GIL while it decrypts. In the restoring process it would keep everything
else there waiting, the sha256 of the stored bytes included; as a stage of the restore's
pipeline (object file -> this process -> ``tar -x``) it runs on a core of its own while the
restoring process hashes the same file. It decompresses too, so that tar gets the plain
archive through one pipe instead of two::

    python -m pg_backup_assets.core.storage.decoder IDENTITY_FILE OBJECT_FILE
"""

from __future__ import annotations

import contextlib
import fcntl
import sys
from pathlib import Path

import zstandard

from pg_backup_assets.core.errors import PgBackupError
from pg_backup_assets.core.storage.codec import decrypt_into, load_identities

BUFFER = 1 << 20  # pyrage reads and writes 8 KiB at a time: buffered to 1 MiB each way


def main(argv: list[str]) -> int:
    identity_file, obj = argv
    # A wider pipe to the next stage: fewer switches between the two processes (nothing
    # when stdout is no pipe, or the system's pipe-max-size is lower).
    with contextlib.suppress(OSError):
        fcntl.fcntl(sys.stdout.fileno(), fcntl.F_SETPIPE_SZ, BUFFER)
    name = Path(obj).name
    try:
        identities = load_identities(Path(identity_file))
        with (
            open(obj, "rb", buffering=BUFFER) as src,
            open(sys.stdout.fileno(), "wb", buffering=BUFFER, closefd=False) as out,
        ):
            decrypt_into(src, out, name, identities)
    except zstandard.ZstdError as exc:
        print(f"cannot decompress {name}: {exc} (the object is damaged)", file=sys.stderr)
        return 1
    except (PgBackupError, OSError) as exc:
        print(str(exc) if isinstance(exc, PgBackupError) else f"{name}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
