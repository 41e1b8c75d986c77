import dagster as dg

from pg_backup_assets.core.config import Config, load_config
from pg_backup_assets.core.repository import Repository

HEAVY_POOL = "pg_backup_heavy"


class PgBackupResource(dg.ConfigurableResource):
    """The pg-backup-assets config file (secrets stay in the environment it expands)."""

    config_path: str

    def config(self) -> Config:
        return load_config(self.config_path)

    def repository(self) -> Repository:
        return Repository.from_config(self.config())
