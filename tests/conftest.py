"""Shared fixtures: real PostgreSQL 15 servers on loopback, stopped whatever happens."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psycopg
import pytest

from pg_backup_assets.core.postgres.local_cluster import LocalCluster, hand_over
from pg_backup_assets.core.storage.codec import generate_identity
from pg_backup_assets.core.tools import stop

REPO_ROOT = Path(__file__).resolve().parents[1]


OWNER = "pytest.pid"  # which test run made a folder: only a dead run's leftovers are swept


def _reachable_tmpdir(prefix: str) -> Path:
    # pytest's tmp_path lives in a 0700 folder the postgres OS user cannot enter.
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    (path / OWNER).write_text(str(os.getpid()))
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = _reachable_tmpdir("pgba-test-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def pytest_sessionstart(session: pytest.Session) -> None:
    """Stop servers a killed earlier run left behind (fixtures stop their own normally).

    Only folders whose test run is gone: a run going on beside this one keeps its servers.
    """
    for owner in Path(tempfile.gettempdir()).glob(f"pgba-*/{OWNER}"):
        try:
            pid = int(owner.read_text())
        except (OSError, ValueError):
            continue
        if _alive(pid):
            continue
        for pid_file in owner.parent.glob("*/data/postmaster.pid"):
            LocalCluster(pid_file.parents[1]).stop(mode="immediate")
        shutil.rmtree(owner.parent, ignore_errors=True)


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


def encryption_yaml(recipient: str, identity_file: object) -> str:
    """The config's ``encryption`` line, to append: age to ``recipient``, and the identity
    file restores and rehearsals decrypt with."""
    return f"encryption: {{recipients: [{recipient}], identity_file: {identity_file}}}\n"


def write_config(
    workdir: Path,
    dsn: str,
    databases: list[str] | None = None,
    recipient: str | None = None,
    identity_file: Path | None = None,
    cluster: str = "main",
    rpo_seconds: int | None = None,
    extra: str = "",
    start_date: str | None = "2026-11-01",
) -> Path:
    """A config for one cluster. ``start_date``: the first daily partition (tests back up
    fixed days such as 2026-11-26; a deployment's default is its first backup's day)."""
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
    if start_date:
        lines += ["schedules:", f"  start_date: '{start_date}'"]
    path = workdir / "pgbackup.yaml"
    path.write_text("\n".join(lines) + "\n" + extra)
    return path


def archiving_settings(config_path: Path) -> dict[str, str]:
    """postgresql.conf settings that archive through `pgbackup wal-push`."""
    from pg_backup_assets.core.wal.archive import archiving_settings as settings

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


class TcpProxy:
    """A loopback TCP proxy that can be cut: the S3 endpoint "going away" mid-upload."""

    def __init__(self, target_port: int):
        import socket
        import threading

        self.target_port = target_port
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.up = True
        self.conns: list = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket
        import threading

        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.up:
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            with self._lock:
                self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a, b) -> None:  # noqa: ANN001
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.close()

    def cut(self) -> None:
        """Refuse new connections and reset the open ones."""
        import socket

        self.up = False
        with self._lock:
            for c in self.conns:
                with contextlib.suppress(OSError):
                    c.shutdown(socket.SHUT_RDWR)
            self.conns.clear()

    def restore(self) -> None:
        self.up = True

    def close(self) -> None:
        self.cut()
        self.listener.close()


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real S3 endpoint over HTTP: moto's server, as a separate process on loopback."""
    from pg_backup_assets.local_s3 import local_s3_endpoint

    with local_s3_endpoint() as url:
        yield url


def tick(defs, sensor_name: str, instance, cursor: str | None = None):  # noqa: ANN001, ANN201
    """One sensor tick as the daemon runs it: ``SensorDefinition.evaluate_tick`` (which
    resolves run requests against the sensor's targets), then the events it emitted are
    recorded in the instance. Returns the tick's SensorExecutionData."""
    import dagster as dg

    sensor = defs.resolve_sensor_def(sensor_name)
    with dg.build_sensor_context(
        instance=instance,
        resources=defs.resources,
        repository_def=defs.get_repository_def(),
        cursor=cursor,
    ) as context:
        data = sensor.evaluate_tick(context)
    for event in data.asset_events:
        instance.report_runless_asset_event(event)
    return data


class Webhook:
    """An alert webhook on loopback: answers ``status``, records every JSON body posted."""

    def __init__(self, status: int = 204):
        self.status, self.bodies = status, []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers["Content-Length"])
                hook.bodies.append(json.loads(self.rfile.read(length)))
                self.send_response(hook.status)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/T0/s3cr3t"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def make_bucket(endpoint: str, object_lock: bool = False) -> str:
    from pg_backup_assets.core.storage.s3 import s3_client

    name = f"b-{uuid.uuid4().hex[:12]}"
    client = s3_client(endpoint, "us-east-1")
    client.create_bucket(Bucket=name, ObjectLockEnabledForBucket=object_lock)
    return name


def stop_session(proc: subprocess.Popen, timeout: float) -> None:
    """Stop a process started with ``start_new_session=True`` (SIGTERM, then SIGKILL), and
    then whatever it left in its session: a daemon's code server, a run's worker."""
    import signal

    stop(proc, timeout)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
