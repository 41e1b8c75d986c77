"""Encode stdin into a file (zstd, then age when recipients are given), as a process of its own.

The counterpart of ``decoder``, for machines without the age command: a base backup in
parts is cut from pg_basebackup's stream by the backing-up process, and each part of an
encrypted backup is compressed and encrypted here, on a core of its own (pyrage holds the
GIL while it encrypts). The stored form is the repository's ``age(zstd(raw))``; the exit
status says whether it was written (the backing-up process counts, hashes and fsyncs the
file itself, as it does for the stock tools' output)::

    python -m pg_backup_assets.core.storage.encoder OUT LEVEL THREADS [RECIPIENT ...]

Recipients are public keys. The file is not fsynced here: the repository adopts it
(fsync, rename) once it is complete.
"""

from __future__ import annotations

import sys

from pg_backup_assets.core.errors import PgBackupError
from pg_backup_assets.core.storage.codec import Codec, encode

BUFFER = 1 << 20


def main(argv: list[str]) -> int:
    out, level, threads, *recipients = argv
    codec = Codec(recipients=tuple(recipients), level=int(level), threads=int(threads))
    try:
        with (
            open(sys.stdin.fileno(), "rb", buffering=BUFFER, closefd=False) as src,
            open(out, "wb", buffering=BUFFER) as dst,
        ):
            # No sha256 of the raw tar (the manifest has a checksum of every file in it),
            # nor of the stored bytes (the caller hashes the file it adopts).
            encode(src, dst, codec, raw_sha256=False, stored_sha256=False)
    except (PgBackupError, OSError) as exc:
        print(f"encoding {out}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
