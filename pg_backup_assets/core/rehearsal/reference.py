"""The reference a rehearsal compares its restored copy with, and the restore point it
restores to, made so that the two describe the same instant on a database being written to.

A REPEATABLE READ snapshot and a restore point are not one instant: a transaction that
commits between them is in the copy and not in the snapshot. So, per database, a session
takes SHARE locks on every user table (they wait for the writers in flight, and hold new
writers off), then exports its snapshot; with every database pinned, the restore point is
written. No transaction can change a pinned table between its snapshot and the restore
point, so the copy's tables must equal the snapshot's exactly. The locks are held for
milliseconds: a second session imports each snapshot and the pinning sessions end before
any row is read. A lock that does not come within ``lock_timeout_ms`` (a long writer)
gives way, so that writers never queue behind us for long; after ``attempts`` tries the
reference is taken without pins, and its tables are then compared by presence only.
"""

from __future__ import annotations

import contextlib
import re
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from pg_backup_assets.core.catalog import RestorePoint, record_restore_point
from pg_backup_assets.core.config import ClusterConfig
from pg_backup_assets.core.errors import PgBackupError
from pg_backup_assets.core.postgres.client import connect, server_facts, with_dbname
from pg_backup_assets.core.postgres.tables import stable_text, table_state, user_tables
from pg_backup_assets.core.progress import Log
from pg_backup_assets.core.storage.repository import Repository
from pg_backup_assets.core.wal.names import parse_lsn


@dataclass
class Reference:
    point: RestorePoint
    pinned: bool  # every table was held still while the snapshot and the point were made
    tables: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # db -> table
    capture_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "point": {"name": self.point.name, "lsn": self.point.lsn, "time": self.point.time},
            "pinned": self.pinned,
            "tables": self.tables,
            "capture_s": self.capture_s,
        }


def capture_reference(
    repo: Repository,
    cluster: ClusterConfig,
    name: str,
    digests: bool,
    lock_timeout_ms: int,
    attempts: int,
    log: Log,
) -> Reference:
    """Make restore point ``name`` and record what every table held at that instant."""
    if not re.match(r"^[A-Za-z0-9_.:-]{1,63}$", name):
        raise PgBackupError(f"invalid restore point name {name!r}")
    t0 = time.monotonic()
    databases = list(cluster.databases or server_facts(cluster.dsn).databases)
    with contextlib.ExitStack() as stack:
        readers: dict[str, psycopg.Connection] = {}
        pinned = False
        for attempt in range(1, attempts + 1):
            pins = contextlib.ExitStack()
            try:
                snapshots = {
                    db: _pin(pins, with_dbname(cluster.dsn, db), lock_timeout_ms)
                    for db in databases
                }
                pinned = True
                break
            except psycopg.errors.LockNotAvailable:
                pins.close()
                log(f"tables are busy (attempt {attempt} of {attempts}); trying again")
                time.sleep(min(0.5 * attempt, 5))
            except BaseException:
                pins.close()
                raise
        if not pinned:
            log(
                "no moment came when every table could be held still: the reference is "
                "taken without pins, and tables are compared by presence only"
            )
            pins = contextlib.ExitStack()
            snapshots = {db: _pin(pins, with_dbname(cluster.dsn, db), None) for db in databases}
        with pins:
            point = _restore_point(cluster.dsn, name)
            for db, (snapshot, tables) in snapshots.items():
                reader = stack.enter_context(connect(with_dbname(cluster.dsn, db)))
                reader.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
                reader.read_only = True
                reader.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(snapshot))
                stable_text(reader)
                readers[db] = (reader, tables)
        # The pins are released: writers go on while the reference is read.
        record_restore_point(repo, cluster.name, point)
        reference = Reference(point, pinned)
        for db, (reader, tables) in readers.items():
            reference.tables[db] = {}
            for table in tables:
                state = table_state(reader, table, digests)
                reference.tables[db][table] = {"rows": state.rows, "digest": state.digest}
    reference.capture_s = time.monotonic() - t0
    count = sum(len(t) for t in reference.tables.values())
    log(
        f"restore point {name} at {point.lsn:X}: {count} tables in {len(databases)} databases "
        f"recorded ({'pinned' if pinned else 'not pinned'}) in {reference.capture_s:.1f}s"
    )
    return reference


def _pin(
    pins: contextlib.ExitStack, dsn: str, lock_timeout_ms: int | None
) -> tuple[sql.Literal, list[str]]:
    """A session that holds every user table of one database still (SHARE locks: no
    writer can change one until the session ends) and has exported its snapshot."""
    conn = pins.enter_context(connect(dsn, autocommit=True))
    tables = user_tables(conn)  # outside the transaction: its snapshot comes after the locks
    conn.autocommit = False
    conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
    if lock_timeout_ms is not None and tables:
        # LOCK and SET take no snapshot: the transaction's is taken by the export below,
        # once every writer of these tables has finished.
        conn.execute(f"SET LOCAL lock_timeout = {int(lock_timeout_ms)}")
        names = sql.SQL(", ").join(sql.SQL(t) for t in tables)
        conn.execute(sql.SQL("LOCK TABLE {} IN SHARE MODE").format(names))
    (snapshot,) = conn.execute("SELECT pg_export_snapshot()").fetchone()
    return sql.Literal(snapshot), tables


def _restore_point(dsn: str, name: str) -> RestorePoint:
    with connect(dsn, autocommit=True) as conn:
        lsn = conn.execute("SELECT pg_create_restore_point(%s)", (name,)).fetchone()[0]
        tli = conn.execute("SELECT timeline_id FROM pg_control_checkpoint()").fetchone()[0]
    return RestorePoint(name, parse_lsn(str(lsn)), time.time(), int(tli))
