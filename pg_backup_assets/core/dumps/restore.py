"""Restore one database's logical dump into a target database, selectively when asked."""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Sequence

from pg_backup_assets.core.catalog import DumpSet, find_dump_set
from pg_backup_assets.core.errors import CommandError, PgBackupError
from pg_backup_assets.core.postgres.client import (
    available_extensions,
    redact_dsn,
    split_dsn,
    tool,
)
from pg_backup_assets.core.progress import Log
from pg_backup_assets.core.storage.repository import Repository


def restore_dump(
    repo: Repository,
    cluster: str,
    database: str,
    into_dsn: str,
    date: str | None = None,
    tables: Sequence[str] = (),
    no_owner: bool = False,
    log: Log = print,
) -> DumpSet:
    """Restore one database's dump into ``into_dsn`` (only ``tables`` when given)."""
    dump_set = find_dump_set(repo, cluster, date)
    obj = dump_set.database(database)
    # A damaged object must never reach the target database: verify before streaming.
    repo.verify(obj.record)
    missing = sorted(set(obj.extensions) - available_extensions(into_dsn))
    if missing:
        raise PgBackupError(
            f"the target {redact_dsn(into_dsn)} lacks extensions the dump of {database} uses: "
            f"{', '.join(missing)}; install them on the target server first"
        )
    conninfo, env = split_dsn(into_dsn)
    args = [
        tool("pg_restore", dump_set.server_major),
        "--exit-on-error",
        "--no-password",
        "-d",
        conninfo,
    ]
    if no_owner:
        args.append("--no-owner")
    for t in tables:
        args += ["-t", t]
    log(
        f"restoring {database} from the {dump_set.date} dump ({dump_set.set_id}) "
        f"into {redact_dsn(into_dsn)}" + (f", tables {', '.join(tables)}" if tables else "")
    )
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(args, stdin=subprocess.PIPE, stderr=err, env={**os.environ, **env})
        try:
            complete = repo.read_into_process(obj.record, proc)
        finally:
            rc = proc.wait()
        err.seek(0)
        msg = err.read().decode(errors="replace").strip()
    if rc != 0:
        raise CommandError(
            f"pg_restore into {redact_dsn(into_dsn)} failed (exit {rc}): {msg[-2000:]}"
        )
    if not complete and not tables:
        raise CommandError("pg_restore stopped reading the dump before its end")
    return dump_set
