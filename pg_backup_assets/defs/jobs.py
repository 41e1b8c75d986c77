"""The type of an asset job as ``dg.define_asset_job`` returns it (resolved on load)."""

from dagster._core.definitions.unresolved_asset_job_definition import (
    UnresolvedAssetJobDefinition as AssetJob,
)

__all__ = ["AssetJob"]
