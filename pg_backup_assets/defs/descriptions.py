"""Each asset's description ends with what the config says about it for this cluster: the
databases, the stores, the targets, the retention. The UI then shows an operator the
deployment they configured, not only what the asset does in general."""

from collections.abc import Sequence

import dagster as dg

from pg_backup_assets.core.config import Config

Asset = dg.AssetsDefinition | dg.AssetSpec


def configured(config: Config, cluster: str) -> dict[str, str]:
    """Per asset name, the config's facts about it (markdown, one line each)."""
    c = config.cluster(cluster)
    key = f"clusters.{cluster}"
    databases = ", ".join(c.databases) if c.databases else "every non-template database"
    repository = f"repository `{config.repository}`"
    offsite = _offsite(config)
    r = config.retention
    facts = {
        "logical_dump": f"Databases: {databases}; into the {repository}.",
        "base_backup": f"Into the {repository}.",
        "wal_archive": f"Into the {repository}; `{key}.rpo_seconds`: {c.rpo_seconds}.",
        "restore_rehearsal": f"`{key}.rto_seconds`: {c.rto_seconds}, `{key}.rpo_seconds`: "
        f"{c.rpo_seconds}; weekly at `{config.schedules.weekly}` ({config.schedules.timezone}).",
        "retention_expiry": f"`retention`: daily {r.daily}, weekly {r.weekly}, monthly "
        f"{r.monthly}, yearly {r.yearly}.",
        **{
            f"{tier}_retention": f"`retention.{tier}`: {getattr(r, tier)}."
            for tier in ("weekly", "monthly", "yearly")
        },
    }
    if offsite:
        facts |= {
            "offsite_dump": f"To {offsite}.",
            "offsite_base_backup": f"To {offsite}.",
            "offsite_wal": f"To {offsite}; `{key}.rpo_seconds`: {c.rpo_seconds}.",
        }
    if c.description:
        facts = {name: f"{fact}\n\n{cluster}: {c.description}" for name, fact in facts.items()}
    return facts


def _offsite(config: Config) -> str | None:
    off = config.offsite
    if off is None:
        return None
    if off.s3 is not None:
        where = f" at {off.s3.endpoint_url}" if off.s3.endpoint_url else ""
        return f"`s3://{off.s3.bucket}/{off.s3.prefix}`{where}"
    return f"the folder `{off.path}`"


def with_config_facts(assets: Sequence[Asset], config: Config, cluster: str) -> list[Asset]:
    """``assets`` with the config's facts appended to their descriptions."""
    facts = configured(config, cluster)

    def describe(spec: dg.AssetSpec) -> dg.AssetSpec:
        fact = facts.get(spec.key.path[-1])
        if not fact:
            return spec
        return spec.replace_attributes(description=f"{spec.description or ''}\n\n{fact}".strip())

    return [
        describe(a) if isinstance(a, dg.AssetSpec) else a.map_asset_specs(describe) for a in assets
    ]
