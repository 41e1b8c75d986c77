import dagster as dg

from pg_backup_assets.core.wal.status import ArchiveStatus
from pg_backup_assets.defs.check_names import WAL_ARCHIVE_CONTIGUOUS, WAL_ARCHIVE_FRESH


def wal_archive_key(cluster: str) -> dg.AssetKey:
    return dg.AssetKey([cluster, "wal_archive"])


def build_wal_archive(cluster: str) -> dg.AssetSpec:
    return dg.AssetSpec(
        key=wal_archive_key(cluster),
        group_name=cluster,
        description="WAL pushed by PostgreSQL's archive_command (pgbackup wal-push %p); "
        "observed by the WAL archive sensor.",
        kinds={"postgres"},
    )


def observation_metadata(status: ArchiveStatus) -> dict[str, object]:
    """Numeric where possible, so the UI plots the archive's history."""
    gaps, server, newest = status.gaps, status.server, status.listing.newest_segment
    md: dict[str, object] = {
        "segments": len(status.listing.segments),
        "stored_bytes": status.listing.total_bytes,
        "first_segment": gaps.first if gaps and gaps.first else "",
        "last_segment": newest.name if newest else "",
        "timeline": gaps.timeline if gaps else 0,
        "missing_segments": gaps.missing_count if gaps else 0,
        "archive_lag_s": round(status.newest_age_s, 1) if status.newest_age_s is not None else -1,
        "pending_segments": status.pending_segments if status.pending_segments is not None else -1,
    }
    if server:
        md.update(
            {
                "segment_size": server.segment_size,
                "server_current_wal": server.current_wal or "",
                "archiver_failed_count": server.failed_count,
                "archiver_last_failed_wal": server.last_failed_wal or "",
                "archiver_archived_count": server.archived_count,
            }
        )
    else:
        md["server_error"] = status.server_error or ""
    return md


def check_verdicts(status: ArchiveStatus) -> list[tuple[str, bool, str, dict[str, object]]]:
    """(check name, passed, description, metadata) for both WAL archive checks."""
    gaps = status.gaps
    missing = [f"{a}..{b}" if a != b else a for a, b in (gaps.missing if gaps else [])]
    return [
        (
            WAL_ARCHIVE_CONTIGUOUS,
            status.contiguous.passed,
            status.contiguous.message,
            {
                "missing_segments": gaps.missing_count if gaps else 0,
                "missing_ranges": dg.MetadataValue.json(missing[:100]),
            },
        ),
        (
            WAL_ARCHIVE_FRESH,
            status.fresh.passed,
            status.fresh.message,
            {
                "archive_lag_s": round(status.newest_age_s, 1)
                if status.newest_age_s is not None
                else -1,
                "pending_segments": status.pending_segments
                if status.pending_segments is not None
                else -1,
            },
        ),
    ]
