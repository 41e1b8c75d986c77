"""The offsite store as a Repository: S3 (any S3-compatible endpoint) or a second filesystem.

It holds the repository's layout, catalog entries included, so restoring from it is
restoring from a Repository over that store.
"""

from __future__ import annotations

from typing import Any

from pg_backup_assets.core.config import Config
from pg_backup_assets.core.errors import ConfigError
from pg_backup_assets.core.storage.base import Storage
from pg_backup_assets.core.storage.repository import Repository, local_storage


def offsite_repository(
    config: Config, s3_client: Any = None, max_attempts: int | None = None
) -> Repository:
    """The offsite store as a Repository (same codec and identity as the local one).

    ``max_attempts``: fewer S3 retries than the default, for a quick look (``info``).
    """
    offsite = config.offsite
    if offsite is None:
        raise ConfigError("no offsite store is configured (config key 'offsite')")
    local = Repository.from_config(config)
    if offsite.path is not None:
        storage: Storage = local_storage(config, offsite.path)
    else:
        from pg_backup_assets.core.storage.s3 import S3Storage
        from pg_backup_assets.core.storage.s3 import s3_client as make_client

        s3 = offsite.s3
        client = s3_client or make_client(
            s3.endpoint_url, s3.region, min(max_attempts or s3.max_attempts, s3.max_attempts)
        )
        storage = S3Storage(client, s3.bucket, s3.prefix, s3.object_lock_days)
    return Repository(storage, local.codec, local.identity_file)
