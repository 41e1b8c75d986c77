import pytest

from pg_backup_assets.core.anomalies import daily_history, size_anomaly
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


def test_size_anomaly_thresholds():
    history = [100, 110, 90, 105, 95, 100, 100, 5000]  # only the last 7 count
    assert size_anomaly(100, history[:7]).ok
    assert (
        not size_anomaly(40, history[:7]).ok and "shrank" in size_anomaly(40, history[:7]).message
    )
    assert (
        not size_anomaly(250, history[:7]).ok and "grew" in size_anomaly(250, history[:7]).message
    )
    assert size_anomaly(100, []).ok  # first backup: nothing to compare
    assert size_anomaly(1000, history).median_bytes == 100


def test_daily_history_keeps_the_newest_per_day_before_the_partition():
    items = [("2026-11-20", 10), ("2026-11-20", 12), ("2026-11-21", 30), ("2026-11-22", 99)]
    assert daily_history(items, before="2026-11-22") == [12, 30]


def test_s3_part_size_doubles_so_any_object_fits_10000_parts():
    from pg_backup_assets.core.storage.s3 import S3Storage, _Upload

    upload = _Upload(S3Storage(client=None, bucket="b", part_size=16 << 20), "k")
    sizes = []
    for parts_sent in (0, 999, 1000, 2000, 9999):
        upload.futures = [None] * parts_sent
        sizes.append(upload._part_size() >> 20)
    assert sizes == [16, 16, 32, 64, 8192]
    # 10,000 parts (ten doublings of 1,000) then hold about 16 TiB.
    total_mib = sum(1000 * (16 << k) for k in range(10))
    assert total_mib > 15 * 1024 * 1024
