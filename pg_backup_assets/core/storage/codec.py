"""The streaming codec: zstd compression, optional age encryption, sha256 while streaming.

Stored form is ``age(zstd(raw))`` (or ``zstd(raw)`` without encryption), readable with the
stock tools: ``age -d -i KEY obj | zstd -d``. Data moves in 1 MiB chunks; nothing is ever
held whole in memory. While encoding, the sha256 sums are computed on threads of their own
(hashlib releases the GIL), beside compression and encryption rather than after them.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO, NamedTuple

import zstandard

from pg_backup_assets.core.errors import ConfigError, IntegrityError
from pg_backup_assets.core.storage.base import CHUNK

Progress = Callable[[int], None]


class Codec(NamedTuple):
    """How objects are encoded: zstd level/threads and the age recipients (if any)."""

    recipients: tuple[str, ...] = ()
    level: int = 3
    threads: int = 0

    @property
    def suffix(self) -> str:
        return ".zst.age" if self.recipients else ".zst"

    @property
    def encrypted(self) -> bool:
        return bool(self.recipients)


class Decoded(NamedTuple):
    raw_bytes: int
    raw_sha256: str


class Encoded(NamedTuple):
    raw_bytes: int
    stored_bytes: int
    sha256: str | None  # of the stored bytes, verifiable without the key (None: not asked for)
    raw_sha256: str


class BackgroundSha256:
    """A sha256 fed through a small queue to a thread of its own: the caller's thread goes
    on compressing or encrypting while the previous chunks are hashed. ``update`` takes
    bytes objects (never a buffer that is reused); ``hexdigest`` waits for the last one."""

    DEPTH = 8  # chunks queued at most: 8 MiB

    def __init__(self) -> None:
        import queue
        import threading

        self._hash = hashlib.sha256()
        self._queue: queue.Queue[bytes | None] = queue.Queue(self.DEPTH)
        self._thread = threading.Thread(target=self._run, name="sha256", daemon=True)
        self._thread.start()
        self._open = True

    def _run(self) -> None:
        while (data := self._queue.get()) is not None:
            self._hash.update(data)

    def update(self, data: bytes) -> None:
        self._queue.put(data)

    def close(self) -> None:
        if self._open:
            self._open = False
            self._queue.put(None)
            self._thread.join()

    def hexdigest(self) -> str:
        self.close()
        return self._hash.hexdigest()


class HashingReader:
    def __init__(
        self,
        raw: BinaryIO,
        progress: Progress | None = None,
        background: bool = False,
        hashing: bool = True,
    ):
        self._raw = raw
        self._progress = progress
        self.hash = None if not hashing else BackgroundSha256() if background else hashlib.sha256()
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(CHUNK if n is None or n < 0 else n)
        if self.hash is not None:
            self.hash.update(data)
        self.count += len(data)
        if self._progress and data:
            self._progress(self.count)
        return data

    def readinto(self, buf) -> int:  # noqa: ANN001 - buffer protocol
        data = self.read(len(buf))
        buf[: len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True


class _HashingWriter:
    def __init__(self, raw: BinaryIO, background: bool = False, hashing: bool = True):
        self._raw = raw
        self.hash = None if not hashing else BackgroundSha256() if background else hashlib.sha256()
        self.count = 0

    def write(self, data) -> int:  # noqa: ANN001 - bytes-like
        data = bytes(data)
        self._raw.write(data)
        if self.hash is not None:
            self.hash.update(data)
        self.count += len(data)
        return len(data)

    def flush(self) -> None:
        self._raw.flush()

    def writable(self) -> bool:
        return True


class _Rechunked:
    """Serves small reads from CHUNK-sized ones: pyrage asks for 8 KiB at a time, which
    would otherwise be one read of the file and one hash update every 8 KiB."""

    def __init__(self, src: BinaryIO):
        self._src = src
        self._buf = b""
        self._pos = 0

    def read(self, n: int = -1) -> bytes:
        if self._pos >= len(self._buf):
            self._buf, self._pos = self._src.read(CHUNK), 0
        end = len(self._buf) if n is None or n < 0 else self._pos + n
        out = self._buf[self._pos : end]
        self._pos += len(out)
        return out

    def readable(self) -> bool:
        return True


class _Coalesced:
    """Passes writes on in CHUNK-sized pieces (pyrage writes 64 KiB at a time)."""

    def __init__(self, dst: BinaryIO):
        self._dst = dst
        self._buf = bytearray()

    def write(self, data) -> int:  # noqa: ANN001 - bytes-like
        self._buf += data
        if len(self._buf) >= CHUNK:
            self._dst.write(bytes(self._buf))
            self._buf.clear()
        return len(data)

    def flush(self) -> None:
        if self._buf:
            self._dst.write(bytes(self._buf))
            self._buf.clear()
        self._dst.flush()

    def writable(self) -> bool:
        return True


def _copy(src, dst) -> None:  # noqa: ANN001 - file-likes
    while chunk := src.read(CHUNK):
        dst.write(chunk)


def encode(
    src: BinaryIO,
    dst: BinaryIO,
    codec: Codec,
    progress: Progress | None = None,
    precompressed: bool = False,
    stored_sha256: bool = True,
    raw_sha256: bool = True,
    hash_aside: bool = True,
) -> Encoded:
    """Compress (and encrypt) ``src`` into ``dst``; return sizes and checksums.

    ``precompressed``: ``src`` is already a zstd stream (server-side compression); it is
    only encrypted, and the stored form is the same ``age(zstd(raw))``. Its "raw" size and
    sha256 are then those of the zstd stream. ``stored_sha256=False``: the caller needs no
    sha256 of the stored bytes (WAL objects are named after the raw one), so none is made.
    ``raw_sha256=False``: nor of the raw bytes (a base backup's part: the manifest has a
    checksum of every file in it); its ``raw_sha256`` is then "".
    ``hash_aside``: hash on a thread of its own while this one compresses (less time for
    one object when a core is free); False: hash here, for a caller whose own threads
    already keep the cores busy (less CPU: no queue, no chunks crossing cores or piling up).
    """
    raw = HashingReader(src, progress, background=hash_aside, hashing=raw_sha256)
    out = _HashingWriter(dst, background=hash_aside, hashing=stored_sha256)
    try:
        with contextlib.ExitStack() as stack:
            if precompressed:
                compressed = raw
            else:
                cctx = zstandard.ZstdCompressor(
                    level=codec.level,
                    threads=codec.threads,
                    write_checksum=True,
                )
                compressed = stack.enter_context(
                    cctx.stream_reader(raw, read_size=CHUNK, closefd=False)
                )
            if codec.recipients:
                import pyrage

                sink = _Coalesced(out)
                pyrage.encrypt_io(_Rechunked(compressed), sink, _recipients(codec.recipients))
                sink.flush()
            else:
                _copy(compressed, out)
        out.flush()
        stored = out.hash.hexdigest() if out.hash is not None else None
        raw_digest = raw.hash.hexdigest() if raw.hash is not None else ""
        return Encoded(raw.count, out.count, stored, raw_digest)
    finally:
        for h in (raw.hash, out.hash):
            if isinstance(h, BackgroundSha256):
                h.close()  # its thread ends, whatever happened


def decode(
    src: BinaryIO,
    dst: BinaryIO,
    *,
    name: str,
    encrypted: bool,
    identities: Sequence[object] = (),
    expected_sha256: str | None = None,
) -> Decoded:
    """Decrypt and decompress ``src`` into ``dst``; return the raw size and sha256.

    ``name`` is used in error messages. When ``expected_sha256`` is given, the stored bytes
    are checked against it; a mismatch raises IntegrityError (after ``dst`` has received
    data, so callers that must not see bad data verify first with ``sha256_of``).
    """
    stored = HashingReader(src)
    out = _HashingWriter(dst)
    dctx = zstandard.ZstdDecompressor()
    try:
        if encrypted:
            if not identities:
                raise ConfigError(
                    f"{name} is encrypted: set encryption.identity_file in the config "
                    "to the age identity (private key) that matches its recipients"
                )
            decrypt_into(stored, out, name, identities, dctx)
        else:
            with dctx.stream_reader(stored, read_size=CHUNK, closefd=False) as plain:
                _copy(plain, out)
        _copy(stored, Discard())  # count trailing bytes into the checksum
    except zstandard.ZstdError as exc:
        raise IntegrityError(f"cannot decompress {name}: {exc} (the object is damaged)") from None
    if expected_sha256 and stored.hash.hexdigest() != expected_sha256:
        raise IntegrityError(
            f"{name} is damaged: sha256 {stored.hash.hexdigest()} does not match the catalog's "
            f"{expected_sha256}"
        )
    out.flush()
    return Decoded(out.count, out.hash.hexdigest())


def decrypt_into(
    stored: BinaryIO,
    out: BinaryIO,
    name: str,
    identities: Sequence[object],
    dctx: zstandard.ZstdDecompressor | None = None,
) -> None:
    """Decrypt and decompress ``stored`` into ``out``, checking nothing but age's own
    authentication (``decode`` adds the checksums; a restore hashes the stored bytes in
    another process). ZstdError when the decrypted stream is not zstd."""
    import pyrage

    dctx = dctx or zstandard.ZstdDecompressor()
    try:
        with dctx.stream_writer(out, write_size=CHUNK, closefd=False) as plain:
            sink = _Coalesced(plain)
            try:
                pyrage.decrypt_io(_Rechunked(stored), sink, list(identities))
                sink.flush()
            except OSError as exc:  # pyrage reports a failed MAC as an OSError
                raise IntegrityError(
                    f"cannot decrypt {name}: {exc} (the object is damaged or truncated)"
                ) from None
    except pyrage.DecryptError as exc:
        if "no matching keys" in str(exc).lower():
            raise IntegrityError(
                f"cannot decrypt {name}: the configured identity does not match any of its "
                "recipients (wrong key?)"
            ) from None
        raise IntegrityError(f"cannot decrypt {name}: {exc} (the object is damaged)") from None


def sha256_of(src: BinaryIO) -> tuple[str, int]:
    """sha256 and size of a stream, read in chunks."""
    h = hashlib.sha256()
    n = 0
    while chunk := src.read(CHUNK):
        h.update(chunk)
        n += len(chunk)
    return h.hexdigest(), n


class Discard:
    """A sink that only counts: for decoding an object to check it."""

    def write(self, data) -> int:  # noqa: ANN001
        return len(data)

    def flush(self) -> None:
        pass


def _recipients(values: Sequence[str]) -> list[object]:
    import pyrage

    out = []
    for value in values:
        try:
            if value.startswith("ssh-"):
                out.append(pyrage.ssh.Recipient.from_str(value))
            else:
                out.append(pyrage.x25519.Recipient.from_str(value))
        except pyrage.RecipientError:
            raise ConfigError(
                f"encryption.recipients: {value[:12]}... is not a valid age recipient"
            ) from None
    return out


def load_identities(path: Path) -> list[object]:
    """Read an age identity file (as written by ``age-keygen``)."""
    import pyrage

    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read encryption.identity_file {path}: {exc.strerror}") from None
    identities = []
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            identities.append(pyrage.x25519.Identity.from_str(line))
        except pyrage.IdentityError:
            raise ConfigError(
                f"encryption.identity_file {path} line {n} is not an age identity "
                "(expected AGE-SECRET-KEY-1...)"
            ) from None
    if not identities:
        raise ConfigError(f"encryption.identity_file {path} holds no age identity")
    return identities


def generate_identity() -> tuple[str, str]:
    """A new age key pair as (identity file text, recipient)."""
    import pyrage

    ident = pyrage.x25519.Identity.generate()
    recipient = str(ident.to_public())
    return f"# public key: {recipient}\n{ident}\n", recipient
