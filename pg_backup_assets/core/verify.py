"""``pgbackup verify``: re-read everything a repository (or the offsite store) holds.

Every catalogued object is read back, its sha256 compared with the catalog, and decoded
(age, zstd) to the end; every archived WAL file decodes to the sha256 its name records;
the WAL archive is checked for gaps along each timeline's history. Nothing is written.
(The deeper proof of one base backup, pg_verifybackup on an extracted copy, is
``base/verify.py``, run by the base_backup_verified check.)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field

from pg_backup_assets.core.catalog import list_base_backups, list_dump_sets
from pg_backup_assets.core.errors import ConfigError, PgBackupError
from pg_backup_assets.core.progress import Log, ProgressLog
from pg_backup_assets.core.storage.codec import Discard
from pg_backup_assets.core.storage.repository import ObjectRecord, Repository
from pg_backup_assets.core.wal.archive import ArchiveListing, list_archive, read_checked
from pg_backup_assets.core.wal.status import archive_gaps


@dataclass
class Row:
    source: str
    cluster: str
    what: str  # "dump set", "base backup", "WAL timeline N"
    item: str
    objects: int = 0
    bytes: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # not tied to one row

    @property
    def all_problems(self) -> list[str]:
        return self.problems + [
            f"{r.source} {r.cluster} {r.what} {r.item}: {p}" for r in self.rows for p in r.problems
        ]

    def to_dict(self) -> dict:
        return {
            "ok": not self.all_problems,
            "rows": [{**asdict(r), "ok": r.ok} for r in self.rows],
            "problems": self.all_problems,
        }


def verify_repository(
    repo: Repository,
    source: str,
    clusters: Sequence[str],
    log: Log,
    report: Report,
    daily: int = 14,
) -> None:
    """Re-read every object of ``clusters`` in ``repo`` into ``report``. WAL continuity is
    judged as retention promises it (``daily``: retention.daily; see archive_gaps)."""
    can_decode = _can_decode(repo, source, report)
    for cluster in clusters:
        try:
            dump_sets = list_dump_sets(repo, cluster)
            backups = list_base_backups(repo, cluster)
            listing = list_archive(repo, cluster)
        except PgBackupError as exc:
            report.problems.append(f"{source} {cluster}: cannot read the catalog: {exc}")
            continue
        reads: list[tuple[ObjectRecord, Row]] = []
        for s in dump_sets:
            row = Row(source, cluster, "dump set", f"{s.date} {s.set_id}")
            reads += [(o.record, row) for o in s.objects]
            report.rows.append(row)
        for b in backups:
            row = Row(source, cluster, "base backup", b.label)
            reads += [(record, row) for record in b.objects.values()]
            report.rows.append(row)
        total = sum(record.stored_bytes for record, _ in reads)
        progress = ProgressLog(log, f"verifying {source} {cluster} backups", total)
        done = 0
        for record, row in reads:
            _read_record(repo, record, row, can_decode)
            done += record.stored_bytes
            progress(done)
        wal_progress = ProgressLog(log, f"verifying {source} {cluster} WAL", listing.total_bytes)
        report.rows += _wal_rows(repo, source, cluster, listing, can_decode, wal_progress)
        if listing.segments and listing.segment_size:
            gaps = archive_gaps(listing, backups, listing.segment_size, daily)
            if not gaps.contiguous:
                rows = [r for r in report.rows if r.cluster == cluster and r.source == source]
                wal_rows = [r for r in rows if r.what.startswith("WAL")]
                target = wal_rows[-1] if wal_rows else rows[-1]
                target.problems.append(f"gap along timeline {gaps.timeline}: {gaps.describe()}")


def _can_decode(repo: Repository, source: str, report: Report) -> bool:
    """Encrypted objects decode only with the identity; without it, say so once."""
    if not repo.codec.encrypted and repo.identity_file is None:
        return True
    try:
        repo.identities()
    except ConfigError as exc:
        report.problems.append(
            f"{source}: encrypted objects cannot be decoded, only their sha256 checked: {exc}"
        )
        return False
    return True


def _read_record(repo: Repository, record: ObjectRecord, row: Row, can_decode: bool) -> None:
    row.objects += 1
    row.bytes += record.stored_bytes
    try:
        if record.encrypted and not can_decode:
            repo.verify(record)
        else:
            repo.read_into(record, Discard())
    except PgBackupError as exc:
        row.problems.append(str(exc))


def _wal_rows(
    repo: Repository,
    source: str,
    cluster: str,
    listing: ArchiveListing,
    can_decode: bool,
    progress: ProgressLog,
) -> Iterable[Row]:
    by_timeline: dict[int, Row] = {}
    done = 0
    for obj in sorted(listing.objects, key=lambda o: o.name):
        tli = int(obj.name[:8], 16)
        row = by_timeline.setdefault(tli, Row(source, cluster, f"WAL timeline {tli}", ""))
        row.objects += 1
        row.bytes += obj.stored_bytes
        done += obj.stored_bytes
        progress(done)
        if obj.key.endswith(".age") and not can_decode:
            continue  # reported once for the whole source
        try:
            read_checked(repo, obj, Discard())
        except PgBackupError as exc:
            row.problems.append(str(exc))
    for tli, row in by_timeline.items():
        names = [o.name for o in listing.segments if int(o.name[:8], 16) == tli]
        row.item = f"{names[0]}..{names[-1]}" if names else "(history only)"
    return [by_timeline[t] for t in sorted(by_timeline)]
