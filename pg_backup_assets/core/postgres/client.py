"""libpq-side helpers: DSNs without leaking secrets, server facts, and the client tools."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pg_backup_assets.core.errors import CommandError, ConfigError, PgBackupError

_SECRET_KEYS = ("password", "sslpassword")
CONNECT_TIMEOUT_S = 10
INVALID_DSN = "invalid dsn: not a libpq connection string (key=value pairs or a postgresql:// URI)"


def split_dsn(dsn: str, **override: str) -> tuple[str, dict[str, str]]:
    """(conninfo without secrets, environment carrying them) for running libpq tools.

    Passwords go through PGPASSWORD so that they never appear in a process list. A server
    that does not answer fails the tool after CONNECT_TIMEOUT_S, not after TCP's minutes.
    """
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        # libpq's message quotes the text around the fault, which may be the password.
        raise ConfigError(INVALID_DSN) from None
    params.update(override)
    env = {"PGCONNECT_TIMEOUT": str(CONNECT_TIMEOUT_S)}
    if params.get("password"):
        env["PGPASSWORD"] = str(params["password"])
    for key in _SECRET_KEYS:
        params.pop(key, None)
    return make_conninfo(**{k: str(v) for k, v in params.items() if v is not None}), env


def redact_dsn(dsn: str) -> str:
    """The DSN with any password replaced by ``***``; safe for logs and metadata."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<unparseable dsn>"
    for key in _SECRET_KEYS:
        if key in params:
            params[key] = "***"
    return make_conninfo(**{k: str(v) for k, v in params.items() if v is not None})


def dsn_at(dsn: str, port: int, dbname: str | None = None, host: str = "127.0.0.1") -> str:
    """``dsn``'s user and credentials, pointed at another server (a restored copy)."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        raise ConfigError(INVALID_DSN) from None
    params.pop("hostaddr", None)
    params.update(host=host, port=str(port), **({"dbname": dbname} if dbname else {}))
    return make_conninfo(**{k: str(v) for k, v in params.items() if v is not None})


def with_dbname(dsn: str, dbname: str) -> str:
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        raise ConfigError(INVALID_DSN) from None
    params["dbname"] = dbname
    return make_conninfo(**{k: str(v) for k, v in params.items() if v is not None})


def db_host(dsn: str, explicit: str | None = None) -> str:
    """The database server a DSN points at, as one word (a Dagster tag value and pool
    name): ``explicit`` when the config names it (``clusters.<c>.db_host``), else the DSN's
    first host, ``localhost`` for a Unix socket or no host at all (libpq's default). Two
    names of one machine are two hosts to Dagster: name it in the config then."""
    if explicit:
        return explicit
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        raise ConfigError(INVALID_DSN) from None
    host = str(params.get("host") or params.get("hostaddr") or "").split(",")[0].strip()
    if not host or host.startswith("/") or host.startswith("@"):
        return "localhost"
    return re.sub(r"[^A-Za-z0-9_.-]", "_", host)[:63]


def connect(dsn: str, **kwargs: object) -> psycopg.Connection:
    try:
        return psycopg.connect(dsn, connect_timeout=CONNECT_TIMEOUT_S, **kwargs)
    except psycopg.ProgrammingError:
        raise ConfigError(INVALID_DSN) from None  # libpq's message may quote the password
    except psycopg.OperationalError as exc:
        raise PgBackupError(f"cannot connect to {redact_dsn(dsn)}: {_first_line(exc)}") from None


@dataclass(frozen=True)
class ServerFacts:
    version: str  # e.g. "15.18"
    version_num: int  # e.g. 150018
    system_identifier: str
    databases: tuple[str, ...]  # non-template databases that accept connections

    @property
    def major(self) -> int:
        return self.version_num // 10000


def server_facts(dsn: str) -> ServerFacts:
    with connect(dsn, autocommit=True) as conn:
        version = conn.execute("SHOW server_version").fetchone()[0].split()[0]
        num = int(conn.execute("SHOW server_version_num").fetchone()[0])
        sysid = str(conn.execute("SELECT system_identifier FROM pg_control_system()").fetchone()[0])
        dbs = tuple(
            r[0]
            for r in conn.execute(
                "SELECT datname FROM pg_database WHERE NOT datistemplate AND datallowconn "
                "ORDER BY datname"
            )
        )
    return ServerFacts(version, num, sysid, dbs)


def extensions(dsn: str) -> dict[str, str]:
    """Installed extensions of one database: name -> version."""
    with connect(dsn, autocommit=True) as conn:
        return dict(conn.execute("SELECT extname, extversion FROM pg_extension ORDER BY 1"))


def available_extensions(dsn: str) -> set[str]:
    with connect(dsn, autocommit=True) as conn:
        return {r[0] for r in conn.execute("SELECT name FROM pg_available_extensions")}


def bindir(major: int | None = None) -> Path:
    """Folder of the PostgreSQL tools for ``major`` (client tools must be >= the server)."""
    override = os.environ.get("PGBACKUP_PG_BINDIR")
    if override:
        return Path(override)
    root = Path("/usr/lib/postgresql")
    if major is not None and (root / str(major) / "bin" / "pg_dump").exists():
        return root / str(major) / "bin"
    if root.is_dir():
        majors = sorted((int(p.name) for p in root.iterdir() if p.name.isdigit()), reverse=True)
        for m in majors:
            if (root / str(m) / "bin" / "pg_dump").exists() and (major is None or m >= major):
                return root / str(m) / "bin"
    found = shutil.which("pg_dump")
    if found:
        return Path(found).parent
    raise PgBackupError(
        "PostgreSQL client tools not found: install them (Debian: apt-get install "
        "postgresql-client-15) or set PGBACKUP_PG_BINDIR"
    )


def tool(name: str, major: int | None = None) -> str:
    return str(bindir(major) / name)


def run_tool(
    args: Sequence[str], env: dict[str, str] | None = None, what: str | None = None
) -> subprocess.CompletedProcess[bytes]:
    """Run a PostgreSQL tool to completion; raise CommandError with its stderr on failure."""
    proc = subprocess.run(
        list(args), env={**os.environ, **(env or {})}, capture_output=True, check=False
    )
    if proc.returncode != 0:
        raise CommandError(
            f"{what or Path(args[0]).name} failed (exit {proc.returncode}): "
            f"{proc.stderr.decode(errors='replace').strip()[-2000:]}"
        )
    return proc


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
