"""A base backup in parts: pg_basebackup's tar stream, cut at file boundaries.

pg_basebackup writes one tar archive of the data directory to stdout (``-Ft -D -``), with
the ``backup_manifest`` appended as its last member. That stream is read here header by
header and cut into parts of about ``part_size`` bytes, each a complete tar archive of
whole files (a file larger than a part makes a part of its own). Each part is compressed
and encrypted by an ``encoder`` process (stored as ``age(zstd(tar))``, like every object:
``age -d | zstd -d | tar -x`` opens it), so a restore can extract the parts in parallel.
``global/pg_control`` goes into a part of its own, which a restore writes last.

Why not compression on the server: pg_basebackup refuses to append the manifest to a
compressed stream on stdout ("cannot inject manifest into a compressed tar file"), and a
stream that is compressed cannot be cut at file boundaries without decompressing it again.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from pg_backup_assets.core.base.untar import BLOCK, PREFIX_TYPES, header
from pg_backup_assets.core.catalog import CONTROL_FILE, Part
from pg_backup_assets.core.errors import IntegrityError, PgBackupError
from pg_backup_assets.core.storage.codec import Codec, Encoded, sha256_of
from pg_backup_assets.core.tools import age_command

MANIFEST = "backup_manifest"
CONTROL_PART = "pg_control.tar"
_END = bytes(2 * BLOCK)  # a tar archive ends with two zero blocks
_READ = 1 << 20


def wide_pipe(f: BinaryIO) -> None:
    """A 1 MiB pipe instead of 64 KiB: fewer switches between the stages of the backup's
    pipeline (pg_basebackup -> this process -> encoder); nothing when the system's
    pipe-max-size is lower."""
    with contextlib.suppress(OSError):
        fcntl.fcntl(f.fileno(), fcntl.F_SETPIPE_SZ, _READ)


def part_name(n: int) -> str:
    return f"part-{n:04d}.tar"


class PartEncoder:
    """One part being written: a tar archive piped into the stock tools, ``zstd`` and then
    ``age`` when the repository encrypts (the ``encoder`` module instead of ``age`` when
    the age command is not installed). They write the stored form straight into the
    staging file; once they are done, a thread of this process hashes (sha256) and
    fsyncs that file while the next parts are being written."""

    def __init__(self, name: str, folder: Path, codec: Codec, threads: int):
        self.name = name
        self.path = folder / (name + codec.suffix)
        self.files: list[tuple[str, int]] = []
        self.others: list[str] = []
        self.bytes = 0
        self._stderr = open(folder / f"{name}.err", "w+b")  # noqa: SIM115 - closed in result()
        self._procs = _encoding(self.path, codec, threads, self._stderr)
        self._stdin = self._procs[0].stdin
        wide_pipe(self._stdin)
        self._finisher: threading.Thread | None = None
        self._outcome: tuple[str, int] | BaseException | None = None

    def write(self, data: bytes | memoryview) -> None:
        try:
            self._stdin.write(data)
        except BrokenPipeError:
            raise PgBackupError(f"encoding {self.name} failed: {self._said()}") from None
        self.bytes += len(data)

    def splice(self, fd: int, n: int) -> None:
        """Move ``n`` bytes from the pipe ``fd`` into the encoder's pipe inside the kernel
        (no copy through this process)."""
        self._stdin.flush()
        dst = self._stdin.fileno()
        left = n
        try:
            while left > 0:
                moved = os.splice(fd, dst, min(left, _READ))
                if moved == 0:
                    raise PgBackupError("pg_basebackup's stream ended in the middle of a file")
                left -= moved
        except BrokenPipeError:
            raise PgBackupError(f"encoding {self.name} failed: {self._said()}") from None
        self.bytes += n

    def close(self) -> None:
        """End the archive; the encoding finishes, then the file is hashed and fsynced, in
        the background (see ``result``)."""
        if not self._stdin.closed:
            self.write(_END)
            self._stdin.close()
            self._finisher = threading.Thread(target=self._finish, name=f"finish {self.name}")
            self._finisher.start()

    def _finish(self) -> None:
        try:
            if any(proc.wait() != 0 for proc in self._procs):
                return
            with open(self.path, "rb") as f:
                self._outcome = sha256_of(f)
                os.fsync(f.fileno())  # the repository's own fsync then finds nothing to do
        except BaseException as exc:  # handed to result()
            self._outcome = exc

    def result(self) -> Encoded:
        try:
            if self._finisher is None:
                raise PgBackupError(f"encoding {self.name} never ended")
            self._finisher.join()
            codes = [proc.wait() for proc in self._procs]
            if any(codes):
                failed = ", ".join(str(c) for c in codes)
                raise PgBackupError(f"encoding {self.name} failed (exit {failed}): {self._said()}")
            if isinstance(self._outcome, BaseException):
                raise self._outcome
            digest, size = self._outcome
            return Encoded(self.bytes, size, digest, "")
        finally:
            self._close_pipes()

    def kill(self) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
        for proc in self._procs:
            proc.wait()
        if self._finisher is not None:
            self._finisher.join()
        self._close_pipes()

    def _close_pipes(self) -> None:
        for f in (self._stdin, self._stderr):
            with contextlib.suppress(OSError):
                f.close()

    def _said(self) -> str:
        for proc in self._procs:
            proc.wait()
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace").strip()[-1000:]


def _encoding(path: Path, codec: Codec, threads: int, err: BinaryIO) -> list[subprocess.Popen]:
    """The processes that turn a tar archive on stdin into ``path``'s stored form: zstd,
    then age (or the ``encoder`` module when there is no age command); the first one reads
    the archive. The stock tools are faster than zstandard and pyrage in a Python process
    (measured in BENCHMARKS.md, base backup)."""
    zstd = ["zstd", f"-{codec.level}", f"-T{threads}", "-q", "-f", "--no-progress"]
    if not codec.recipients:
        return [subprocess.Popen([*zstd, "-o", str(path)], stdin=subprocess.PIPE, stderr=err)]
    age = age_command()
    if age is None:
        return [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "pg_backup_assets.core.storage.encoder",
                    str(path),
                    str(codec.level),
                    str(threads),
                    *codec.recipients,
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        ]
    compress = subprocess.Popen(
        [*zstd, "-c"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err
    )
    recipients = [arg for r in codec.recipients for arg in ("-r", r)]
    encrypt = subprocess.Popen(
        [age, "-e", *recipients, "-o", str(path)], stdin=compress.stdout, stderr=err
    )
    compress.stdout.close()  # age's now: it sees the end when zstd ends
    return [compress, encrypt]


class _Blocks:
    """Exact reads from a pipe, and copies of n bytes on to a writer without a detour."""

    def __init__(self, src: BinaryIO):
        self.fd = src.fileno()  # read unbuffered: file contents are spliced from it
        self.buf = b""
        self.pos = 0
        self.count = 0  # bytes consumed from the stream

    def read_exact(self, n: int) -> bytes:
        if len(self.buf) - self.pos < n:
            parts = [self.buf[self.pos :]]
            have = len(parts[0])
            while have < n:
                more = os.read(self.fd, max(_READ, n - have))
                if not more:
                    raise PgBackupError(
                        "pg_basebackup's stream ended in the middle of a tar member"
                    )
                parts.append(more)
                have += len(more)
            self.buf, self.pos = b"".join(parts), 0
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        self.count += n
        return out

    def copy(self, n: int, part: PartEncoder) -> None:
        take = min(len(self.buf) - self.pos, n)
        if take > 0:
            part.write(memoryview(self.buf)[self.pos : self.pos + take])
            self.pos += take
            self.count += take
            n -= take
        if n > 0:
            part.splice(self.fd, n)
            self.count += n

    def drain(self) -> None:
        self.buf, self.pos = b"", 0
        while os.read(self.fd, _READ):
            pass


class Splitter:
    """Reads pg_basebackup's tar stream and writes it into parts; keeps the manifest."""

    def __init__(self, open_part: Callable[[str], PartEncoder], part_size: int):
        self.open_part = open_part
        self.part_size = part_size
        self.parts: list[PartEncoder] = []
        self.control: PartEncoder | None = None
        self.manifest: bytes | None = None
        self.stream: _Blocks | None = None

    @property
    def bytes_read(self) -> int:
        return self.stream.count if self.stream else 0

    def _current(self, size: int) -> PartEncoder:
        current = self.parts[-1] if self.parts else None
        if current is None or (current.files and current.bytes + size > self.part_size):
            if current is not None:
                current.close()
            current = self.open_part(part_name(len(self.parts) + 1))
            self.parts.append(current)
        return current

    def split(self, src: BinaryIO) -> None:
        self.stream = stream = _Blocks(src)
        pending = b""
        while True:
            block = stream.read_exact(BLOCK)
            if block == bytes(BLOCK):
                stream.drain()
                break
            name, size, kind = header(block, "pg_basebackup's stream")
            padded = -(-size // BLOCK) * BLOCK
            if kind in PREFIX_TYPES:  # kept with the member it describes
                pending += block + stream.read_exact(padded)
                continue
            if name == MANIFEST and not pending:
                self.manifest = stream.read_exact(padded)[:size]
                continue
            regular = kind in (b"0", b"\0", b"7")
            if name == CONTROL_FILE:
                self.control = self.control or self.open_part(CONTROL_PART)
                target = self.control
            else:
                target = self._current(padded + BLOCK if regular else 0)
            target.write(pending + block)
            pending = b""
            stream.copy(padded, target)
            if regular:
                target.files.append((name, size))
            else:
                target.others.append(name)
        for part in [*self.parts, *([self.control] if self.control else [])]:
            part.close()

    def encoders(self) -> list[PartEncoder]:
        return [*self.parts, *([self.control] if self.control else [])]


def index(encoders: list[PartEncoder], manifest: dict[str, Any]) -> tuple[tuple[Part, ...], str]:
    """The catalog's index of the parts, each file with its size and the manifest's
    checksum; (parts, checksum algorithm). Every file of the manifest is in one part."""
    listed = {f["Path"]: f for f in manifest["Files"]}
    algorithms = {f.get("Checksum-Algorithm", "NONE") for f in manifest["Files"]}
    parts, seen = [], set()
    for enc in encoders:
        files = []
        for path, size in enc.files:
            entry = listed.get(path)
            if entry is None or entry["Size"] != size:
                raise IntegrityError(
                    f"{path} ({size:,} bytes) in pg_basebackup's stream does not match its "
                    "backup_manifest; the backup was not kept"
                )
            files.append((path, size, entry.get("Checksum", "")))
            seen.add(path)
        parts.append(Part(enc.name, tuple(files), tuple(enc.others)))
    missing = sorted(set(listed) - seen)
    if missing:
        raise IntegrityError(
            f"the backup_manifest lists {len(missing)} files that pg_basebackup's stream did "
            f"not hold (e.g. {missing[0]}); the backup was not kept"
        )
    return tuple(parts), "/".join(sorted(algorithms))


def encoder_threads() -> int:
    """zstd threads in each part's encoder: the stream is cut sequentially, so one part is
    written at a time, and its compression uses every core."""
    return os.cpu_count() or 1
