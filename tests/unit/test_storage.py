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
