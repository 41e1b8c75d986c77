from collections.abc import Callable

import dagster as dg
from dagster_aws.s3 import S3Resource

from pg_backup_assets.core import basebackup, dumps, offsite
from pg_backup_assets.core.repository import Repository
from pg_backup_assets.defs.check_names import OFFSITE_COPY_MATCHES, THREE_TWO_ONE
from pg_backup_assets.defs.offsite.assets import offsite_key
from pg_backup_assets.defs.partitions import daily_check
from pg_backup_assets.defs.resources import PgBackupResource

# (sha256 of each object of the day's set + its catalog entry) for dumps / base backups
Expected = Callable[[Repository, str, str], tuple[list[tuple[str, str]], bool]]


def _dump_expected(repo: Repository, cluster: str, day: str) -> tuple[list[tuple[str, str]], bool]:
    dump_set = dumps.find_dump_set(repo, cluster, day)
    objects = [(o.record.key, o.record.sha256) for o in dump_set.objects]
    return objects + [_catalog(repo, dump_set.catalog_key)], True


def _base_expected(repo: Repository, cluster: str, day: str) -> tuple[list[tuple[str, str]], bool]:
    backup = basebackup.find_base_backup(repo, cluster, day)
    objects = [(r.key, r.sha256) for r in backup.objects.values()]
    verified = basebackup.verification(repo, backup)
    return objects + [_catalog(repo, backup.catalog_key)], bool(verified and verified["ok"])


def _catalog(repo: Repository, key: str) -> tuple[str, str]:
    return key, offsite.sha256_at(repo.storage, key) or ""


def build_offsite_checks(cluster: str, what: str) -> list[dg.AssetChecksDefinition]:
    expected: Expected = _dump_expected if what == "dump" else _base_expected
    key = offsite_key(cluster, what)

    def offsite_copy_matches(
        context: dg.AssetCheckExecutionContext, pgbackup: PgBackupResource, s3: S3Resource
    ) -> dg.AssetCheckResult:
        """Every offsite object of the day re-read: its sha256 equals the local one."""
        objects, _ = expected(pgbackup.repository(), cluster, context.partition_key)
        problems = offsite.verify_copies(pgbackup.offsite(s3), objects)
        return dg.AssetCheckResult(
            passed=not problems,
            description="; ".join(problems[:10]) or f"{len(objects)} objects match",
            metadata={"objects_checked": len(objects), "mismatches": len(problems)},
        )

    def three_two_one(
        context: dg.AssetCheckExecutionContext, pgbackup: PgBackupResource, s3: S3Resource
    ) -> dg.AssetCheckResult:
        """3 copies, 2 kinds of media, 1 offsite: judged honestly from where things are."""
        repo = pgbackup.repository()
        objects, local_ok = expected(repo, cluster, context.partition_key)
        offsite_ok = not offsite.verify_copies(pgbackup.offsite(s3), objects)
        verdict = offsite.three_two_one(pgbackup.config(), local_ok, offsite_ok)
        return dg.AssetCheckResult(
            passed=verdict.passed,
            description=verdict.message,
            metadata={"copies": verdict.copies, "media": verdict.media, "offsite": verdict.offsite},
        )

    return [
        daily_check(offsite_copy_matches, asset=key, name=OFFSITE_COPY_MATCHES, blocking=True),
        daily_check(three_two_one, asset=key, name=THREE_TWO_ONE),
    ]
