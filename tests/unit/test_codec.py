import io
import os
import shutil
import subprocess
import tracemalloc

import pytest

from pg_backup_assets.core.errors import ConfigError, IntegrityError
from pg_backup_assets.core.storage.codec import (
    Codec,
    decode,
    encode,
    generate_identity,
    load_identities,
)

DATA = os.urandom(300_000) + b"compressible " * 200_000


@pytest.fixture
def keypair(tmp_path):
    text, recipient = generate_identity()
    path = tmp_path / "age.key"
    path.write_text(text)
    return path, recipient


def roundtrip(codec: Codec, identities=()):
    stored = io.BytesIO()
    enc = encode(io.BytesIO(DATA), stored, codec)
    out = io.BytesIO()
    decoded = decode(
        io.BytesIO(stored.getvalue()),
        out,
        name="obj",
        encrypted=codec.encrypted,
        identities=identities,
        expected_sha256=enc.sha256,
    )
    assert decoded.raw_sha256 == enc.raw_sha256
    return enc, stored.getvalue(), out.getvalue(), decoded.raw_bytes


def test_plain_roundtrip():
    enc, stored, out, n = roundtrip(Codec())
    assert out == DATA and n == len(DATA)
    assert enc.raw_bytes == len(DATA) and enc.stored_bytes == len(stored)
    assert enc.stored_bytes < enc.raw_bytes / 2  # it did compress


def test_encoding_without_the_raw_sha256_stores_the_same_bytes():
    with_raw, without = io.BytesIO(), io.BytesIO()
    a = encode(io.BytesIO(DATA), with_raw, Codec())
    b = encode(io.BytesIO(DATA), without, Codec(), raw_sha256=False)
    assert with_raw.getvalue() == without.getvalue()
    assert (b.sha256, b.raw_bytes, b.raw_sha256) == (a.sha256, a.raw_bytes, "")


def test_hashing_in_the_callers_thread_gives_the_same_object_and_sums():
    import hashlib
    import threading

    aside, here = io.BytesIO(), io.BytesIO()
    a = encode(io.BytesIO(DATA), aside, Codec())
    before = threading.active_count()
    b = encode(io.BytesIO(DATA), here, Codec(), hash_aside=False)
    assert threading.active_count() == before  # no hashing thread started (or left)
    assert aside.getvalue() == here.getvalue()
    assert a == b and b.raw_sha256 == hashlib.sha256(DATA).hexdigest()
    assert b.sha256 == hashlib.sha256(here.getvalue()).hexdigest()


def test_encrypted_roundtrip(keypair):
    path, recipient = keypair
    enc, stored, out, _ = roundtrip(Codec(recipients=(recipient,)), load_identities(path))
    assert out == DATA
    assert b"compressible" not in stored


@pytest.mark.parametrize("encrypted", [False, True])
def test_tampering_is_detected(keypair, encrypted):
    path, recipient = keypair
    codec = Codec(recipients=(recipient,) if encrypted else ())
    stored = io.BytesIO()
    enc = encode(io.BytesIO(DATA), stored, codec)
    damaged = bytearray(stored.getvalue())
    damaged[len(damaged) // 2] ^= 0x40
    with pytest.raises(IntegrityError, match="obj"):
        decode(
            io.BytesIO(bytes(damaged)),
            io.BytesIO(),
            name="obj",
            encrypted=encrypted,
            identities=load_identities(path),
            expected_sha256=enc.sha256,
        )


def test_truncation_is_detected():
    stored = io.BytesIO()
    enc = encode(io.BytesIO(DATA), stored, Codec())
    with pytest.raises(IntegrityError):
        decode(
            io.BytesIO(stored.getvalue()[:-100]),
            io.BytesIO(),
            name="obj",
            encrypted=False,
            expected_sha256=enc.sha256,
        )


def test_wrong_key_says_so(keypair, tmp_path):
    _, recipient = keypair
    stored = io.BytesIO()
    encode(io.BytesIO(DATA), stored, Codec(recipients=(recipient,)))
    other_text, _ = generate_identity()
    other = tmp_path / "other.key"
    other.write_text(other_text)
    with pytest.raises(IntegrityError, match="wrong key"):
        decode(
            io.BytesIO(stored.getvalue()),
            io.BytesIO(),
            name="obj",
            encrypted=True,
            identities=load_identities(other),
        )


def test_missing_identity_says_what_to_configure(keypair):
    _, recipient = keypair
    stored = io.BytesIO()
    encode(io.BytesIO(DATA), stored, Codec(recipients=(recipient,)))
    with pytest.raises(ConfigError, match="identity_file"):
        decode(io.BytesIO(stored.getvalue()), io.BytesIO(), name="obj", encrypted=True)


def test_bad_identity_file(tmp_path):
    bad = tmp_path / "bad.key"
    bad.write_text("# comment\nnot-a-key\n")
    with pytest.raises(ConfigError, match="line 2"):
        load_identities(bad)


def test_memory_stays_flat_for_large_streams():
    class Source:
        def __init__(self, size):
            self.left = size
            self.block = os.urandom(1 << 20)

        def read(self, n=-1):
            take = min(self.left, 1 << 20)
            self.left -= take
            return self.block[:take]

    class Sink:
        def write(self, data):
            return len(data)

        def flush(self):
            pass

    tracemalloc.start()
    enc = encode(Source(256 << 20), Sink(), Codec())
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert enc.raw_bytes == 256 << 20
    assert peak < 32 << 20, f"peak Python allocation {peak} bytes for a 256 MiB stream"


@pytest.mark.skipif(not (shutil.which("age") and shutil.which("zstd")), reason="age/zstd CLI")
def test_stock_age_and_zstd_cli_read_our_objects(keypair, tmp_path):
    path, recipient = keypair
    stored = tmp_path / "obj.zst.age"
    with open(stored, "wb") as f:
        encode(io.BytesIO(DATA), f, Codec(recipients=(recipient,)))
    age = subprocess.run(
        ["age", "-d", "-i", str(path), str(stored)], capture_output=True, check=True
    )
    plain = subprocess.run(["zstd", "-d", "-c"], input=age.stdout, capture_output=True, check=True)
    assert plain.stdout == DATA
