"""The storage interface every repository backend implements (local filesystem, S3).

The interface is deliberately small (put/open/list/stat/delete). Writes are atomic: an
object is either absent or complete.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, NamedTuple, Protocol

from pg_backup_assets.core.errors import PgBackupError

CHUNK = 1 << 20  # 1 MiB: the unit every stream in the engine moves


class ObjectInfo(NamedTuple):
    key: str
    size: int
    mtime: float


class Storage(Protocol):
    """What the repository needs from a place that stores objects under string keys."""

    def writer(
        self, key: str, final_key: Callable[[], str] | None = None
    ) -> contextlib.AbstractContextManager[BinaryIO]:
        """A file to write ``key`` into; the object appears only when the block exits cleanly.

        ``final_key``: for content-addressed objects, called once the content is written to
        name the object instead of ``key`` (same folder).
        """

    def open(self, key: str) -> BinaryIO:
        """Read an object; raises NotFoundError when it does not exist."""

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        """Every object whose key starts with ``prefix``, sorted by key."""

    def stat(self, key: str) -> ObjectInfo:
        """Size and mtime of an object; raises NotFoundError when it does not exist."""

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None:
        """Remove an object; removing an absent object is not an error."""

    def describe(self) -> str:
        """Where this storage is, for messages (never with credentials)."""


def check_key(key: str) -> str:
    """``key`` if it is a safe relative object key (no empty, ".", ".." or leading "/")."""
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise PgBackupError(f"invalid repository key {key!r}")
    return key


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
