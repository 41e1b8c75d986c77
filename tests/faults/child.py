"""One engine operation in a process of its own, for the tests that kill it."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from pg_backup_assets.core.base.backup import take_base_backup
from pg_backup_assets.core.catalog import find_base_backup
from pg_backup_assets.core.config import load_config
from pg_backup_assets.core.dumps.dump import take_dump_set
from pg_backup_assets.core.offsite.copy import copy_set, ship_wal
from pg_backup_assets.core.offsite.store import offsite_repository
from pg_backup_assets.core.storage.repository import Repository


def main(op: str, config_path: str, *args: str) -> None:
    config = load_config(config_path)
    repo = Repository.from_config(config)
    cluster = config.cluster(None)
    day = args[0] if args else "2026-11-26"
    if op == "restore_killed":  # args: DIR N/M; the process group is killed after part N/M
        from pg_backup_assets.core.base.restore import Target, restore

        def log(line: str) -> None:
            if line.startswith(f"part {args[1]} "):
                os.killpg(os.getpgid(0), signal.SIGKILL)

        restore(
            repo, cluster, Path(config_path), Path(args[0]), Target("latest"), log=log, workers=1
        )
    elif op == "base_backup":
        take_base_backup(repo, cluster, day, log=lambda m: None)
    elif op == "dump":
        take_dump_set(repo, cluster, day, log=lambda m: None)
    elif op == "offsite_base_backup":
        backup = find_base_backup(repo, cluster.name, day)
        copy_set(repo, offsite_repository(config), backup.objects.values(), backup.catalog_key, 0)
    elif op == "ship_wal":
        ship_wal(repo, offsite_repository(config), cluster.name)
    else:
        raise SystemExit(f"unknown operation {op}")


if __name__ == "__main__":
    main(*sys.argv[1:])
