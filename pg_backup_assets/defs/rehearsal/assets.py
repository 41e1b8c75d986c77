import dagster as dg
import pandas as pd

from pg_backup_assets.core.rehearsal.rehearse import RehearsalReport, rehearse
from pg_backup_assets.core.rehearsal.runbook import render_runbook
from pg_backup_assets.defs.check_names import (
    REHEARSAL_PASSED,
    RPO_WITHIN_TARGET,
    RTO_WITHIN_TARGET,
)
from pg_backup_assets.defs.context import REPOSITORY_KIND, ClusterContext
from pg_backup_assets.defs.resources import PgBackupResource
from pg_backup_assets.defs.tables import table_metadata


def build_restore_rehearsal(c: ClusterContext) -> dg.AssetsDefinition:
    key = c.key("restore_rehearsal")
    upstream = (
        ["offsite_base_backup", "offsite_wal", "offsite_dump"]
        if c.offsite
        else ["base_backup", "wal_archive", "logical_dump"]
    )

    @dg.asset(
        key=key,
        deps=[c.key(a) for a in upstream],
        **c.labels(),
        partitions_def=c.weekly,
        pool=c.pool,
        # It restores from the offsite store when there is one, else from the repository.
        kinds={"postgres", c.offsite_kind or REPOSITORY_KIND},
        freshness_policy=c.weekly_freshness,
        check_specs=[
            dg.AssetCheckSpec(REHEARSAL_PASSED, asset=key, blocking=True),
            dg.AssetCheckSpec(RTO_WITHIN_TARGET, asset=key),
            dg.AssetCheckSpec(RPO_WITHIN_TARGET, asset=key),
        ],
    )
    def restore_rehearsal(
        context: dg.AssetExecutionContext, pgbackup: PgBackupResource
    ) -> dg.MaterializeResult:
        """Restores the offsite copy into a scratch server, recovers it to a fresh restore
        point, verifies every table against the source, restores the week's dump, times it."""
        config = pgbackup.config()
        cluster = config.cluster(c.name)
        report = rehearse(config, c.name, context.partition_key, log=context.log.info)
        return dg.MaterializeResult(
            metadata=report_metadata(report, render_runbook(config, c.name, report)),
            check_results=[
                dg.AssetCheckResult(
                    check_name=REHEARSAL_PASSED,
                    passed=report.passed,
                    description="; ".join(report.problems[:20])
                    or f"restored {report.backup} to {report.point.get('name')}, "
                    f"{len(report.tables)} tables identical, every check passed",
                    metadata={"mismatches": report.mismatches, "problems": len(report.problems)},
                ),
                rto_result(report, cluster.rto_seconds),
                rpo_result(report, cluster.rpo_seconds),
            ],
        )

    return restore_rehearsal


def rto_result(report: RehearsalReport, rto_seconds: int) -> dg.AssetCheckResult:
    if report.rto_s is None:
        return dg.AssetCheckResult(
            check_name=RTO_WITHIN_TARGET,
            passed=False,
            description="no usable server: the restore did not get that far (see rehearsal_passed)",
            metadata={"rto_seconds": rto_seconds},
        )
    return dg.AssetCheckResult(
        check_name=RTO_WITHIN_TARGET,
        passed=report.rto_s <= rto_seconds,
        description=f"a usable server in {report.rto_s:.1f}s (fetch + extract "
        f"{report.phases['fetch_s']:.1f}s, replay {report.phases['replay_s']:.1f}s); "
        f"rto_seconds is {rto_seconds}",
        metadata={"rto_s": report.rto_s, "rto_seconds": rto_seconds},
    )


def rpo_result(report: RehearsalReport, rpo_seconds: int) -> dg.AssetCheckResult:
    if report.rpo_s is None:
        return dg.AssetCheckResult(
            check_name=RPO_WITHIN_TARGET,
            passed=False,
            description=f"the age of the newest WAL in the {report.source} store could not be "
            "measured (see rehearsal_passed)",
            metadata={"rpo_seconds": rpo_seconds},
        )
    return dg.AssetCheckResult(
        check_name=RPO_WITHIN_TARGET,
        passed=report.rpo_s <= rpo_seconds,
        description=f"the newest WAL in the {report.source} store was {report.rpo_s:.0f}s old "
        f"when the rehearsal began; rpo_seconds is {rpo_seconds}",
        metadata={"rpo_s": report.rpo_s, "rpo_seconds": rpo_seconds},
    )


def report_metadata(report: RehearsalReport, runbook: str) -> dict[str, object]:
    """Numbers the UI plots, the verdict per table, and the runbook that worked. What was
    not measured (a rehearsal that failed early) is left out, not plotted as zero."""
    phases = ("fetch_s", "replay_s", "verify_s", "dump_restore_s", "total_s")
    md: dict[str, object] = {
        **{k: v for k in ("rto_s", "rpo_s") if (v := getattr(report, k)) is not None},
        **{k: report.phases[k] for k in phases if k in report.phases},
        "tables_checked": len(report.tables) + len(report.dump.get("tables", [])),
        "mismatches": report.mismatches,
        "source": report.source,
        "pinned_reference": report.pinned,
        "verdict": table_metadata(verdict_frame(report)),
        "runbook": dg.MetadataValue.md(runbook),
    }
    if report.backup:
        md.update(backup=report.backup, restored_bytes=report.restored_bytes)
    if report.point:
        md["restore_point"] = f"{report.point['name']} at {report.point['lsn']}"
    if report.wal:
        md["wal_range"] = "..".join(report.wal)
    if report.problems:
        md["problems"] = dg.MetadataValue.md("\n".join(f"- {p}" for p in report.problems))
    return md


def verdict_frame(report: RehearsalReport) -> pd.DataFrame:
    """One row per table: the physical copy's, then the logical dump's."""
    rows = [{"restore": "physical", **t} for t in report.tables]
    rows += [{"restore": "logical dump", **t} for t in report.dump.get("tables", [])]
    rows += [
        {"restore": c["check"], "database": "", "table": "", "ok": c["ok"], "compared": c["detail"]}
        for c in report.checks
    ]
    columns = ["restore", "database", "table", "source_rows", "copy_rows", "compared", "ok"]
    frame = pd.DataFrame(rows, columns=columns)
    return frame.astype({"source_rows": "Int64", "copy_rows": "Int64", "ok": "boolean"})
