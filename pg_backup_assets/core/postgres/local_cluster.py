"""Throwaway local PostgreSQL servers: the demo cluster, test fixtures, restore rehearsals.

PostgreSQL refuses to run as root, so when this process is root every server command
runs as the ``postgres`` OS user, and the folders it needs are handed to that user.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from pg_backup_assets.core.errors import CommandError, PgBackupError
from pg_backup_assets.core.postgres.client import bindir

SERVER_USER = "postgres"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _server_account() -> pwd.struct_passwd | None:
    """The OS account servers run as: ``postgres`` when we are root, else ourselves."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SERVER_USER)
    except KeyError:
        raise PgBackupError(
            "running as root, but there is no 'postgres' OS user to run PostgreSQL as "
            "(PostgreSQL refuses root): install Debian's postgresql package or run as a "
            "normal user"
        ) from None


def hand_over(path: Path) -> None:
    """Make ``path`` (a folder we created) owned by the server account, when there is one."""
    account = _server_account()
    if account is not None:
        os.lchown(path, account.pw_uid, account.pw_gid)


def hand_over_tree(path: Path) -> None:
    """``hand_over`` for a folder and everything in it."""
    if _server_account() is not None:
        for p in [path, *path.rglob("*")]:
            hand_over(p)


def as_server_user(
    args: list[str],
    env: Mapping[str, str] | None = None,
    check: bool = True,
    timeout: float = 120,
    cwd: str | os.PathLike[str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a server-side command (initdb, pg_ctl, ...) as the server account."""
    account = _server_account()
    kwargs: dict[str, object] = {}
    full_env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        **(env or {}),
    }
    if account is not None:
        kwargs = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
        full_env["HOME"] = account.pw_dir
    proc = subprocess.run(
        args,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=cwd,
        **kwargs,
    )
    if check and proc.returncode != 0:
        raise CommandError(
            f"{Path(args[0]).name} failed (exit {proc.returncode}): "
            f"{(proc.stderr or proc.stdout).strip()[-2000:]}"
        )
    return proc


# A Unix socket's path (sun_path) holds 107 bytes on Linux; the server adds ".s.PGSQL.<port>".
SOCKET_DIR_MAX = 107 - len("/.s.PGSQL.65535")


def socket_dir(base: Path) -> Path:
    """``base``/sock, or, when that is too long for a socket path (a repository deep in
    the tree), a short folder of its own in the temporary directory, the same for the same
    ``base``."""
    sock = base / "sock"
    if len(os.fsencode(sock)) <= SOCKET_DIR_MAX:
        return sock
    digest = hashlib.sha256(os.fsencode(base.absolute())).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"pgba-sock-{digest}"


class LocalCluster:
    """A PostgreSQL cluster in ``base`` (data/, sock/, server.log) listening on loopback."""

    def __init__(
        self,
        base: str | os.PathLike[str],
        major: int = 15,
        port: int | None = None,
        data: str | os.PathLike[str] | None = None,
    ):
        self.base = Path(base)
        self.data = Path(data) if data else self.base / "data"
        self.sockdir = socket_dir(self.base)
        self.logfile = self.base / "server.log"
        self.bindir = bindir(major)
        self.port = port or free_port()

    # -- lifecycle -------------------------------------------------------------------------
    def init(self, settings: Mapping[str, str] | None = None, fast: bool = False) -> LocalCluster:
        """initdb with data checksums; ``settings`` go into postgresql.conf."""
        if (self.data / "PG_VERSION").exists():
            raise PgBackupError(f"{self.data} already holds a cluster; remove it first")
        self._prepare()
        args = [
            str(self.bindir / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth=trust",
            "--data-checksums",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
        ]
        if fast:
            args.append("--no-sync")
        as_server_user(args)
        self.configure(settings or {})
        return self

    def adopt(self, settings: Mapping[str, str] | None = None, owned: bool = False) -> LocalCluster:
        """Run a data directory that already exists (a restored backup, a copy) from here;
        ``owned``: the server's OS user already owns every file in it."""
        if not (self.data / "PG_VERSION").exists():
            raise PgBackupError(f"{self.data} holds no PostgreSQL data directory")
        self._prepare()
        if not owned:
            hand_over_tree(self.data)
        self.data.chmod(0o700)
        self.configure(settings or {})
        return self

    def _prepare(self) -> None:
        for d in (self.base, self.sockdir):
            d.mkdir(parents=True, exist_ok=True)
        self.base.chmod(0o755)
        hand_over(self.base)
        hand_over(self.sockdir)
        if self.logfile.exists():
            hand_over(self.logfile)

    def readable_by_server(self, path: Path) -> bool:
        """Can the server's OS account read ``path`` (e.g. restore_command's config)?"""
        return as_server_user(["test", "-r", str(path)], check=False).returncode == 0

    def unreadable_folder(self, folders: list[Path]) -> Path | None:
        """The first of ``folders`` the server's OS account cannot list, if any (one spawn)."""
        if not folders:
            return None
        script = 'for p; do [ -r "$p" ] && [ -x "$p" ] || { printf %s "$p"; exit 1; }; done'
        proc = as_server_user(["sh", "-c", script, "sh", *map(str, folders)], check=False)
        return Path(proc.stdout) if proc.returncode else None

    def configure(self, settings: Mapping[str, str]) -> None:
        """Append settings to postgresql.conf (later lines win); takes effect at (re)start."""
        base = {
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.sockdir}'",
            "port": str(self.port),
        }
        lines = [f"{k} = {v}" for k, v in {**base, **settings}.items()]
        conf = self.data / "postgresql.conf"
        with open(conf, "a") as f:
            f.write("\n# pg-backup-assets\n" + "\n".join(lines) + "\n")

    def start(self, timeout: int = 60, env: Mapping[str, str] | None = None) -> LocalCluster:
        """Start and wait until it accepts connections; ``env`` reaches its children
        (archive_command, restore_command)."""
        if not self.sockdir.is_dir():  # one in the temporary directory goes at stop()
            self.sockdir.mkdir(parents=True)
            hand_over(self.sockdir)
        try:
            as_server_user(
                [
                    str(self.bindir / "pg_ctl"),
                    "-D",
                    str(self.data),
                    "-l",
                    str(self.logfile),
                    "-w",
                    "-t",
                    str(timeout),
                    "-o",
                    f"-p {self.port}",
                    "start",
                ],
                env=env,
                timeout=timeout + 10,
            )
        except CommandError as exc:
            raise CommandError(f"{exc}\nserver log ({self.logfile}):\n{self.log_tail()}") from None
        return self

    def stop(self, mode: str = "fast") -> None:
        if not self.running():
            return
        proc = as_server_user(
            [str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"],
            check=False,
        )
        if proc.returncode != 0 and self.running():
            as_server_user(
                [str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"],
                check=False,
            )
        if not self.sockdir.is_relative_to(self.base):
            with contextlib.suppress(OSError):
                self.sockdir.rmdir()  # empty once the server is down

    def running(self) -> bool:
        pid_file = self.data / "postmaster.pid"
        if not pid_file.exists():
            return False
        try:
            pid = int(pid_file.read_text().split()[0])
            os.kill(pid, 0)
        except (ValueError, IndexError, ProcessLookupError, FileNotFoundError):
            return False
        except PermissionError:
            return True
        return True

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop_command(self) -> str:
        """How an operator stops this server from a shell."""
        cmd = f"{self.bindir / 'pg_ctl'} -D {self.data} stop"
        return f"runuser -u {SERVER_USER} -- {cmd}" if _server_account() else cmd

    # -- access ----------------------------------------------------------------------------
    def dsn(self, dbname: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={dbname}"

    def switch_wal_and_wait_archived(self, timeout: float = 60) -> str:
        """Close the current WAL segment and wait until archive_command has pushed it."""
        import psycopg

        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            # A record first: switching a segment nothing was written to does nothing, and
            # right after a switch the write position still names the segment before it.
            conn.execute("SELECT pg_logical_emit_message(false, 'pgbackup', 'switch')")
            segment = conn.execute(
                "SELECT pg_walfile_name(pg_current_wal_insert_lsn())"
            ).fetchone()[0]
            conn.execute("SELECT pg_switch_wal()")
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                last = conn.execute("SELECT last_archived_wal FROM pg_stat_archiver").fetchone()[0]
                # Compare log/segment only: a switch segment is archived on the new timeline.
                if last and last[8:] >= segment[8:]:
                    return segment
                time.sleep(0.1)
        raise PgBackupError(
            f"{segment} was not archived within {timeout:.0f}s:\n{self.log_tail(10)}"
        )

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = subprocess.run(
                [str(self.bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
                capture_output=True,
                check=False,
            )
            if proc.returncode == 0:
                return
            time.sleep(0.2)
        raise PgBackupError(f"server on port {self.port} not ready after {timeout}s")


@contextlib.contextmanager
def throwaway_cluster(
    base: str | os.PathLike[str], settings: Mapping[str, str] | None = None, fast: bool = True
) -> Iterator[LocalCluster]:
    """A started cluster that is stopped (and its folder removed) however the block exits."""
    cluster = LocalCluster(base)
    try:
        cluster.init(settings, fast=fast).start()
        yield cluster
    finally:
        cluster.destroy()
