import dagster as dg

from pg_backup_assets.core.anomalies import size_anomaly
from pg_backup_assets.defs.check_names import SIZE_ANOMALY


def size_anomaly_result(size_bytes: int, history: list[int]) -> dg.AssetCheckResult:
    """The WARN-level ``size_anomaly`` check result for a backup of ``size_bytes``."""
    verdict = size_anomaly(size_bytes, history)
    return dg.AssetCheckResult(
        check_name=SIZE_ANOMALY,
        passed=verdict.ok,
        severity=dg.AssetCheckSeverity.WARN,
        description=verdict.message,
        # No history yet: no median, rather than a zero that would spoil its plot.
        metadata={"size_bytes": size_bytes}
        | ({"median_bytes": verdict.median_bytes} if verdict.median_bytes is not None else {}),
    )
