"""Asynchronous archiving (``archive: {async: true}``) on real PostgreSQL 15 servers: the
same promise as synchronous wal-push (exit 0 only once *this* segment is durable), a
background pusher that pushes ahead, and failures reported by the call they belong to.

Besides running servers, some tests call ``wal-push`` the way PostgreSQL's archiver does
(as the server's OS user, in a data directory, with ``pg_wal/<name>`` and its ``.ready``
file) on real segments copied from a server, to reach states a server rarely shows."""

from __future__ import annotations

import os
import random
import re
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest

from pg_backup_assets.core.config import load_config
from pg_backup_assets.core.postgres.local_cluster import (
    LocalCluster,
    as_server_user,
    hand_over_tree,
)
from pg_backup_assets.core.storage.repository import Repository
from pg_backup_assets.core.wal.archive import find, list_archive, read_checked
from pg_backup_assets.core.wal.status import inspect_archive
from tests.conftest import archiving_settings, write_config
from tests.faults.helpers import wait_until
from tests.integration.test_cli import BIN, pgbackup
from tests.integration.test_wal_archive import pgbench, sql

ASYNC = "archive: {async: true, parallel: 2}\n"


@pytest.fixture
def async_archiving(workdir):
    """A started server whose archive_command is `pgbackup wal-push` in async mode."""
    cluster = LocalCluster(workdir / "pg")
    config = write_config(workdir, cluster.dsn(), ["postgres"], rpo_seconds=300, extra=ASYNC)
    try:
        cluster.init(archiving_settings(config), fast=True).start()
        yield cluster, config
    finally:
        cluster.stop()


def spool_of(config: Path) -> Path:
    return Path(load_config(config).archive.spool(load_config(config).repository, "main"))


def repo_of(config: Path) -> Repository:
    return Repository.from_config(load_config(config))


def real_segments(cluster: LocalCluster, n: int) -> dict[str, bytes]:
    """``n`` completed segments of a running server, name -> content."""
    out = {}
    for i in range(n):
        sql(cluster, f"CREATE TABLE seg{i} AS SELECT g FROM generate_series(1, 20000) g")
        name = cluster.switch_wal_and_wait_archived()
        out[name] = (cluster.data / "pg_wal" / name).read_bytes()
    return out


def data_dir(base: Path, files: dict[str, bytes]) -> Path:
    """A data directory as the archiver sees it: pg_wal/<name> and its .ready file."""
    status = base / "pg_wal" / "archive_status"
    status.mkdir(parents=True)
    for name, content in files.items():
        (base / "pg_wal" / name).write_bytes(content)
        (status / f"{name}.ready").touch()
    hand_over_tree(base)
    return base


def async_config(workdir: Path, name: str, repo: str = "repo-async", extra: str = "") -> Path:
    (workdir / repo).mkdir(exist_ok=True)
    hand_over_tree(workdir / repo)
    path = workdir / name
    path.write_text(
        f"repository: {workdir / repo}\nclusters: {{main: {{dsn: 'host=x'}}}}\n"
        f"archive: {{async: true, parallel: 2{extra}}}\n"
    )
    return path


def archive_call(config: Path, data: Path, name: str) -> subprocess.CompletedProcess[str]:
    """`wal-push %p` as PostgreSQL runs it: its OS user, the data directory, pg_wal/<name>."""
    args = [str(BIN / "pgbackup"), "--config", str(config), "wal-push", f"pg_wal/{name}"]
    return as_server_user(args, check=False, cwd=data)


def archived_content(repo: Repository, name: str) -> bytes:
    [obj] = find(repo, "main", name)

    class Sink:
        data = bytearray()

        def write(self, b):  # noqa: ANN001, ANN202
            self.data += b
            return len(b)

        def flush(self) -> None:
            pass

    sink = Sink()
    read_checked(repo, obj, sink)
    return bytes(sink.data)


def assert_archive_matches_pg_wal(cluster: LocalCluster, config: Path) -> int:
    """Contiguous, and every segment still in pg_wal archived byte for byte; the count."""
    repo = repo_of(config)
    status = inspect_archive(repo, load_config(config).cluster("main"))
    assert status.contiguous.passed, status.contiguous.message
    compared = 0
    for obj in status.listing.segments:
        original = cluster.data / "pg_wal" / obj.name
        if original.exists():
            assert archived_content(repo, obj.name) == original.read_bytes(), obj.name
            compared += 1
    return compared


def test_a_call_returns_once_its_segment_is_durable_and_the_pusher_pushes_ahead(archiving, workdir):
    cluster, _ = archiving
    segments = real_segments(cluster, 3)
    first, *rest = segments
    data = data_dir(workdir / "data", segments)
    config = async_config(workdir, "async.yaml")
    repo = repo_of(config)

    proc = archive_call(config, data, first)
    assert proc.returncode == 0, proc.stderr
    assert archived_content(repo, first) == segments[first]
    spool = spool_of(config)
    # The pusher went on with what else was ready, without being asked.
    wait_until("the pusher to push ahead", lambda: all(find(repo, "main", n) for n in rest))
    wait_until("its statuses", lambda: all((spool / f"{n}.ok").exists() for n in rest))
    assert "started for cluster main" in (spool / "pusher.log").read_text()

    # The call for a segment that is done: durable, and nearly nothing imported for it.
    probe = (
        "import sys\n"
        "from pg_backup_assets.cli import main\n"
        f"rc = main(['--config', {str(config)!r}, 'wal-push', 'pg_wal/{rest[0]}'])\n"
        "print(rc, ' '.join(sorted(sys.modules)))\n"
    )
    proc = as_server_user([sys.executable, "-c", probe], check=False, cwd=data)
    rc, modules = proc.stdout.split(" ", 1)
    assert rc == "0", proc.stderr
    heavy = {
        "yaml",
        "zstandard",
        "pyrage",
        "hashlib",
        "dataclasses",
        "typing",
        "pathlib",
        "json",
        "re",
        "argparse",
        "subprocess",
        "threading",
        "pg_backup_assets.core.config",
        "pg_backup_assets.core.storage.codec",
        "pg_backup_assets.core.wal.archive",
    }
    assert heavy & set(modules.split()) == set()
    for name in rest:
        assert archived_content(repo, name) == segments[name]


def test_the_printed_archive_command_answers_a_pushed_segment_in_the_shell(archiving, workdir):
    """`pgbackup archive-command`'s line, run as PostgreSQL runs it (sh -c, its OS user, in
    the data directory, %p/%f/%% filled in) with its wal-push replaced by `exit 9`,
    answers 0 for segments the real pusher made durable, and leaves a segment it did not
    push (or one replaced since) to wal-push."""
    cluster, _ = archiving
    segments = real_segments(cluster, 4)
    first, second, third, fourth = segments
    data = data_dir(workdir / "data", {first: segments[first], second: segments[second]})
    # A live "server" (this process): the pusher stays for more work instead of leaving.
    (data / "postmaster.pid").write_text(f"{os.getpid()}\n")
    config = async_config(workdir, "async.yaml")
    printed = pgbackup("archive-command", config=config)
    assert printed.returncode == 0, printed.stderr
    line = printed.stdout.strip()
    assert line.startswith("archive_command = '") and line.endswith(" wal-push %p'")
    command = line.split(" = ", 1)[1][1:-1].replace("''", "'")
    assert command.startswith("sh ") and "archive_done.sh" in command
    shell_only = command.split(" %p %f ", 1)[0] + " %p %f sh -c 'exit 9'"

    assert archive_call(config, data, first).returncode == 0  # the pusher pushes both
    spool = spool_of(config)
    wait_until("the pusher's statuses", lambda: (spool / f"{second}.ok").exists())

    def run(name: str) -> int:
        fill = {"%p": f"pg_wal/{name}", "%f": name, "%%": "%"}
        command = re.sub("%[pf%]", lambda m: fill[m.group()], shell_only)
        return as_server_user(["sh", "-c", command], check=False, cwd=data).returncode

    assert run(first) == 0 and run(second) == 0
    # A segment marked ready while the pusher runs: the shell pokes the pusher and sleeps
    # in a read of its done FIFO until the push is finished (no wal-push: exit 0).
    assert (spool / "done").is_fifo()
    (data / "pg_wal" / fourth).write_bytes(segments[fourth])
    (data / "pg_wal" / "archive_status" / f"{fourth}.ready").touch()
    hand_over_tree(data)
    assert run(fourth) == 0
    assert (spool / f"{fourth}.ok").exists()
    (data / "pg_wal" / third).write_bytes(segments[third])
    assert run(third) == 9  # never pushed: wal-push's to decide
    (data / "pg_wal" / second).unlink()
    (data / "pg_wal" / second).write_bytes(segments[second])  # the same bytes, a new file
    assert run(second) == 9


def test_a_status_is_trusted_only_for_the_same_file_and_a_present_object(archiving, workdir):
    cluster, _ = archiving
    segments = real_segments(cluster, 2)
    first, second = segments
    data = data_dir(workdir / "data", segments)
    config = async_config(workdir, "async.yaml")
    repo = repo_of(config)
    assert archive_call(config, data, first).returncode == 0
    wait_until("the second status", lambda: (spool_of(config) / f"{second}.ok").exists())

    # The object vanished after its status was written: the call pushes it again.
    [obj] = find(repo, "main", second)
    repo.storage.delete(obj.key)
    proc = archive_call(config, data, second)
    assert proc.returncode == 0, proc.stderr
    assert archived_content(repo, second) == segments[second]

    # Another file under the same name (a new inode, as after a re-initialised cluster):
    # the status is not its own, so the call pushes it itself, and the rules of push hold.
    wal = data / "pg_wal" / second
    wal.unlink()
    changed = bytearray(segments[second])
    changed[8192:8200] = b"\x01changed"
    wal.write_bytes(changed)
    hand_over_tree(data)
    proc = archive_call(config, data, second)
    assert proc.returncode == 1
    assert "different content" in proc.stderr and proc.stderr.count("\n") == 1
    assert archived_content(repo, second) == segments[second]


def test_different_content_under_an_archived_name_is_refused_by_the_pusher(archiving, workdir):
    cluster, _ = archiving
    segments = real_segments(cluster, 1)
    [name] = segments
    config = async_config(workdir, "async.yaml")
    assert archive_call(config, data_dir(workdir / "one", segments), name).returncode == 0
    repo = repo_of(config)
    [before] = find(repo, "main", name)

    # The same repository, its own spool: the pusher, not the call, meets the conflict.
    (workdir / "spool2").mkdir()
    hand_over_tree(workdir / "spool2")
    other = async_config(workdir, "other.yaml", extra=f", spool_dir: {workdir / 'spool2'}")
    changed = bytearray(segments[name])
    changed[8192:8200] = b"\x01changed"
    data = data_dir(workdir / "two", {name: bytes(changed)})
    for _attempt in range(2):  # PostgreSQL tries again: the retry is refused again
        proc = archive_call(other, data, name)
        assert proc.returncode == 1
        assert name in proc.stderr and "different content" in proc.stderr
        assert "background pusher" in proc.stderr and proc.stderr.count("\n") == 1
        assert (workdir / "spool2" / "main" / f"{name}.error").exists()
        assert find(repo, "main", name) == [before]
    # The same content again: a no-op that succeeds.
    same = data_dir(workdir / "three", segments)
    assert archive_call(other, same, name).returncode == 0
    assert find(repo, "main", name) == [before]


def test_a_repository_error_reaches_pg_stat_archiver_for_its_segment(async_archiving):
    cluster, config = async_archiving
    sql(cluster, "CREATE TABLE t AS SELECT g FROM generate_series(1, 100000) g")
    cluster.switch_wal_and_wait_archived()
    wal_dir = load_config(config).repository / "main" / "wal"
    modes = {p: p.stat().st_mode for p in [wal_dir, *wal_dir.iterdir()]}
    for p in modes:
        p.chmod(stat.S_IMODE(modes[p]) & ~0o222)
    try:
        sql(cluster, "INSERT INTO t SELECT g FROM generate_series(1, 100000) g")
        stuck = sql(cluster, "SELECT pg_walfile_name(pg_current_wal_insert_lsn())")[0][0]
        sql(cluster, "SELECT pg_switch_wal()")
        failed = wait_until(
            "archive_command to fail",
            lambda: sql(
                cluster, "SELECT last_failed_wal FROM pg_stat_archiver WHERE failed_count > 0"
            ),
        )
        assert failed[0][0] == stuck
        assert (cluster.data / "pg_wal" / "archive_status" / f"{stuck}.ready").exists()
        log = cluster.logfile.read_text()
        assert f"pgbackup: error: cannot write main/wal/{stuck[:16]}/{stuck}" in log
        assert stuck not in {o.name for o in list_archive(repo_of(config), "main").segments}
    finally:
        for p, mode in modes.items():
            p.chmod(stat.S_IMODE(mode))
    last = cluster.switch_wal_and_wait_archived(timeout=120)
    assert stuck in {o.name for o in list_archive(repo_of(config), "main").segments}
    assert assert_archive_matches_pg_wal(cluster, config) >= 3
    assert sql(cluster, "SELECT last_archived_wal FROM pg_stat_archiver")[0][0] == last


def test_switching_async_on_and_off_on_a_running_cluster(archiving):
    cluster, config = archiving
    sync_text = config.read_text()
    spool = Path(load_config(config).repository) / ".spool" / "main"

    def write_and_switch(rounds: int) -> None:
        for _ in range(rounds):
            sql(cluster, "CREATE TABLE IF NOT EXISTS t (g int)")
            sql(cluster, "INSERT INTO t SELECT g FROM generate_series(1, 50000) g")
            cluster.switch_wal_and_wait_archived()

    write_and_switch(2)
    assert not spool.exists()  # synchronous: no pusher, no spool
    config.write_text(sync_text + ASYNC)  # no restart, no reload: the next call sees it
    write_and_switch(3)
    assert "started for cluster main" in (spool / "pusher.log").read_text()
    config.write_text(sync_text)
    write_and_switch(2)
    wait_until("the pusher to stop", lambda: "changed" in (spool / "pusher.log").read_text())
    config.write_text(sync_text + ASYNC)
    write_and_switch(2)
    assert assert_archive_matches_pg_wal(cluster, config) >= 9


@pytest.mark.slow
def test_every_segment_under_pgbench_is_archived_byte_identical(async_archiving):
    cluster, config = async_archiving
    pgbench(cluster, "-i", "-s", "20", "-q")
    pgbench(cluster, "-c", "4", "-j", "2", "-t", "5000", "-n")
    last = cluster.switch_wal_and_wait_archived(timeout=120)
    assert assert_archive_matches_pg_wal(cluster, config) >= 15
    status = inspect_archive(repo_of(config), load_config(config).cluster("main"))
    assert status.gaps.first == "000000010000000000000001" and status.gaps.last == last
    assert status.pending_segments == 0
    assert sql(cluster, "SELECT failed_count FROM pg_stat_archiver")[0][0] == 0
    # Statuses of segments PostgreSQL is done with are removed: the spool does not grow.
    spool = spool_of(config)
    wait_until(
        "the spool to be emptied",
        lambda: len(list(spool.glob("*.ok"))) <= 1 + len(list(spool.glob("*.error"))),
    )


def running_pusher(spool: Path, config: Path) -> int | None:
    """The pid in ``pusher.lock`` when that process is the pusher of ``config``. The file keeps
    a dead pusher's pid: without the check a SIGKILL could reach whatever reused it."""
    try:
        pid = int((spool / "pusher.lock").read_text().split()[0])
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError, IndexError):
        return None
    ours = b"pg_backup_assets.core.wal.pusher" in args and str(config).encode() in args
    return pid if ours else None


@pytest.mark.slow
def test_killing_the_pusher_mid_segment_loses_nothing(async_archiving):
    cluster, config = async_archiving
    sql(cluster, "CREATE EXTENSION pgcrypto")
    spool = spool_of(config)
    stop = threading.Event()

    def write() -> None:  # incompressible WAL, segment after segment
        with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
            conn.execute("CREATE TABLE r (b bytea)")
            while not stop.is_set():
                conn.execute(
                    "INSERT INTO r SELECT gen_random_bytes(1000) FROM generate_series(1, 8000)"
                )

    # A status file a pusher was killed writing, long ago: the next pusher removes it.
    spool.mkdir(parents=True, exist_ok=True)
    (spool / "000000010000000000000099.ok.tmp-99999").write_text("half")
    hand_over_tree(spool.parent)
    writer = threading.Thread(target=write)
    writer.start()
    killed = 0
    try:
        rnd = random.Random(20261129)
        for _ in range(6):
            time.sleep(rnd.uniform(0.3, 1.5))
            pid = running_pusher(spool, config)
            if pid is None:
                continue  # between two pushers
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                continue  # it stopped meanwhile
    finally:
        stop.set()
        writer.join()
    assert killed >= 3
    last = cluster.switch_wal_and_wait_archived(timeout=180)
    assert assert_archive_matches_pg_wal(cluster, config) >= 10
    assert pgbackup("verify", config=config).returncode == 0
    assert sql(cluster, "SELECT last_archived_wal FROM pg_stat_archiver")[0][0] == last
    assert (spool / "pusher.log").read_text().count("started for cluster main") > killed
    assert not list(spool.glob("*.tmp-*")), sorted(p.name for p in spool.iterdir())
    assert "unfinished status file" in (spool / "pusher.log").read_text()
