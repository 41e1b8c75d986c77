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
