"""The local filesystem backend: a repository folder on a local (or mounted) filesystem.

Every object is written to a temporary name, fsynced and renamed, and its folder fsynced.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from pg_backup_assets.core.errors import NotFoundError, PgBackupError
from pg_backup_assets.core.storage.base import ObjectInfo, check_key, fsync_dir


class LocalStorage:
    """A repository folder on a local (or mounted) filesystem.

    Objects get mode ``files`` and folders ``folders`` (whatever the umask of the process
    that writes them: PostgreSQL's archive_command runs under the postmaster's 0077), and
    both go to ``group`` when one is set, so that the postgres user and the Dagster user can
    share the repository without it being readable by everyone.
    """

    TMP_MARK = ".tmp-"

    def __init__(
        self,
        root: str | os.PathLike[str],
        files: int = 0o640,
        folders: int = 0o750,
        group: str | None = None,
    ):
        self.root = Path(root)
        self.files, self.folders, self.group = files, folders, group
        self._group_id: int | None = None

    def describe(self) -> str:
        return str(self.root)

    def path(self, key: str) -> Path:
        return self.root / check_key(key)

    @contextlib.contextmanager
    def writer(self, key: str, final_key: Callable[[], str] | None = None) -> Iterator[BinaryIO]:
        final = self.path(key)
        tmp = final.with_name(f"{final.name}{self.TMP_MARK}{os.urandom(6).hex()}")
        try:
            self._mkdirs(final.parent)
            f = open(tmp, "xb")  # noqa: SIM115 - closed below on both paths
        except OSError as exc:
            raise PgBackupError(
                f"cannot write {key} in the repository at {self.root}: {exc.strerror} "
                f"(as OS user {_whoami()}: the repository must be writable by every user that "
                "backs up into it, including the postgres user that runs archive_command)"
            ) from None
        try:
            self._own(f.fileno(), final.parent, self.files, key)
            yield f
            f.flush()
            os.fsync(f.fileno())
            f.close()
            if final_key is not None:
                final = self.path(final_key())
                if final.parent != tmp.parent:
                    raise PgBackupError(f"{final_key()} is not in the folder of {key}")
            os.replace(tmp, final)
            fsync_dir(final.parent)
        except BaseException:
            f.close()
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise

    def adopt(self, path: Path, key: str) -> bool:
        """Move a finished file on the same filesystem into the repository as ``key``
        (fsynced, then renamed: no copy). False when it is on another filesystem."""
        final = self.path(key)
        self._mkdirs(final.parent)
        if path.stat().st_dev != final.parent.stat().st_dev:
            return False
        with open(path, "rb") as f:
            self._own(f.fileno(), final.parent, self.files, key)
            os.fsync(f.fileno())
        os.replace(path, final)
        fsync_dir(final.parent)
        return True

    def _gid(self) -> int | None:
        if self.group is not None and self._group_id is None:
            import grp

            try:
                self._group_id = grp.getgrnam(self.group).gr_gid
            except KeyError:
                raise PgBackupError(
                    f"repository_mode.group {self.group!r} is not an OS group here"
                ) from None
        return self._group_id

    def _own(self, fd: int, parent: Path, mode: int, what: object) -> None:
        """Give a new file or folder its mode (whatever the umask) and group. As root, the
        owner of the folder it is in too: the repository is shared by the postgres OS user
        (wal-push from archive_command) and whoever runs Dagster."""
        os.fchmod(fd, mode)
        uid, gid = -1, self._gid()
        if os.geteuid() == 0:
            st = parent.stat()
            uid, gid = st.st_uid, (st.st_gid if gid is None else gid)
        if uid == -1 and gid is None:
            return
        try:
            os.fchown(fd, uid, -1 if gid is None else gid)
        except PermissionError:
            raise PgBackupError(
                f"cannot give {what} to group {self.group!r} (as OS user {_whoami()}: it "
                f"must be a member of {self.group!r})"
            ) from None

    def _mkdirs(self, path: Path) -> None:
        """Create missing folders, mode and group as configured, and make their entries
        durable in their parents."""
        missing = []
        p = path
        while not p.exists():
            missing.append(p)
            p = p.parent
        for d in reversed(missing):
            try:
                d.mkdir(mode=self.folders)
            except FileExistsError:
                continue
            fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
            try:
                self._own(fd, d.parent, self.folders, d)
            finally:
                os.close(fd)
            fsync_dir(d.parent)

    def open(self, key: str) -> BinaryIO:
        try:
            return open(self.path(key), "rb")
        except FileNotFoundError:
            raise NotFoundError(f"{key} is not in the repository at {self.root}") from None

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        if not self.root.is_dir():
            return []
        # Read only the folder the prefix names and, below it, the folders whose names
        # match the rest of the prefix: a WAL push lists one folder of up to 256 segments
        # for its own name, a gap check the whole archive.
        folder, _, tail = prefix.rpartition("/")
        out: list[ObjectInfo] = []
        self._scan(os.path.join(self.root, folder), f"{folder}/" if folder else "", tail, out)
        out.sort(key=lambda o: o.key)
        return out

    def _scan(self, path: str, base: str, tail: str, out: list[ObjectInfo]) -> None:
        """Objects in folder ``path`` (key prefix ``base``) and below whose names start
        with ``tail``, into ``out``; the repository's own hidden folders (``.staging``) are
        left out, as temporary files are."""
        try:
            with os.scandir(path) as it:
                entries = [e for e in it if e.name.startswith(tail)]
        except OSError as exc:
            _walk_error(exc)
            return
        for entry in entries:
            try:
                if entry.is_dir():  # as os.walk: a link to a folder is neither listed nor followed
                    if not entry.is_symlink() and (base or not entry.name.startswith(".")):
                        self._scan(entry.path, f"{base}{entry.name}/", "", out)
                elif self.TMP_MARK not in entry.name:
                    st = entry.stat()
                    out.append(ObjectInfo(f"{base}{entry.name}", st.st_size, st.st_mtime))
            except FileNotFoundError:
                continue  # removed meanwhile (expiry, a writer's rename)
            except OSError as exc:
                _walk_error(exc)

    def sweep_temporary(self, prefix: str, older_than: float) -> list[str]:
        """Remove what killed writers left under ``prefix``: temporary files not written
        to since ``older_than`` (a time). A live writer's file is younger: it is being
        written. Never listed as objects, they only take space. Returns their keys."""
        start = self.root / prefix.rstrip("/")
        removed = []
        for dirpath, _, files in os.walk(start):
            for name in files:
                full = Path(dirpath) / name
                if self.TMP_MARK not in name:
                    continue
                with contextlib.suppress(FileNotFoundError):
                    if full.stat().st_mtime < older_than:
                        full.unlink()
                        removed.append(full.relative_to(self.root).as_posix())
        return removed

    def stat(self, key: str) -> ObjectInfo:
        try:
            st = self.path(key).stat()
        except FileNotFoundError:
            raise NotFoundError(f"{key} is not in the repository at {self.root}") from None
        return ObjectInfo(key, st.st_size, st.st_mtime)

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def delete(self, key: str) -> None:
        path = self.path(key)
        try:
            path.unlink()
        except FileNotFoundError:
            return
        fsync_dir(path.parent)


def _walk_error(exc: OSError) -> None:
    # An unreadable folder must not look like an empty one ("segment not archived").
    if not isinstance(exc, FileNotFoundError):
        raise PgBackupError(
            f"cannot read {exc.filename}: {exc.strerror} (as OS user {_whoami()})"
        ) from None


def _whoami() -> str:
    import pwd

    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())
