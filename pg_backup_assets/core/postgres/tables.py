"""The user tables of a database, their row counts and content digests: what a restored
copy is compared with (rehearsals) and what a dump records of its own snapshot."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import sql

# Every session that counts or digests sees values in the same text form, so a table's
# digest on the source and on a restored copy is the same when its rows are.
_SETTINGS = (
    "SET TimeZone = 'UTC'",
    "SET DateStyle = 'ISO, MDY'",
    "SET IntervalStyle = 'postgres'",
    "SET extra_float_digits = 1",
    "SET bytea_output = 'hex'",
)


@dataclass(frozen=True)
class TableState:
    rows: int
    digest: str | None  # sum of 60-bit prefixes of each row's md5: order-free, exact enough


def stable_text(conn: psycopg.Connection) -> None:
    for statement in _SETTINGS:
        conn.execute(statement)


def user_tables(conn: psycopg.Connection) -> list[str]:
    """Qualified names of the tables whose rows a dump and a physical copy hold: ordinary
    tables and partitions, not foreign tables, not tables an extension owns."""
    rows = conn.execute(
        """
        SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname)
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relkind = 'r' AND c.relpersistence <> 't'
           AND n.nspname NOT IN ('pg_catalog', 'information_schema')
           AND n.nspname NOT LIKE 'pg\\_toast%'
           AND NOT EXISTS (SELECT 1 FROM pg_depend d
                            WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                              AND d.deptype = 'e')
         ORDER BY 1
        """
    ).fetchall()
    return [r[0] for r in rows]


def table_state(conn: psycopg.Connection, table: str, digest: bool = True) -> TableState:
    """Row count (and digest) of ``table`` (a qualified, quoted name from user_tables)."""
    name = sql.SQL(table)  # already quoted by quote_ident
    if not digest:
        (rows,) = conn.execute(sql.SQL("SELECT count(*) FROM {} t").format(name)).fetchone()
        return TableState(rows, None)
    rows, total = conn.execute(
        sql.SQL(
            "SELECT count(*), coalesce(sum(('x' || substr(md5(t::text), 1, 15))::bit(60)"
            "::bigint), 0)::text FROM {} t"
        ).format(name)
    ).fetchone()
    return TableState(rows, total)
