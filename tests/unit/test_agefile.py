"""Reading age files in process (``core/storage/agefile.py``): files written by pyrage and
by the age command, at the sizes around its 64 KiB chunks; and every way a file can be
wrong is refused, never returned as plaintext."""

from __future__ import annotations

import base64
import io
import os
import shutil
import subprocess

import pyrage
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from pg_backup_assets.core.storage.agefile import AgeError, AgeReader, secret_keys
from pg_backup_assets.core.storage.codec import load_identities

# Around a chunk (64 KiB), and files of whole MiB (a restore reads 1 MiB at a time).
SIZES = [0, 1, 65535, 65536, 65537, 131072, 200_000, 1 << 20, (1 << 20) + 1, 2_500_000]


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    identity = pyrage.x25519.Identity.generate()
    path = tmp_path_factory.mktemp("key") / "age.key"
    path.write_text(f"# created: by the test\n# public key: {identity.to_public()}\n{identity}\n")
    return identity, secret_keys(load_identities(path))  # as a restore reads it


def encrypt(tool: str, data: bytes, recipients: list) -> bytes:
    if tool == "pyrage":
        return pyrage.encrypt(data, recipients)
    if shutil.which("age") is None:
        pytest.skip("the age command is not installed")
    args = [a for r in recipients for a in ("-r", str(r))]
    return subprocess.run(["age", "-e", *args], input=data, capture_output=True, check=True).stdout


def decrypt(ct: bytes, keys: list[bytes], n: int = 70_000) -> bytes:
    reader, out = AgeReader(io.BytesIO(ct), keys), bytearray()
    while chunk := reader.read(n):
        out += chunk
    return bytes(out)


@pytest.mark.parametrize("tool", ["pyrage", "age"])
@pytest.mark.parametrize("size", SIZES)
def test_what_either_tool_wrote_reads_back(keys, tool, size):
    identity, secrets = keys
    other = pyrage.x25519.Identity.generate().to_public()
    data = os.urandom(size)
    ct = encrypt(tool, data, [other, identity.to_public()])  # ours is the second stanza
    assert decrypt(ct, secrets) == data
    assert decrypt(ct, secrets, n=1000) == data  # small reads: the same bytes


@pytest.mark.parametrize("size", [0, 65536, 200_000, 1 << 20, (1 << 20) + 70_000])
def test_a_file_cut_short_changed_or_extended_is_refused(keys, size):
    identity, secrets = keys
    ct = pyrage.encrypt(os.urandom(size), [identity.to_public()])
    payload = ct.index(b"\n", ct.index(b"\n--- ") + 1) + 1 + 16  # after header and nonce
    boundaries = range(payload + 65536 + 16, len(ct), 65536 + 16)  # between whole chunks
    for cut in [*range(len(ct) - 40, len(ct)), 10, 100, *boundaries]:
        with pytest.raises(AgeError):
            decrypt(ct[:cut], secrets)
    for pos in [*range(0, len(ct), max(1, len(ct) // 64)), len(ct) - 1]:
        changed = bytearray(ct)
        changed[pos] ^= 0x01
        with pytest.raises(AgeError):
            decrypt(bytes(changed), secrets)
    with pytest.raises(AgeError):
        decrypt(ct + b"\0", secrets)


def test_a_mac_in_non_canonical_base64_is_refused(keys):
    """The MAC's last character carries two unused bits: a lenient decoder reads "...A" and
    "...B" as the same MAC, so a changed file would pass. age refuses such a header."""
    identity, secrets = keys
    ct = pyrage.encrypt(b"secret", [identity.to_public()])
    at = ct.index(b"\n--- ") + 5
    end = ct.index(b"\n", at)
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    last = alphabet.index(ct[end - 1])
    assert last % 4 == 0  # canonical: its two low bits are zero
    twin = ct[: end - 1] + alphabet[last + 1 : last + 2] + ct[end:]
    assert base64.b64decode(twin[at:end] + b"=") == base64.b64decode(ct[at:end] + b"=")
    with pytest.raises(AgeError, match="non-canonical base64"):
        decrypt(twin, secrets)
    assert decrypt(ct, secrets) == b"secret"


def test_a_header_changed_but_well_formed_fails_its_mac(keys):
    """A second, well-formed stanza added to the header: the file key still unwraps, but
    the header's MAC no longer matches."""
    identity, secrets = keys
    ct = pyrage.encrypt(b"secret", [identity.to_public()])
    intro, rest = ct.split(b"\n", 1)
    share = X25519PrivateKey.generate().public_key().public_bytes_raw()
    b64 = [base64.b64encode(x).rstrip(b"=") for x in (share, os.urandom(32))]
    forged = intro + b"\n-> X25519 " + b64[0] + b"\n" + b64[1] + b"\n" + rest
    with pytest.raises(AgeError, match="MAC"):
        decrypt(forged, secrets)


def test_the_wrong_key_is_named(keys):
    _, secrets = keys
    ct = pyrage.encrypt(b"x", [pyrage.x25519.Identity.generate().to_public()])
    with pytest.raises(AgeError, match="no identity matched any of the recipients"):
        decrypt(ct, secrets)


def test_a_damaged_key_is_refused():
    key = str(pyrage.x25519.Identity.generate())
    damaged = key[:-3] + ("q" if key[-3] != "q" else "p") + key[-2:]
    with pytest.raises(AgeError, match="checksum"):
        secret_keys([damaged])
