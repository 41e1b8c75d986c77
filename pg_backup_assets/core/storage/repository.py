"""The repository: encoded objects plus a JSON catalog entry per backup set.

A backup set (one day's dumps, one base backup, ...) lives under its own folder and
becomes visible only when its ``catalog.json`` is written, after every object in it is
durable. An unfinished set is therefore never mistaken for a backup.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, NamedTuple

from pg_backup_assets.core.errors import ConfigError, IntegrityError, PgBackupError
from pg_backup_assets.core.storage.base import Storage
from pg_backup_assets.core.storage.codec import (
    Codec,
    Decoded,
    Encoded,
    Progress,
    decode,
    encode,
    load_identities,
    sha256_of,
)
from pg_backup_assets.core.storage.local import LocalStorage

if TYPE_CHECKING:  # wal-push builds a Repository without parsing the config
    import subprocess

    from pg_backup_assets.core.config import Config
    from pg_backup_assets.core.progress import Log

CATALOG = "catalog.json"


class ObjectRecord(NamedTuple):
    """One stored object as the catalog records it."""

    key: str
    raw_bytes: int
    stored_bytes: int
    sha256: str
    raw_sha256: str
    encrypted: bool
    created_at: float

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ObjectRecord:
        return cls(**{k: d[k] for k in cls._fields})


class Repository:
    def __init__(
        self,
        storage: Storage,
        codec: Codec | None = None,
        identity_file: Path | None = None,
        scratch_dir: Path | None = None,
    ):
        self.storage = storage
        self.codec = codec or Codec()
        self.identity_file = identity_file
        self.scratch_dir = scratch_dir
        self._identities: list[object] | None = None

    @classmethod
    def from_config(cls, config: Config) -> Repository:
        enc = config.encryption
        return cls(
            local_storage(config, config.repository),
            Codec(recipients=enc.recipients if enc else ()),
            enc.identity_file if enc else None,
            config.scratch_dir,
        )

    @property
    def root(self) -> Path:
        """The repository's folder (the local repository is always a folder)."""
        root = getattr(self.storage, "root", None)
        if root is None:
            raise PgBackupError(f"{self.describe()} is not a local folder")
        return Path(root)

    def lock(self, cluster: str, operation: str, wait_s: float, log: Log):  # noqa: ANN201
        """The per-cluster lock for ``operation`` (see core/locks.py)."""
        from pg_backup_assets.core.locks import cluster_lock  # not on wal-push's path

        return cluster_lock(self.root, cluster, operation, wait_s, log)

    def describe(self) -> str:
        return self.storage.describe()

    # -- objects ---------------------------------------------------------------------------
    def put_stream(
        self,
        key: str,
        src: BinaryIO,
        progress: Progress | None = None,
        precompressed: bool = False,
    ) -> ObjectRecord:
        """Encode ``src`` into a new object ``key`` (the codec suffix is appended)."""
        key = key + self.codec.suffix
        with self.storage.writer(key) as f:
            enc = encode(src, f, self.codec, progress, precompressed)
        return self._record(key, enc)

    def _record(self, key: str, enc: Encoded) -> ObjectRecord:
        """The catalog record of object ``key``, stored with this repository's codec."""
        return ObjectRecord(
            key=key,
            raw_bytes=enc.raw_bytes,
            stored_bytes=enc.stored_bytes,
            sha256=enc.sha256,
            raw_sha256=enc.raw_sha256,
            encrypted=self.codec.encrypted,
            created_at=time.time(),
        )

    def put_file(self, key: str, path: Path, precompressed: bool = False) -> ObjectRecord:
        """Store a finished local file as ``key`` (the codec suffix is appended).

        A precompressed file that needs no encryption is moved in, not copied, when the
        repository is on its filesystem (a base backup is the largest thing we store).
        """
        adopt = getattr(self.storage, "adopt", None)
        if precompressed and not self.codec.encrypted and adopt is not None:
            with open(path, "rb") as f:
                digest, size = sha256_of(f)
            if adopt(path, key + self.codec.suffix):
                return ObjectRecord(
                    key=key + self.codec.suffix,
                    raw_bytes=size,
                    stored_bytes=size,
                    sha256=digest,
                    raw_sha256=digest,
                    encrypted=False,
                    created_at=time.time(),
                )
        with open(path, "rb") as f:
            return self.put_stream(key, f, precompressed=precompressed)

    def put_encoded(self, key: str, path: Path, enc: Encoded) -> ObjectRecord:
        """Store a local file that is already in the stored form (written by the
        ``encoder`` process with this repository's codec) as ``key`` (suffix appended):
        moved in when on the repository's filesystem, copied otherwise."""
        key = key + self.codec.suffix
        adopt = getattr(self.storage, "adopt", None)
        if adopt is None or not adopt(path, key):
            with open(path, "rb") as src, self.storage.writer(key) as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
        return self._record(key, enc)

    def verify(self, record: ObjectRecord) -> None:
        """Re-read a stored object and compare size and sha256 with the catalog."""
        with self.storage.open(record.key) as f:
            digest, size = sha256_of(f)
        if size != record.stored_bytes or digest != record.sha256:
            raise IntegrityError(
                f"{record.key} in {self.describe()} is damaged: sha256 {digest} ({size} bytes) "
                f"does not match the catalog's {record.sha256} ({record.stored_bytes} bytes)"
            )

    def read_into(self, record: ObjectRecord, dst: BinaryIO) -> Decoded:
        """Decode an object into ``dst``, checking its sha256 on the way."""
        with self.storage.open(record.key) as f:
            return decode(
                f,
                dst,
                name=record.key,
                encrypted=record.encrypted,
                identities=self.identities() if record.encrypted else (),
                expected_sha256=record.sha256,
            )

    def read_into_process(self, record: ObjectRecord, proc: subprocess.Popen[bytes]) -> bool:
        """Stream an object into a process's stdin; return False if it stopped reading early.

        The object is decoded to the end either way, so its checksum is always checked.
        """
        sink = _ProcessSink(proc)
        try:
            self.read_into(record, sink)
        finally:
            sink.close()
        return not sink.broken

    def identities(self) -> list[object]:
        if self._identities is None:
            if self.identity_file is None:
                raise ConfigError(
                    "the repository is encrypted: set encryption.identity_file in the config to "
                    "the age identity (private key) to restore or verify backups"
                )
            self._identities = load_identities(self.identity_file)
        return self._identities

    # -- catalog ---------------------------------------------------------------------------
    def put_json(self, key: str, doc: dict[str, Any]) -> None:
        data = json.dumps(doc, indent=2, sort_keys=True).encode()
        with self.storage.writer(key) as f:
            f.write(data)

    def get_json(self, key: str) -> dict[str, Any]:
        with self.storage.open(key) as f:
            return json.load(f)

    def catalogs(self, prefix: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """Every catalog entry under ``prefix`` as (key, document), oldest key first."""
        for info in self.storage.list(prefix):
            if info.key.endswith("/" + CATALOG):
                yield info.key, self.get_json(info.key)

    @contextlib.contextmanager
    def staging(self, scratch: bool = False) -> Iterator[Path]:
        """A scratch folder in the repository's ``.staging`` (same filesystem: a finished
        file is renamed in, not copied), or with ``scratch`` in ``scratch_dir`` when one is
        configured (verification extracts whole backups: not beside the WAL archive).

        The folder is held by an flock while in use; one that nobody holds (its run was
        killed) is removed the next time a staging folder is made there.
        """
        import fcntl
        import shutil
        import tempfile

        base = self.staging_base(scratch)
        base.mkdir(parents=True, exist_ok=True)
        sweep_staging(base)
        path = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=base))
        fd = os.open(path / IN_USE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)
            os.close(fd)

    def staging_base(self, scratch: bool = False) -> Path:
        """Where ``staging(scratch)`` makes its folders."""
        if scratch and self.scratch_dir is not None:
            return self.scratch_dir
        root = getattr(self.storage, "root", None)
        if root:
            return Path(root) / STAGING
        import tempfile

        return Path(tempfile.gettempdir())

    def sweep_unfinished_sets(self, prefix: str, log: Log) -> list[str]:
        """Remove the folders of sets under ``prefix`` (``<prefix><day>/<id>/``) that have no
        catalog entry: what a killed backup left. Only under the cluster's lock for that
        kind of backup, when no set of that kind can be in the making."""
        import shutil

        start = self.root / prefix
        removed = []
        for set_dir in sorted(start.glob("*/*")) if start.is_dir() else []:
            if set_dir.is_dir() and not (set_dir / CATALOG).exists():
                shutil.rmtree(set_dir)
                removed.append(f"{prefix}{set_dir.relative_to(start).as_posix()}")
        for key in removed:
            log(f"removed {key}: what an interrupted backup left (it has no catalog entry)")
        return removed

    @contextlib.contextmanager
    def new_set(self, prefix: str) -> Iterator[_SetWriter]:
        """Write the objects of one backup set; on failure they are removed again."""
        writer = _SetWriter(self, prefix)
        try:
            yield writer
        except BaseException:
            writer.discard()
            raise


class _SetWriter:
    def __init__(self, repo: Repository, prefix: str):
        self.repo = repo
        self.prefix = prefix.rstrip("/")
        self.records: list[ObjectRecord] = []

    def put_stream(
        self,
        name: str,
        src: BinaryIO,
        progress: Progress | None = None,
        precompressed: bool = False,
    ) -> ObjectRecord:
        record = self.repo.put_stream(f"{self.prefix}/{name}", src, progress, precompressed)
        self.records.append(record)
        return record

    def put_file(self, name: str, path: Path, precompressed: bool = False) -> ObjectRecord:
        record = self.repo.put_file(f"{self.prefix}/{name}", path, precompressed)
        self.records.append(record)
        return record

    def put_encoded(self, name: str, path: Path, enc: Encoded) -> ObjectRecord:
        record = self.repo.put_encoded(f"{self.prefix}/{name}", path, enc)
        self.records.append(record)
        return record

    def commit(self, doc: dict[str, Any]) -> str:
        """Write the catalog entry last: only now does the set exist."""
        key = f"{self.prefix}/{CATALOG}"
        self.repo.put_json(key, doc)
        return key

    def discard(self) -> None:
        for record in self.records:
            self.repo.storage.delete(record.key)


class _ProcessSink:
    def __init__(self, proc: subprocess.Popen[bytes]):
        self.proc = proc
        self.broken = False

    def write(self, data) -> int:  # noqa: ANN001 - bytes-like
        if not self.broken:
            try:
                self.proc.stdin.write(data)
            except BrokenPipeError:
                self.broken = True
        return len(data)

    def flush(self) -> None:
        if not self.broken:
            try:
                self.proc.stdin.flush()
            except BrokenPipeError:
                self.broken = True

    def close(self) -> None:
        with contextlib.suppress(BrokenPipeError, OSError):
            self.proc.stdin.close()


STAGING = ".staging"
STAGING_PREFIX = "pgbackup-"
IN_USE = ".in-use"
_STALE_S = 3600  # a staging folder without its lock file is someone's being made, for a while


def sweep_staging(base: Path) -> None:
    """Remove staging folders whose run is gone (nobody holds their flock)."""
    import shutil

    from pg_backup_assets.core.locks import is_held

    for path in base.glob(f"{STAGING_PREFIX}*"):
        in_use = path / IN_USE
        try:
            stale = (
                not is_held(in_use)
                if in_use.exists()
                else time.time() - path.stat().st_mtime > _STALE_S
            )
        except OSError:
            continue
        if stale:
            shutil.rmtree(path, ignore_errors=True)


def local_storage(config: Config, root: Path) -> LocalStorage:
    """A folder store with the config's repository_mode."""
    mode = config.repository_mode
    return LocalStorage(root, mode.files, mode.folders, mode.group)


def record_dict(record: ObjectRecord) -> dict[str, Any]:
    return record._asdict()
