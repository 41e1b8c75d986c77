"""Size anomaly detection: a backup that shrinks or grows far beyond its history."""

from pg_backup_assets.core.anomalies import daily_history, size_anomaly


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
