"""Shared fixtures: real PostgreSQL 15 servers on loopback, stopped whatever happens."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from pg_backup_assets.core.codec import generate_identity
from pg_backup_assets.core.pgserver import LocalCluster, hand_over

REPO_ROOT = Path(__file__).resolve().parents[1]


def _reachable_tmpdir(prefix: str) -> Path:
    # pytest's tmp_path lives in a 0700 folder the postgres OS user cannot enter.
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = _reachable_tmpdir("pgba-test-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def pytest_sessionstart(session: pytest.Session) -> None:
    """Stop servers a killed earlier run left behind (fixtures stop their own normally)."""
    for pid_file in Path(tempfile.gettempdir()).glob("pgba-*/*/data/postmaster.pid"):
        LocalCluster(pid_file.parents[1]).stop(mode="immediate")
        shutil.rmtree(pid_file.parents[2], ignore_errors=True)


@pytest.fixture(scope="session")
def pg() -> Iterator[LocalCluster]:
    """One PostgreSQL 15 server for the session; tests create their own databases."""
    base = _reachable_tmpdir("pgba-server-")
    cluster = LocalCluster(base / "pg")
    try:
        cluster.init(fast=True).start()
        yield cluster
    finally:
        cluster.destroy()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def database(pg: LocalCluster) -> Iterator[str]:
    """A fresh, uniquely named database with a small known data set; dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    with psycopg.connect(pg.dsn(name), autocommit=True) as conn:
        conn.execute(
            """
            CREATE TABLE accounts (id int PRIMARY KEY, owner text NOT NULL, balance numeric);
            INSERT INTO accounts SELECT g, 'owner ' || g, g * 1.5 FROM generate_series(1, 2000) g;
            CREATE TABLE ledger (id bigint PRIMARY KEY, account int REFERENCES accounts,
                                 memo text, blob bytea);
            INSERT INTO ledger SELECT g, 1 + g % 2000, md5(g::text),
                   decode(md5((g * 31)::text), 'hex')
              FROM generate_series(1, 10000) g;
            CREATE INDEX ledger_account ON ledger (account);
            """
        )
    yield name
    drop_database(pg, name)


def drop_database(pg: LocalCluster, name: str) -> None:
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def create_database(pg: LocalCluster, name: str) -> str:
    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return name


def table_contents(dsn: str, table: str) -> tuple[int, str]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT count(*), md5(coalesce(string_agg(t::text, ',' ORDER BY t.id), '')) "
            f"FROM {table} t"
        ).fetchone()


@pytest.fixture
def age_key(workdir: Path) -> tuple[Path, str]:
    """An age identity file and its recipient."""
    text, recipient = generate_identity()
    path = workdir / "age.key"
    path.write_text(text)
    return path, recipient


def write_config(
    workdir: Path,
    dsn: str,
    databases: list[str] | None = None,
    recipient: str | None = None,
    identity_file: Path | None = None,
    cluster: str = "main",
    rpo_seconds: int | None = None,
) -> Path:
    repo = workdir / "repo"
    repo.mkdir(exist_ok=True)
    hand_over(repo)
    lines = [f"repository: {repo}", "clusters:", f"  {cluster}:", f'    dsn: "{dsn}"']
    if databases:
        lines.append(f"    databases: [{', '.join(databases)}]")
    if rpo_seconds:
        lines.append(f"    rpo_seconds: {rpo_seconds}")
    if recipient:
        lines += ["encryption:", f"  recipients: [{recipient}]"]
        if identity_file:
            lines.append(f"  identity_file: {identity_file}")
    path = workdir / "pgbackup.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def archiving_settings(config_path: Path) -> dict[str, str]:
    """postgresql.conf settings that archive through `pgbackup wal-push`."""
    from pg_backup_assets.core.walarchive import archiving_settings as settings

    # wal_keep_size: keep pg_wal copies to compare the archive with.
    return {**settings(config_path), "wal_keep_size": "'1GB'"}


@pytest.fixture
def archiving(workdir: Path) -> Iterator[tuple[LocalCluster, Path]]:
    """A started server whose archive_command is `pgbackup wal-push` into workdir/repo."""
    cluster = LocalCluster(workdir / "pg")
    config = write_config(workdir, cluster.dsn(), ["postgres"], rpo_seconds=300)
    try:
        cluster.init(archiving_settings(config), fast=True).start()
        yield cluster, config
    finally:
        cluster.stop()
