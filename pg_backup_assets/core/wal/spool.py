"""``wal-push`` as archive_command runs it, and the spool of asynchronous archiving.

With ``archive: {async: true}`` a call does not push its segment itself: a background
pusher (``core/wal/pusher.py``), started by the first call that needs one and gone when
idle, pushes every file PostgreSQL has marked ready (``pg_wal/archive_status/*.ready``)
with ``parallel`` workers, through the same ``push()`` as a synchronous call. A call exits
0 only once *its* file is durable in the repository, as in synchronous mode. What the
pusher and the calls tell each other lives in ``<spool_dir>/<cluster>/``::

    pusher.lock       flock held by the running pusher (the kernel drops it when it dies)
    pusher.log        what the pushers said: start, stop, every failed push
    wake              a FIFO: a waiting call pokes the pusher through it
    done              a FIFO the pusher holds open and writes a byte into after each push
                      it finishes: the shell side of a call (archive_done.sh) sleeps in a
                      read of it while it waits (end of file: the pusher is gone)
    <name>.ok         the file is durable: its object's key and stored size, and the
                      identity (device, inode, size, mtime, ctime) of the file pushed
    <name>.error      the push failed: the reason, one line

A call trusts ``<name>.ok`` only when the file it was asked to archive is the very file
that was pushed and the object is in the repository with its recorded size; on any doubt
it pushes the file itself (a no-op when it is archived already). An ``.error`` found when
a call starts is from an earlier attempt: the call removes it, has the pusher try again,
and reports the outcome of that attempt.

This module is on archive_command's path: a call whose file is done imports the standard
library's basics only (no YAML, dataclasses, codecs or pathlib).
"""

import os
import sys
import time

WAIT_S = 60.0  # how long a call waits for its file (pgBackRest's archive-timeout)
CHECK_PUSHER_S = 0.1  # how often a waiting call makes sure a pusher runs
POLL_MAX_S = 0.004  # the longest sleep between two looks at the spool
LOCK = "pusher.lock"
LOG = "pusher.log"
WAKE = "wake"
DONE = "done"
LOG_MAX_BYTES = 1 << 20


def wal_push(settings: object, cluster: str, path: str) -> int:
    """archive_command: archive WAL file ``path``; 0 once it is durable."""
    if settings.asynchronous:
        outcome = call(settings, cluster, path)
        if outcome is not None:
            return outcome
    push_here(settings, cluster, path)
    return 0


def push_here(settings: object, cluster: str, path: str) -> object:
    """Push ``path`` in this process (synchronous mode, and a call in doubt)."""
    from pg_backup_assets.core.wal.archive import push

    return push(repository(settings), cluster, path)


def repository(settings: object) -> object:
    """The local repository as ``settings`` (``WalSettings``) describe it."""
    from pg_backup_assets.core.storage.codec import Codec
    from pg_backup_assets.core.storage.local import LocalStorage
    from pg_backup_assets.core.storage.repository import Repository

    storage = LocalStorage(settings.repository, settings.files, settings.folders, settings.group)
    identity = None
    if settings.identity_file:
        from pathlib import Path  # Repository imports it anyway

        identity = Path(settings.identity_file)
    return Repository(storage, Codec(recipients=settings.recipients), identity)


def call(settings: object, cluster: str, path: str) -> int | None:
    """The asynchronous call for ``path``: 0 once the pusher made it durable; None when
    this call must push it itself (not in a data directory's ``pg_wal``, run as root,
    doubt about a status, no pusher could be started). Raises PgBackupError with the
    pusher's reason when its push failed."""
    wal_dir = os.path.dirname(os.path.abspath(path))
    name = os.path.basename(path)
    if os.geteuid() == 0 or not os.path.isdir(os.path.join(wal_dir, "archive_status")):
        return None  # not PostgreSQL's archiver: nothing for a pusher to scan
    try:
        ident = identity(os.stat(path))
    except OSError:
        return None  # the synchronous push says what is wrong with it
    spool = settings.spool(cluster)
    deadline = time.monotonic() + WAIT_S
    first, next_check, delay = True, 0.0, 0.0005
    while True:
        status = read_status(spool, name)
        if status is not None:
            kind, text = status
            if kind == "ok":
                if is_durable(settings.repository, text, ident):
                    return 0
                discard(spool, name)
                return None  # doubt: push it here (a no-op when it is archived)
            pushed_ident, _, reason = text.partition("\n")
            if not first and pushed_ident == ident:
                # Left in place: the pusher does not try this file again until a call asks.
                from pg_backup_assets.core.errors import PgBackupError

                raise PgBackupError(f"{reason} (pushed by the background pusher: {spool})")
            # From an attempt before this call, or about another file of that name: have
            # this one tried (again).
            discard(spool, name)
        if not os.path.exists(os.path.join(wal_dir, "archive_status", f"{name}.ready")):
            return None  # not marked ready: no pusher will push it
        now = time.monotonic()
        if now >= next_check:
            started = ensure_pusher(settings, cluster, spool, wal_dir)
            if isinstance(started, str):
                print(f"pgbackup: warning: {started}; pushing {name} in this call", file=sys.stderr)
                return None
            if not started and pusher_dir(spool) not in ("", wal_dir):
                return None  # the running pusher serves another data directory
            if first and not started:
                poke(spool)  # a running pusher may be idle: this file is new to it
            next_check = now + CHECK_PUSHER_S
        if now > deadline:
            from pg_backup_assets.core.errors import PgBackupError

            raise PgBackupError(
                f"wal-push: the background pusher did not push {name} within {WAIT_S:.0f}s; "
                f"see {os.path.join(spool, LOG)}"
            )
        first = False
        time.sleep(delay)
        delay = min(delay * 2, POLL_MAX_S)


def identity(st: os.stat_result) -> str:
    """What tells one file from another that took its name (a recycled segment, a
    re-initialised cluster): device, inode, size, mtime and ctime; written as GNU
    ``stat -c '%d %i %s %.9Y %.9Z'`` prints them, so that ``archive_done.sh`` can compare."""
    m, c = st.st_mtime_ns, st.st_ctime_ns
    return (
        f"{st.st_dev} {st.st_ino} {st.st_size} "
        f"{m // 10**9}.{m % 10**9:09d} {c // 10**9}.{c % 10**9:09d}"
    )


def done_check_command(spool: str, repository: str, fallback: str) -> str:
    """archive_command for asynchronous archiving: ``archive_done.sh`` (beside this module)
    answers, starting no interpreter, a call whose file the pusher has made durable (the
    check ``is_durable`` makes), waiting a while for a running pusher, and runs
    ``fallback`` (``pgbackup ... wal-push %p``) in every other case."""
    from pg_backup_assets.core.wal.archive import command_word  # not on a call's path

    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "archive_done.sh")
    args = (command_word(a) for a in (script, spool, repository))
    return "sh " + " ".join(args) + " %p %f " + fallback


def read_status(spool: str, name: str) -> tuple[str, str] | None:
    """("ok", text), ("error", text) or None."""
    for kind in ("ok", "error"):
        try:
            with open(os.path.join(spool, f"{name}.{kind}"), encoding="utf-8") as f:
                return kind, f.read().strip()
        except FileNotFoundError:
            continue
        except (OSError, ValueError):
            return "ok", ""  # unreadable: doubt
    return None


def is_durable(repository: str, text: str, ident: str) -> bool:
    """Does an ``.ok`` status vouch for this file: pushed as this very file, and its object
    still in the repository with the size it was written with?"""
    key, _, rest = text.partition(" ")
    stored, _, pushed_ident = rest.partition(" ")
    if not key or pushed_ident != ident or key.startswith("/") or ".." in key.split("/"):
        return False
    try:
        return os.stat(os.path.join(repository, key)).st_size == int(stored)
    except (OSError, ValueError):
        return False


def ok_text(key: str, stored_bytes: int, ident: str) -> str:
    return f"{key} {stored_bytes} {ident}"


def error_text(ident: str, reason: str) -> str:
    return f"{ident}\n{' '.join(reason.split())}"


def write_status(spool: str, name: str, kind: str, text: str) -> None:
    """Write ``<name>.<kind>`` whole (temporary name, rename) and remove the other kind.

    Not fsynced: an ``.ok`` is written only after the object is durable, so a status lost
    in a crash costs a re-push (a no-op), never a segment."""
    final = os.path.join(spool, f"{name}.{kind}")
    tmp = f"{final}.tmp-{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    with open(fd, "w", encoding="utf-8") as f:
        f.write(text + "\n")
    os.replace(tmp, final)
    discard(spool, name, "error" if kind == "ok" else "ok")


def pusher_dir(spool: str) -> str:
    """The pg_wal the running pusher serves, as it wrote into the lock ("" when unknown)."""
    try:
        with open(os.path.join(spool, LOCK), encoding="utf-8") as f:
            return f.read().strip().partition(" ")[2]
    except (OSError, ValueError):
        return ""


def discard(spool: str, name: str, *kinds: str) -> None:
    for kind in kinds or ("ok", "error"):
        try:
            os.unlink(os.path.join(spool, f"{name}.{kind}"))
        except FileNotFoundError:
            continue


def ensure_pusher(settings: object, cluster: str, spool: str, wal_dir: str) -> bool | str:
    """False when a pusher runs, True when this call started one; what went wrong when it
    could not start one (the call then pushes its file itself)."""
    import fcntl

    try:
        os.makedirs(spool, mode=0o750, exist_ok=True)
        fd = os.open(os.path.join(spool, LOCK), os.O_RDWR | os.O_CREAT, 0o640)
    except OSError as exc:
        return (
            f"cannot use the spool {spool} ({exc.strerror}): archive.spool_dir must be "
            "writable by the OS user that runs archive_command"
        )
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        # Nobody holds the lock: start a pusher that inherits it (with this very open
        # file, so no second pusher can slip in between).
        return _spawn(settings, cluster, spool, wal_dir, fd)
    except OSError as exc:
        return f"cannot start the background pusher ({exc.strerror or exc})"
    finally:
        os.close(fd)


def _spawn(settings: object, cluster: str, spool: str, wal_dir: str, lock_fd: int) -> bool:
    import subprocess

    log_path = os.path.join(spool, LOG)
    try:
        if os.stat(log_path).st_size > LOG_MAX_BYTES:
            os.replace(log_path, log_path + ".1")
    except FileNotFoundError:
        pass
    log_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pg_backup_assets.core.wal.pusher",
                "--config",
                settings.config,
                "--cluster",
                cluster,
                "--wal-dir",
                wal_dir,
                "--lock-fd",
                str(lock_fd),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log_fd,
            stderr=subprocess.STDOUT,
            pass_fds=(lock_fd,),
            start_new_session=True,  # PostgreSQL's signals to its archiver are not its own
            cwd="/",
        )
    finally:
        os.close(log_fd)
    return True


def poke(spool: str) -> None:
    """Wake the pusher (if it waits for work): one byte into its FIFO."""
    try:
        fd = os.open(os.path.join(spool, WAKE), os.O_WRONLY | os.O_NONBLOCK)
    except OSError:
        return  # no FIFO, or nobody reading it: no pusher to wake
    try:
        os.write(fd, b".")
    except OSError:
        pass  # full: it has been poked enough
    finally:
        os.close(fd)
