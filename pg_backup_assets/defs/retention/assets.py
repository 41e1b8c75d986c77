import datetime as dt

import dagster as dg
import pandas as pd
from dagster_aws.s3 import S3Resource

from pg_backup_assets.core.retention.expire import ExpiryReport, expire
from pg_backup_assets.core.retention.plan import TIERS
from pg_backup_assets.core.retention.tiers import promote
from pg_backup_assets.defs.context import ClusterContext
from pg_backup_assets.defs.resources import PgBackupResource
from pg_backup_assets.defs.tables import table_metadata


def build_tiers(c: ClusterContext) -> list[dg.AssetsDefinition]:
    return [_tier_asset(c, tier) for tier in TIERS]


def _tier_asset(c: ClusterContext, tier: str) -> dg.AssetsDefinition:
    @dg.asset(
        key=c.key(f"{tier}_retention"),
        deps=[c.key("base_backup"), c.key("logical_dump")],
        **c.labels(),
        partitions_def=c.tiers[tier],
        kinds=c.stores,
        description=f"The newest verified base backup and dump set of each {tier[:-2]} window, "
        f"promoted into the {tier} tier (kept for retention.{tier} windows).",
    )
    def tier_retention(
        context: dg.AssetExecutionContext, pgbackup: PgBackupResource, s3: S3Resource
    ) -> dg.MaterializeResult:
        window = context.partition_time_window
        first = window.start.date().isoformat()
        end = window.end.date().isoformat()
        offsite = pgbackup.offsite(s3) if pgbackup.config().offsite else None
        promoted = promote(
            pgbackup.repository(), offsite, c.name, tier, context.partition_key, first, end
        )
        base = next(p for p in promoted if p.kind == "base")
        return dg.MaterializeResult(
            metadata={
                "window": f"{first} to {end} (exclusive)",
                "base_backup": base.label,
                "base_backup_day": base.date,
                "dump_set": next((p.label for p in promoted if p.kind == "dump"), "none verified"),
            }
        )

    return tier_retention


def build_retention_expiry(c: ClusterContext) -> dg.AssetsDefinition:
    after = ["base_backup", "logical_dump"] + (
        ["offsite_base_backup", "offsite_dump"] if c.offsite else []
    )

    @dg.asset(
        key=c.key("retention_expiry"),
        deps=[c.key(a) for a in after],
        **c.labels(),
        partitions_def=c.daily,
        kinds=c.stores,
    )
    def retention_expiry(
        context: dg.AssetExecutionContext, pgbackup: PgBackupResource
    ) -> dg.MaterializeResult:
        """Applies the GFS policy: every backup kept (with why) or expired; WAL no kept
        backup needs; leftovers of interrupted runs swept."""
        report = expire(pgbackup.config(), c.name, log=context.log.info)
        return dg.MaterializeResult(metadata=expiry_metadata(report))

    return retention_expiry


def expiry_metadata(report: ExpiryReport) -> dict[str, object]:
    p = report.plan
    rows = [
        {
            "kind": d.backup.kind,
            "day": d.backup.date,
            "backup": d.backup.label,
            "tiers": ", ".join(f"{t} {w}" for t, w in sorted(d.backup.tiers.items())),
            "kept": d.keep,
            "why": "; ".join(d.reasons),
            "bytes": d.backup.size_bytes,
        }
        for d in sorted(p.decisions, key=lambda d: (d.backup.date, d.backup.kind), reverse=True)
    ]
    rows += [
        {
            "kind": "wal",
            "day": "",
            "backup": f"{r.first}..{r.last} ({r.objects})",
            "tiers": "",
            "kept": r.keep,
            "why": r.reason,
            "bytes": r.bytes,
        }
        for r in p.wal
    ]
    frame = pd.DataFrame(rows, columns=["kind", "day", "backup", "tiers", "kept", "why", "bytes"])
    md: dict[str, object] = {
        "kept_backups": sum(1 for d in p.decisions if d.keep),
        "expired_backups": len(p.expired),
        "expired_wal_objects": sum(r.objects for r in p.expired_wal),
        "freed_bytes": report.freed["local"],
        "freed_offsite_bytes": report.freed["offsite"],
        "plan": table_metadata(frame.astype({"bytes": "Int64", "kept": "boolean"})),
        "planned_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    if p.halted:
        md["halted"] = p.halted
    if report.deferred:
        md["deferred_offsite_objects"] = len(report.deferred)
    if report.wal_kept:
        md["wal_kept"] = report.wal_kept
    if report.swept:
        md["swept"] = dg.MetadataValue.md("\n".join(f"- {s}" for s in report.swept))
    return md
