"""Applying the retention plan: gather the facts, plan (core/retention/plan.py), delete
what it expires from the repository and the offsite store, and sweep what interrupted runs
left behind.

Deleting a backup removes its catalog entry first, then its objects: a backup is either
listed and whole, or not listed; what a crash in between leaves is swept by a later run.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field

from pg_backup_assets.core.catalog import (
    CATALOG,
    BaseBackup,
    DumpSet,
    base_prefix,
    dump_prefix,
    is_verified,
    list_base_backups,
    list_dump_sets,
    set_prefix,
    tiers_of,
)
from pg_backup_assets.core.config import Config
from pg_backup_assets.core.errors import PgBackupError
from pg_backup_assets.core.locks import LockTimeoutError
from pg_backup_assets.core.offsite.store import offsite_repository
from pg_backup_assets.core.progress import Log
from pg_backup_assets.core.rehearsal.rehearse import REPORTS
from pg_backup_assets.core.retention.plan import BackupFacts, Plan, WalFacts, plan
from pg_backup_assets.core.storage.base import ObjectInfo
from pg_backup_assets.core.storage.repository import Repository, sweep_staging
from pg_backup_assets.core.wal.archive import list_archive
from pg_backup_assets.core.wal.names import parse_segment

LEFTOVER_AGE_S = 24 * 3600  # an object without a catalog entry this old is nobody's work


@dataclass
class ExpiryReport:
    plan: Plan
    dry_run: bool
    freed: dict[str, int] = field(default_factory=lambda: {"local": 0, "offsite": 0})
    deleted: dict[str, int] = field(default_factory=lambda: {"local": 0, "offsite": 0})
    deferred: list[str] = field(default_factory=list)  # offsite objects still locked
    wal_kept: str | None = None  # why this run expired no WAL after all
    swept: list[str] = field(default_factory=list)


def expire(
    config: Config, cluster: str, dry_run: bool = False, log: Log = print, now: float | None = None
) -> ExpiryReport:
    """Plan and (unless ``dry_run``) apply the retention policy to ``cluster``."""
    now = time.time() if now is None else now
    repo = Repository.from_config(config)
    offsite = offsite_repository(config) if config.offsite else None
    lock_days = config.offsite.s3.object_lock_days if config.offsite and config.offsite.s3 else 0
    with repo.lock(cluster, "expire", config.timeouts.run_seconds, log):
        held = _offsite_listing(offsite, cluster)
        locked = {
            k: info.mtime + lock_days * 86400
            for k, info in held.items()
            if lock_days and info.mtime + lock_days * 86400 > now
        }
        backups, wal = gather(repo, cluster, locked)
        local_wal = {w.key: w.size_bytes for w in wal}
        if offsite is not None:
            # What only the offsite store still holds (a repository lost, an expiry that
            # died halfway) is planned too, or it would stay there for ever.
            here = {b.key for b in backups}
            there, there_wal = gather(_as_listed(offsite, held), cluster, locked)
            backups += [b for b in there if b.key not in here]
            wal += [w for w in there_wal if w.key not in local_wal]
        the_plan = plan(backups, wal, config.retention, now, _rehearsal_failed(repo, cluster))
        report = ExpiryReport(the_plan, dry_run)
        if not dry_run:
            _apply(report, repo, offsite, cluster, local_wal, held, locked, log)
            report.swept = _sweep(repo, offsite, held, cluster, now, log)
    kept = sum(1 for d in the_plan.decisions if d.keep)
    log(
        f"retention of {cluster}: {kept} backups kept, {len(the_plan.expired)} expired, "
        f"{sum(r.objects for r in the_plan.expired_wal)} WAL objects expired"
        + (" (dry run: nothing deleted)" if dry_run else "")
        + (f"; {the_plan.halted}" if the_plan.halted else "")
    )
    return report


def gather(
    repo: Repository, cluster: str, locked: dict[str, float]
) -> tuple[list[BackupFacts], list[WalFacts]]:
    """The planner's view of what ``repo`` holds: its backups and its WAL objects."""
    listing = list_archive(repo, cluster)
    size = listing.segment_size or 16 << 20

    def facts(item: BaseBackup | DumpSet, kind: str, label: str, **segnos: int) -> BackupFacts:
        return BackupFacts(
            key=item.catalog_key,
            kind=kind,
            date=item.date,
            label=label,
            verified=is_verified(repo, item),
            tiers=tiers_of(repo, item.catalog_key),
            locked_until=max(
                (locked[r.key] for r in item.records if r.key in locked), default=None
            ),
            size_bytes=item.size_bytes,
            **segnos,
        )

    backups = [
        facts(b, "base", b.label, start_segno=b.start_lsn // size, stop_segno=b.stop_lsn // size)
        for b in list_base_backups(repo, cluster)
    ]
    backups += [facts(s, "dump", s.set_id) for s in list_dump_sets(repo, cluster)]
    objects = [
        WalFacts(
            o.key,
            None if o.kind == "history" else parse_segment(o.name[:24], size).segno,
            o.name,
            o.stored_bytes,
        )
        for o in listing.objects
    ]
    return backups, objects


def _rehearsal_failed(repo: Repository, cluster: str) -> str | None:
    reports = [i for i in repo.storage.list(f"{cluster}/{REPORTS}/") if i.key.endswith(".json")]
    if not reports:
        return None
    latest = repo.get_json(max(reports, key=lambda i: i.mtime).key)
    if latest.get("passed"):
        return None
    return (latest.get("problems") or ["see its report"])[0][:200]


def _offsite_listing(offsite: Repository | None, cluster: str) -> dict[str, ObjectInfo]:
    if offsite is None:
        return {}
    return {o.key: o for o in offsite.storage.list(f"{cluster}/")}


class _Listed:
    """A store as one listing of it showed it, for planning: ``list`` and ``exists``
    answered from that listing (an S3 store is then listed once per run, not once per
    prefix, with no HEAD request per backup for its verification and tier records); every
    read goes to the store. Deleting goes to the store itself, never through this, and
    checks what the store lists afresh."""

    def __init__(self, storage: object, objects: dict[str, ObjectInfo]):
        self._storage, self._objects = storage, objects

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        return sorted(
            (info for key, info in self._objects.items() if key.startswith(prefix)),
            key=lambda o: o.key,
        )

    def exists(self, key: str) -> bool:
        return key in self._objects

    def __getattr__(self, name: str) -> object:
        return getattr(self._storage, name)


def _as_listed(offsite: Repository, held: dict[str, ObjectInfo]) -> Repository:
    import copy

    listed = copy.copy(offsite)
    listed.storage = _Listed(offsite.storage, held)
    return listed


def _apply(
    report: ExpiryReport,
    repo: Repository,
    offsite: Repository | None,
    cluster: str,
    local_wal: dict[str, int],
    held: dict[str, ObjectInfo],
    locked: dict[str, float],
    log: Log,
) -> None:
    for decision in report.plan.expired:
        prefix = set_prefix(decision.backup.key) + "/"
        # The catalog entry first: from here on the backup is not listed as one.
        for store, name, listing in _stores(repo, offsite, held, prefix):
            if store.storage.exists(decision.backup.key):
                store.storage.delete(decision.backup.key)
                if store.storage.exists(decision.backup.key):
                    # Still listed: it stays whole, here and in the stores after this one.
                    report.wal_kept = (
                        f"deleting {decision.backup.key} from the {name} store did not take"
                    )
                    log(f"kept {decision.backup.label} for now: {report.wal_kept}")
                    break
            for info in listing:
                if info.key != decision.backup.key:
                    store.storage.delete(info.key)
                    report.freed[name] += info.size
                    report.deleted[name] += 1
        else:
            b = decision.backup
            log(f"expired {b.kind} backup {b.label} ({b.date})")
    # WAL goes only once no store lists a backup this run expired: a deletion that did
    # not take must never leave a listed backup without the WAL it needs. The next run
    # tries again.
    expired = {d.backup.key for d in report.plan.expired if d.backup.kind == "base"}
    for name, store in (("the repository", repo), ("the offsite store", offsite)):
        left = (
            [b for b in list_base_backups(store, cluster) if b.catalog_key in expired]
            if store
            else []
        )
        if left:
            report.wal_kept = (
                f"{name} still lists the expired base backup {left[0].label} ({left[0].date})"
            )
            log(f"no WAL expired this time: {report.wal_kept}")
            return
    for rng in report.plan.expired_wal:
        for key in rng.keys:
            if key in local_wal:
                repo.storage.delete(key)
                report.freed["local"] += local_wal[key]
                report.deleted["local"] += 1
            if offsite is not None and key in held:
                if key in locked:
                    report.deferred.append(key)
                    continue
                offsite.storage.delete(key)
                report.freed["offsite"] += held[key].size
                report.deleted["offsite"] += 1


def _stores(repo, offsite, held, prefix):  # noqa: ANN001, ANN202
    # Offsite first: while the repository still lists the backup, a run that dies here is
    # finished by the next one (which plans from both stores anyway).
    if offsite is not None:
        yield offsite, "offsite", [i for k, i in held.items() if k.startswith(prefix)]
    yield repo, "local", repo.storage.list(prefix)


def _sweep(
    repo: Repository,
    offsite: Repository | None,
    held: dict[str, ObjectInfo],
    cluster: str,
    now: float,
    log: Log,
) -> list[str]:
    """What interrupted runs left: set folders without a catalog entry (in the repository
    under the backup's own lock, offsite when a day old), staging folders nobody holds."""
    swept: list[str] = []
    for kind, prefix in (
        ("base_backup", base_prefix(cluster)),
        ("logical_dump", dump_prefix(cluster)),
    ):
        try:
            with repo.lock(cluster, kind, 0, log):
                swept += repo.sweep_unfinished_sets(prefix, log)
        except LockTimeoutError:
            log(f"a {kind} of {cluster} is running: its leftovers are swept another time")
        if offsite is None:
            continue
        sets: dict[str, list[ObjectInfo]] = defaultdict(list)
        for key, info in held.items():
            parts = key.split("/")
            if key.startswith(prefix) and len(parts) > 4:
                sets["/".join(parts[:4])].append(info)
        for folder, infos in sets.items():
            if any(i.key.endswith("/" + CATALOG) for i in infos):
                continue
            if max(i.mtime for i in infos) > now - LEFTOVER_AGE_S:
                continue  # a copy may be under way
            for info in infos:
                try:
                    offsite.storage.delete(info.key)
                except PgBackupError as exc:
                    log(f"cannot remove the leftover {info.key} offsite: {exc}")
            swept.append(f"offsite {folder}")
            log(f"removed offsite {folder}: what an interrupted copy left (no catalog entry)")
    sweep_staging(repo.staging_base())
    sweep_temporary = getattr(repo.storage, "sweep_temporary", None)  # a local repository
    if sweep_temporary is not None:
        left = sweep_temporary(f"{cluster}/", now - LEFTOVER_AGE_S)
        if left:
            swept.append(f"{len(left)} temporary files of killed writers")
            log(f"removed {len(left)} temporary files killed writers left in {cluster}/")
    return swept
