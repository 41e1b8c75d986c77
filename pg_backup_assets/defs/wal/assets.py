import dagster as dg

from pg_backup_assets.core.wal.status import ArchiveStatus
from pg_backup_assets.defs.check_names import WAL_ARCHIVE_CONTIGUOUS, WAL_ARCHIVE_FRESH
from pg_backup_assets.defs.context import REPOSITORY_KIND, ClusterContext


def build_wal_archive(c: ClusterContext) -> dg.AssetSpec:
    return dg.AssetSpec(
        key=c.key("wal_archive"),
        **c.labels(),
        description="WAL pushed by PostgreSQL's archive_command (pgbackup wal-push %p); "
        "observed by the WAL archive sensor.",
        kinds={"postgres", REPOSITORY_KIND},
    )


def observation_metadata(status: ArchiveStatus) -> dict[str, object]:
    """Numeric where possible, so the UI plots the archive's history; what is not known
    (the server is down, nothing archived yet) is left out rather than faked."""
    gaps, server, newest = status.gaps, status.server, status.listing.newest_segment
    md: dict[str, object] = {
        "segments": len(status.listing.segments),
        "stored_bytes": status.listing.total_bytes,
        "missing_segments": gaps.missing_count if gaps else 0,
    }
    if gaps and gaps.first:
        md.update(first_segment=gaps.first, timeline=gaps.timeline)
    if newest:
        md["last_segment"] = newest.name
    md.update(_lag_metadata(status))
    if server:
        md.update(
            segment_size=server.segment_size,
            archiver_failed_count=server.failed_count,
            archiver_archived_count=server.archived_count,
        )
        if server.current_wal:
            md["server_current_wal"] = server.current_wal
        if server.last_failed_wal:
            md["archiver_last_failed_wal"] = server.last_failed_wal
    else:
        md["server_error"] = status.server_error or "unknown"
    return md


def _lag_metadata(status: ArchiveStatus) -> dict[str, object]:
    md: dict[str, object] = {}
    if status.newest_age_s is not None:
        md["archive_lag_s"] = round(status.newest_age_s, 1)
    if status.pending_segments is not None:
        md["pending_segments"] = status.pending_segments
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
        (WAL_ARCHIVE_FRESH, status.fresh.passed, status.fresh.message, _lag_metadata(status)),
    ]
