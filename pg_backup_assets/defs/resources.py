import dagster as dg
from dagster_aws.s3 import S3Resource

from pg_backup_assets.core.config import Config, load_config
from pg_backup_assets.core.offsite.store import offsite_repository
from pg_backup_assets.core.storage.repository import Repository

# The pool of restores launched by hand (restore_to_point_in_time); a cluster's scheduled
# heavy work runs in its database host's pool, f"{HEAVY_POOL}@{host}" (defs/context.py).
HEAVY_POOL = "pg_backup_heavy"


class PgBackupResource(dg.ConfigurableResource):
    """The pg-backup-assets config file (secrets stay in the environment it expands)."""

    config_path: str

    def config(self) -> Config:
        return load_config(self.config_path)

    def repository(self) -> Repository:
        return Repository.from_config(self.config())

    def offsite(self, s3: S3Resource) -> Repository:
        """The offsite store, through dagster-aws's S3 client when it is S3."""
        config = self.config()
        client = s3.get_client() if config.offsite and config.offsite.s3 else None
        return offsite_repository(config, client)


def s3_resource(config: Config) -> S3Resource:
    """dagster-aws's S3 resource for the configured offsite store (credentials: AWS env)."""
    s3 = config.offsite.s3 if config.offsite else None
    if s3 is None:
        return S3Resource()
    # The same client configuration as the CLI's (core.storage.s3.s3_client).
    return S3Resource(
        endpoint_url=s3.endpoint_url, region_name=s3.region, max_attempts=s3.max_attempts
    )
