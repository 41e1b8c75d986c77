"""What a rehearsal checks on its restored copy: every reference table there with the same
rows, indexes and heaps sound (pg_amcheck), page checksums (pg_checksums) and the config's
smoke queries."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from pg_backup_assets.core.config import SmokeQuery
from pg_backup_assets.core.errors import PgBackupError
from pg_backup_assets.core.postgres.client import connect, split_dsn, tool
from pg_backup_assets.core.postgres.local_cluster import as_server_user
from pg_backup_assets.core.postgres.tables import stable_text, table_state, user_tables


@dataclass
class TableRow:
    """One line of the verdict table."""

    database: str
    table: str
    source_rows: int
    copy_rows: int | None  # None: the table is missing in the copy
    compared: str  # "rows+digest", "rows", "presence"
    ok: bool

    def problem(self) -> str | None:
        if self.ok:
            return None
        if self.copy_rows is None:
            return f"table {self.database}.{self.table} is missing in the copy"
        return (
            f"table {self.database}.{self.table} differs: {self.copy_rows:,} rows in the copy, "
            f"{self.source_rows:,} at the restore point"
            + (" (or its contents differ)" if self.copy_rows == self.source_rows else "")
        )


def compare_tables(
    copy_dsn_of: Any, reference: dict[str, dict[str, dict[str, Any]]], pinned: bool
) -> list[TableRow]:
    """``copy_dsn_of(db)``: how to reach a database of the copy."""
    rows = []
    for db, tables in reference.items():
        try:
            conn = connect(copy_dsn_of(db), autocommit=True)
        except PgBackupError:
            rows += [TableRow(db, t, r["rows"], None, "presence", False) for t, r in tables.items()]
            continue
        with conn:
            stable_text(conn)
            present = set(user_tables(conn))
            for table, ref in tables.items():
                if table not in present:
                    rows.append(TableRow(db, table, ref["rows"], None, "presence", False))
                    continue
                if not pinned:
                    copy = table_state(conn, table, digest=False)
                    rows.append(TableRow(db, table, ref["rows"], copy.rows, "presence", True))
                    continue
                copy = table_state(conn, table, digest=ref["digest"] is not None)
                same = copy.rows == ref["rows"] and copy.digest == ref["digest"]
                how = "rows+digest" if ref["digest"] is not None else "rows"
                rows.append(TableRow(db, table, ref["rows"], copy.rows, how, same))
    return rows


def amcheck(dsn: str, major: int) -> tuple[bool, str]:
    """pg_amcheck --heapallindexed on every database (it installs amcheck where missing:
    this is a scratch copy)."""
    conninfo, env = split_dsn(dsn)
    proc = subprocess.run(
        [
            tool("pg_amcheck", major),
            "--all",
            "--install-missing",
            "--heapallindexed",
            "--no-password",
            f"--maintenance-db={conninfo}",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        check=False,
    )
    said = (proc.stdout + proc.stderr).strip()
    if proc.returncode == 0:
        return True, "--heapallindexed: no corruption in any table or index of any database"
    return False, "; ".join(said.splitlines()[:20])


def checksums(data_dir: Path, bindir: Path) -> tuple[bool, str]:
    """pg_checksums --check on the stopped copy."""
    proc = as_server_user(
        [str(bindir / "pg_checksums"), "--check", "-D", str(data_dir)], check=False, timeout=3600
    )
    said = (proc.stdout + proc.stderr).strip()
    if proc.returncode == 0:
        bad = next((line for line in said.splitlines() if "Bad checksums" in line), "")
        return True, f"--check: every page verified ({bad.strip() or 'no bad page'})"
    return False, "; ".join(said.splitlines()[-10:])


def smoke_queries(
    copy_dsn_of: Any, queries: list[SmokeQuery]
) -> list[tuple[SmokeQuery, bool, str]]:
    out = []
    for q in queries:
        try:
            with connect(copy_dsn_of(q.database), autocommit=True) as conn:
                row = conn.execute(q.sql).fetchone()
            got = "" if row is None or row[0] is None else str(row[0])
            if isinstance(row[0] if row else None, bool):
                got = "t" if row[0] else "f"
            out.append((q, got == q.expect, got))
        except (PgBackupError, psycopg.Error) as exc:
            out.append((q, False, f"error: {str(exc).strip().splitlines()[0]}"))
    return out
