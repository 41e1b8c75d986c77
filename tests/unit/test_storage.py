import os
import subprocess
import sys
import time

import pytest

from pg_backup_assets.core.errors import NotFoundError, PgBackupError
from pg_backup_assets.core.storage.local import LocalStorage


def test_put_list_stat_delete(tmp_path):
    s = LocalStorage(tmp_path / "repo")
    with s.writer("c/dumps/2026-11-26/a.zst") as f:
        f.write(b"hello")
    with s.writer("c/dumps/2026-11-27/b.zst") as f:
        f.write(b"world!")
    assert [o.key for o in s.list("c/dumps/")] == [
        "c/dumps/2026-11-26/a.zst",
        "c/dumps/2026-11-27/b.zst",
    ]
    assert [o.key for o in s.list("c/dumps/2026-11-27")] == ["c/dumps/2026-11-27/b.zst"]
    assert s.stat("c/dumps/2026-11-27/b.zst").size == 6
    with s.open("c/dumps/2026-11-26/a.zst") as f:
        assert f.read() == b"hello"
    s.delete("c/dumps/2026-11-26/a.zst")
    s.delete("c/dumps/2026-11-26/a.zst")  # absent: not an error
    assert not s.exists("c/dumps/2026-11-26/a.zst")
    with pytest.raises(NotFoundError, match="a.zst"):
        s.open("c/dumps/2026-11-26/a.zst")


def test_list_reads_only_what_the_prefix_names_and_hides_the_repositorys_own_files(tmp_path):
    s = LocalStorage(tmp_path)
    for key in [
        "c/wal/0000000100000001/000000010000000100000002-aa.zst",
        "c/wal/0000000100000001/000000010000000100000003-bb.zst",
        "c/wal/0000000100000001/0000000100000001000000030/deeper",  # a folder matching it
        "c/wal/0000000100000002/000000010000000200000001-cc.zst",
        "c/wal/archive.json",
        ".staging/x/part",  # the repository's own scratch: never an object
        ".hidden-file",
    ]:
        (tmp_path / key).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / key).write_bytes(b"x" * len(key))
    (tmp_path / "c/wal/0000000100000001/000000010000000100000003-bb.zst.tmp-1a2b").touch()
    (tmp_path / "c/linked").symlink_to(tmp_path / "c/wal")  # neither listed nor followed
    (tmp_path / "c/dangling").symlink_to(tmp_path / "nowhere")

    def keys(prefix):
        return [o.key for o in s.list(prefix)]

    one = "c/wal/0000000100000001/"
    assert keys(one + "000000010000000100000003") == [
        one + "000000010000000100000003-bb.zst",
        one + "0000000100000001000000030/deeper",
    ]
    assert keys(one + "000000010000000100000002-") == [one + "000000010000000100000002-aa.zst"]
    assert keys(one + "00000001000000010000000F") == []
    assert keys("c/wal/00000001000000") == keys(one) + keys("c/wal/0000000100000002/")
    assert len(keys("c/")) == 5 and keys("c/")[-1] == "c/wal/archive.json"
    assert keys("") == [".hidden-file", *keys("c/")]
    assert keys(".staging/") == [".staging/x/part"]  # asked for by name: listed
    assert keys("nothing/here/") == []
    info = s.list("c/wal/archive.json")[0]
    assert info.size == len("c/wal/archive.json")


@pytest.mark.skipif(os.geteuid() != 0, reason="runs the listing as the postgres user")
def test_an_unreadable_folder_is_an_error_not_an_empty_listing():
    """The archiver's user meets a folder it cannot read: "no such segment" would be a lie
    (a gap check would report missing WAL, a push would archive a duplicate)."""
    import shutil
    import tempfile

    root = tempfile.mkdtemp(prefix="pgba-list-")
    try:
        os.chmod(root, 0o755)
        os.makedirs(f"{root}/c/wal/0000000100000001", mode=0o755)
        os.chmod(f"{root}/c", 0o755)
        os.chmod(f"{root}/c/wal", 0o755)
        os.chmod(f"{root}/c/wal/0000000100000001", 0o700)  # root's alone
        code = (
            "import sys\n"
            "from pg_backup_assets.core.errors import PgBackupError\n"
            "from pg_backup_assets.core.storage.local import LocalStorage\n"
            "try:\n"
            "    LocalStorage(sys.argv[1]).list(sys.argv[2])\n"
            "except PgBackupError as exc:\n"
            "    print(exc)\n"
            "    sys.exit(3)\n"
        )
        for prefix in ["c/", "c/wal/0000000100000001/000000010000000100000002-"]:
            proc = subprocess.run(
                ["runuser", "-u", "postgres", "--", sys.executable, "-c", code, root, prefix],
                capture_output=True,
                text=True,
                cwd="/",
            )
            assert proc.returncode == 3, proc.stderr
            assert "cannot read" in proc.stdout and "Permission denied" in proc.stdout
    finally:
        shutil.rmtree(root)


def test_failed_write_leaves_nothing_visible(tmp_path):
    s = LocalStorage(tmp_path / "repo")
    with s.writer("k/obj") as f:
        f.write(b"old complete content")
    with pytest.raises(RuntimeError), s.writer("k/obj") as f:
        f.write(b"partial new conte")
        raise RuntimeError("source died")
    with s.open("k/obj") as f:
        assert f.read() == b"old complete content"
    assert [p.name for p in (tmp_path / "repo" / "k").iterdir()] == ["obj"]  # no temp left


@pytest.mark.parametrize("key", ["", "/abs", "a/../b", "a//b", "./a"])
def test_bad_keys_are_refused(tmp_path, key):
    with pytest.raises(PgBackupError, match="invalid repository key"):
        LocalStorage(tmp_path).path(key)


def _write_slowly(path, data: bytes, fail: bool = False) -> None:
    """What pg_basebackup does to its tar: appends to it a piece at a time."""
    import time

    with open(path, "wb") as f:
        for i in range(0, len(data), 1 << 18):
            f.write(data[i : i + (1 << 18)])
            f.flush()
            time.sleep(0.005)
            if fail and i >= len(data) // 2:
                raise PgBackupError("pg_basebackup failed halfway")


def test_an_object_stored_while_it_is_written_is_whole_or_absent(tmp_path):
    import io
    import os

    from pg_backup_assets.core.base.backup import _store_while_written
    from pg_backup_assets.core.storage.codec import Codec, generate_identity
    from pg_backup_assets.core.storage.repository import Repository

    key, recipient = generate_identity()
    (tmp_path / "age.key").write_text(key)
    repo = Repository(
        LocalStorage(tmp_path / "repo"), Codec(recipients=(recipient,)), tmp_path / "age.key"
    )
    import zstandard

    raw = os.urandom(3 << 20)
    data = zstandard.ZstdCompressor().compress(raw)  # what the server sends: a zstd stream
    with repo.new_set("c/base/ok") as writer:
        record = _store_while_written(
            writer, tmp_path / "ok.tar", lambda: _write_slowly(tmp_path / "ok.tar", data)
        )
    out = io.BytesIO()
    repo.read_into(record, out)
    assert out.getvalue() == raw and record.raw_bytes == len(data)

    with pytest.raises(PgBackupError, match="halfway"), repo.new_set("c/base/bad") as writer:
        _store_while_written(
            writer,
            tmp_path / "bad.tar",
            lambda: _write_slowly(tmp_path / "bad.tar", data, fail=True),
        )
    left = tmp_path / "repo" / "c" / "base" / "bad"
    assert not left.exists() or list(left.iterdir()) == []


def _killed_writer(root, key):  # noqa: ANN001, ANN202
    """A process that dies (os._exit) halfway through writing ``key``."""
    code = (
        "import os, sys\n"
        "from pg_backup_assets.core.storage.local import LocalStorage\n"
        "w = LocalStorage(sys.argv[1]).writer(sys.argv[2])\n"
        "f = w.__enter__()\n"
        "f.write(b'half a segment'); f.flush(); os._exit(9)\n"
    )
    assert subprocess.run([sys.executable, "-c", code, str(root), key]).returncode == 9


def test_what_killed_writers_left_is_swept_once_old(tmp_path):
    s = LocalStorage(tmp_path / "repo")
    with s.writer("main/wal/a") as f:
        f.write(b"whole")
    _killed_writer(tmp_path / "repo", "main/wal/b")
    _killed_writer(tmp_path / "repo", "main/wal/c")
    _killed_writer(tmp_path / "repo", "other/wal/d")
    temps = sorted((tmp_path / "repo" / "main" / "wal").glob("*.tmp-*"))
    assert len(temps) == 2 and [o.key for o in s.list("main/")] == ["main/wal/a"]
    day_ago = time.time() - 86400
    os.utime(temps[0], (day_ago - 1, day_ago - 1))  # b: a writer dead for a day
    assert s.sweep_temporary("main/", day_ago) == [f"main/wal/{temps[0].name}"]
    assert sorted((tmp_path / "repo" / "main" / "wal").iterdir()) == [
        tmp_path / "repo" / "main" / "wal" / "a",
        temps[1],  # c: young, perhaps still being written
    ]
    assert list((tmp_path / "repo" / "other" / "wal").glob("*.tmp-*"))  # another prefix
