"""Is the WAL archive complete and current? The engine behind the WAL sensor and checks."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

from pg_backup_assets.core.catalog import BaseBackup, list_base_backups
from pg_backup_assets.core.config import ClusterConfig
from pg_backup_assets.core.errors import PgBackupError
from pg_backup_assets.core.postgres.client import connect
from pg_backup_assets.core.retention.plan import daily_window
from pg_backup_assets.core.storage.repository import Repository
from pg_backup_assets.core.wal.archive import ArchiveListing, list_archive
from pg_backup_assets.core.wal.names import GapReport, Segment, find_gaps, parse_segment


@dataclass(frozen=True)
class ArchiverFacts:
    """What the server says about WAL archiving (pg_stat_archiver and settings)."""

    segment_size: int
    archive_mode: str
    in_recovery: bool
    current_wal: str | None  # the segment being written (None on a standby)
    timeline: int  # the timeline the server is on
    archived_count: int
    last_archived_wal: str | None
    last_archived_time: float | None
    failed_count: int
    last_failed_wal: str | None
    last_failed_time: float | None
    now: float


def archiver_facts(dsn: str) -> ArchiverFacts:
    with connect(dsn, autocommit=True) as conn:
        size = int(
            conn.execute(
                "SELECT setting::bigint * CASE unit WHEN 'B' THEN 1 WHEN 'kB' THEN 1024 "
                "WHEN 'MB' THEN 1048576 ELSE 1 END FROM pg_settings WHERE name='wal_segment_size'"
            ).fetchone()[0]
        )
        mode = conn.execute("SHOW archive_mode").fetchone()[0]
        in_recovery = conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]
        current = (
            None
            if in_recovery
            else conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()[0]
        )
        timeline = (
            int(current[:8], 16)
            if current
            else conn.execute("SELECT timeline_id FROM pg_control_checkpoint()").fetchone()[0]
        )
        row = conn.execute(
            "SELECT archived_count, last_archived_wal, extract(epoch FROM last_archived_time), "
            "failed_count, last_failed_wal, extract(epoch FROM last_failed_time), "
            "extract(epoch FROM now()) FROM pg_stat_archiver"
        ).fetchone()
    return ArchiverFacts(
        segment_size=size,
        archive_mode=mode,
        in_recovery=in_recovery,
        current_wal=current,
        timeline=timeline,
        archived_count=row[0],
        last_archived_wal=row[1],
        last_archived_time=float(row[2]) if row[2] is not None else None,
        failed_count=row[3],
        last_failed_wal=row[4],
        last_failed_time=float(row[5]) if row[5] is not None else None,
        now=float(row[6]),
    )


@dataclass(frozen=True)
class Verdict:
    passed: bool
    message: str


def offsite_wal_freshness(
    pending: int, lag_s: float, rpo_seconds: int, shipped: int | None = None
) -> Verdict:
    """Offsite WAL is fresh while what still waits to go offsite is younger than the RPO."""
    done = f"shipped {shipped} objects; " if shipped is not None else ""
    waiting = f"the oldest for {lag_s:.0f}s" if pending else "nothing older"
    return Verdict(
        lag_s <= rpo_seconds,
        f"{done}{pending} WAL objects waiting to go offsite, {waiting} (rpo_seconds {rpo_seconds})",
    )


@dataclass(frozen=True)
class ArchiveStatus:
    cluster: str
    listing: ArchiveListing
    gaps: GapReport | None  # None when the segment size is unknown
    server: ArchiverFacts | None
    server_error: str | None
    segment_size: int | None
    newest_age_s: float | None  # seconds since the newest segment landed
    pending_segments: int | None  # completed on the server, not yet archived
    contiguous: Verdict
    fresh: Verdict


def archive_gaps(
    listing: ArchiveListing,
    backups: list[BaseBackup],
    segment_size: int,
    daily: int,
    timeline: int | None = None,
) -> GapReport:
    """What the archive misses of what retention promises: every segment from the start of
    the oldest base backup of the daily window (point-in-time recovery across it; without
    a backup, from the oldest archived segment) to the newest, along ``timeline``'s history
    (default: the newest); and, for each older base backup, its own start to stop (what it
    needs to be consistent). Retention expires the WAL between those: not a gap."""
    window = set(daily_window((b.date for b in backups), daily))
    pitr = [b for b in backups if b.date in window] or backups[-1:]
    start = min((b.start_lsn for b in pitr), default=None)
    names = [o.name for o in listing.segments]
    gaps = find_gaps(names, listing.histories, segment_size, start, timeline)
    have = {parse_segment(n, segment_size) for n in names}
    older: list[tuple[str, str]] = []
    lost_count = 0
    for b in backups:
        if start is None or b.start_lsn >= start:
            continue
        first, last = b.start_lsn // segment_size, b.stop_lsn // segment_size
        lost = [s for s in range(first, last + 1) if Segment(b.timeline, s) not in have]
        if lost:
            lost_count += len(lost)
            older.append(
                (
                    Segment(b.timeline, lost[0]).name(segment_size),
                    Segment(b.timeline, lost[-1]).name(segment_size),
                )
            )
    if not older:
        return gaps
    return replace(
        gaps, missing=older + gaps.missing, missing_count=gaps.missing_count + lost_count
    )


def inspect_archive(
    repo: Repository, cluster: ClusterConfig, now: float | None = None, daily: int = 14
) -> ArchiveStatus:
    """Look at the archive and the server; judge contiguity and freshness.

    Contiguity as retention promises it (``archive_gaps``; ``daily``: retention.daily).
    The segment size comes from the server, or, when it cannot be reached, from what
    wal-push recorded.
    """
    listing = list_archive(repo, cluster.name)
    backups = list_base_backups(repo, cluster.name)
    server, server_error = None, None
    try:
        server = archiver_facts(cluster.dsn)
    except PgBackupError as exc:
        server_error = str(exc)
    segment_size = server.segment_size if server else listing.segment_size
    now = server.now if server else (now or time.time())

    gaps = None
    newest = listing.newest_segment
    if segment_size:
        # Follow the timeline the server is on: a copy of it that was promoted and archived
        # a new timeline here (restore --archive-mode preserve) does not take over.
        gaps = archive_gaps(
            listing, backups, segment_size, daily, timeline=server.timeline if server else None
        )
        contiguous = Verdict(gaps.contiguous, gaps.describe())
        newest = next((o for o in listing.segments if o.name == gaps.last), None)
    else:
        contiguous = Verdict(
            False,
            "cannot check: the server is unreachable and its segment size unknown "
            f"({server_error})",
        )

    newest_age = now - newest.mtime if newest else None
    pending = None
    if server and server.current_wal and segment_size:
        current = parse_segment(server.current_wal, segment_size).segno
        archived = parse_segment(newest.name, segment_size).segno if newest else None
        # The segment being written cannot be archived yet; everything before it can.
        pending = current - (archived + 1) if archived is not None else current
        pending = max(pending, 0)
    fresh = _freshness(cluster, server, server_error, newest_age, pending)
    return ArchiveStatus(
        cluster=cluster.name,
        listing=listing,
        gaps=gaps,
        server=server,
        server_error=server_error,
        segment_size=segment_size,
        newest_age_s=newest_age,
        pending_segments=pending,
        contiguous=contiguous,
        fresh=fresh,
    )


def _freshness(
    cluster: ClusterConfig,
    server: ArchiverFacts | None,
    server_error: str | None,
    newest_age: float | None,
    pending: int | None,
) -> Verdict:
    rpo = cluster.rpo_seconds
    if server is None:
        return Verdict(False, f"cannot tell whether archiving keeps up: {server_error}")
    if server.archive_mode == "off":
        return Verdict(False, "archive_mode is off on the server: nothing is being archived")
    failing = ""
    if server.failed_count and (server.last_failed_time or 0) > (server.last_archived_time or 0):
        failing = (
            f"; archive_command is failing (pg_stat_archiver: {server.failed_count} failures, "
            f"last on {server.last_failed_wal})"
        )
    if server.in_recovery:
        return Verdict(True, "the server is a standby; the primary's archive is what counts")
    if not pending:
        age = f"{newest_age:.0f}s ago" if newest_age is not None else "never (none completed yet)"
        return Verdict(True, f"every completed segment is archived; newest landed {age}{failing}")
    if newest_age is None or newest_age > rpo:
        age = (
            "nothing archived yet" if newest_age is None else f"newest landed {newest_age:.0f}s ago"
        )
        return Verdict(
            False,
            f"archiving is stale: {pending} completed segments not archived, {age}, "
            f"rpo_seconds is {rpo}{failing}",
        )
    return Verdict(
        True,
        f"{pending} segments waiting, newest landed {newest_age:.0f}s ago (rpo {rpo}s){failing}",
    )
