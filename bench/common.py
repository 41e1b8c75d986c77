"""Helpers shared by the benchmarks in ``bench/`` (``wal_push.py``, ``base_backup.py``,
``s3_upload.py``, ``retention.py``, ``rehearsal.py``).

Running tools as the ``postgres`` OS user, timing fresh processes, installing and
configuring pgBackRest, loading a throwaway cluster, waiting for the machine to be idle,
measuring what else used the CPUs meanwhile, saving the raw results, and rendering a
section of ``BENCHMARKS.md`` from them (tables only; the prose is in ``bench/README.md``).
Measurements only: nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import os
import platform
import pwd
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import psycopg
import zstandard

from pg_backup_assets.core.postgres.client import bindir
from pg_backup_assets.core.postgres.local_cluster import SERVER_USER, LocalCluster, hand_over

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
BENCHMARKS = ROOT / "BENCHMARKS.md"
PGBACKUP = Path(sys.prefix) / "bin" / "pgbackup"
PYTHON = Path(sys.prefix) / "bin" / "python"
STANZA = "bench"
ZSTD_LEVEL = 3


class BenchError(Exception):
    pass


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# -- running things as the server account --------------------------------------------------
def as_postgres() -> list[str]:
    """Prefix that runs a command as the postgres OS user (nothing when we are not root)."""
    if os.geteuid() != 0:
        return []
    return [shutil.which("runuser") or "/usr/sbin/runuser", "-u", SERVER_USER, "--"]


def tool_env(**extra: str) -> dict[str, str]:
    """A small, fixed environment, like the one the postmaster gives archive_command."""
    home = pwd.getpwnam(SERVER_USER).pw_dir if os.geteuid() == 0 else str(Path.home())
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "HOME": home,
        **extra,
    }


def run(args: Sequence[str], what: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        list(args), env=tool_env(), capture_output=True, text=True, timeout=timeout, check=False
    )
    if proc.returncode != 0:
        raise BenchError(
            f"{what} failed (exit {proc.returncode}): {' '.join(args)}\n"
            f"{(proc.stderr or proc.stdout).strip()[-3000:]}"
        )
    return proc


def timed(args: Sequence[str], env: dict[str, str], what: str) -> float:
    """Wall time of one fresh process, in seconds (it must exit 0)."""
    cmd = list(args)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, check=False)
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip()[-3000:]
        raise BenchError(f"{what} failed (exit {proc.returncode}): {' '.join(cmd)}\n{err}")
    return elapsed


def owned_dir(path: Path) -> Path:
    """A folder the postgres user owns (it writes repositories, logs and archives there)."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o755)
    hand_over(path)
    return path


# -- pgBackRest ------------------------------------------------------------------------------
def ensure_command(command: str, package: str) -> str:
    """``command``'s path; ``package`` installed from Debian's packages when it is missing
    (benchmark only)."""
    exe = shutil.which(command)
    if exe:
        return exe
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise BenchError(f"{command} is not installed: apt-get install -y {package}")
    log(f"installing {package} from Debian's packages (for this benchmark only)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-qq", package]
    if subprocess.run(cmd, env=env, capture_output=True, check=False).returncode != 0:
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=True, capture_output=True)
        subprocess.run(cmd, env=env, check=True, capture_output=True)
    exe = shutil.which(command)
    if not exe:
        raise BenchError(f"apt-get install {package} succeeded but {command} is not on PATH")
    return exe


def ensure_pgbackrest() -> str:
    """The pgbackrest binary; installed from Debian's packages when missing (benchmark only)."""
    return ensure_command("pgbackrest", "pgbackrest")


def pgbackrest_conf(
    path: Path,
    repo: Path,
    work: Path,
    cluster: LocalCluster,
    options: Mapping[str, str] | None = None,
) -> Path:
    """A ``pgbackrest.conf`` for ``cluster``: zstd level 3, plus ``options`` in ``[global]``."""
    logs = owned_dir(work / "pgbackrest-log")
    locks = owned_dir(work / "pgbackrest-lock")
    extra = "".join(f"{k}={v}\n" for k, v in (options or {}).items())
    path.write_text(
        "[global]\n"
        f"repo1-path={repo}\n"
        f"log-path={logs}\n"
        f"lock-path={locks}\n"
        "compress-type=zst\n"
        f"compress-level={ZSTD_LEVEL}\n"
        f"{extra}"
        "\n"
        f"[{STANZA}]\n"
        f"pg1-path={cluster.data}\n"
        f"pg1-port={cluster.port}\n"
        f"pg1-socket-path={cluster.sockdir}\n"
        "pg1-user=postgres\n"
    )
    path.chmod(0o644)
    return path


def pgbackrest_cmd(exe: str, conf: Path, *args: str) -> list[str]:
    return [*as_postgres(), exe, f"--config={conf}", f"--stanza={STANZA}", *args]


# -- ours ----------------------------------------------------------------------------------
def ours_conf(
    path: Path,
    repo: Path,
    cluster: LocalCluster,
    recipient: str | None,
    identity_file: Path | None = None,
    spool: Path | None = None,
    parallel: int = 2,
) -> Path:
    """A pgbackup config: one cluster ``bench``; age-encrypted when ``recipient`` is given;
    archiving asynchronously through ``spool`` with ``parallel`` workers when it is."""
    text = f'repository: {repo}\nclusters:\n  bench:\n    dsn: "{cluster.dsn()}"\n'
    if recipient:
        text += f"encryption:\n  recipients: [{recipient}]\n"
        if identity_file:
            text += f"  identity_file: {identity_file}\n"
    if spool:
        text += f"archive: {{async: true, spool_dir: {spool}, parallel: {parallel}}}\n"
    path.write_text(text)
    path.chmod(0o644)
    return path


# -- loading a cluster ---------------------------------------------------------------------
def sql(cluster: LocalCluster, *statements: str) -> list[tuple]:
    rows: list[tuple] = []
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        for s in statements:
            cur = conn.execute(s)
            rows = cur.fetchall() if cur.description else []
    return rows


def pgbench(cluster: LocalCluster, *args: str) -> None:
    exe = str(bindir(15) / "pgbench")
    conn = ["-h", "127.0.0.1", "-p", str(cluster.port), "-U", "postgres"]
    proc = subprocess.run(
        [exe, *conn, *args, "postgres"], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        raise BenchError(f"pgbench {' '.join(args)} failed: {proc.stderr.strip()[-2000:]}")


def switch_and_wait(cluster: LocalCluster, timeout: float = 300) -> None:
    """Close the current segment and wait until archive_command has copied it."""
    ((last,),) = sql(cluster, "SELECT pg_walfile_name(pg_switch_wal())")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ((done, failed, failed_wal),) = sql(
            cluster, "SELECT last_archived_wal, failed_count, last_failed_wal FROM pg_stat_archiver"
        )
        if failed:
            raise BenchError(f"archive_command failed for {failed_wal}: {cluster.log_tail()}")
        if done is not None and done >= last:
            return
        time.sleep(0.2)
    raise BenchError(f"segment {last} was not archived within {timeout}s")


# -- files ---------------------------------------------------------------------------------
def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file())


def tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in files_under(path))


# -- what else runs --------------------------------------------------------------------------
def postmaster_pid(cluster: LocalCluster) -> int | None:
    try:
        return int((cluster.data / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _proc_stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()  # fields from 3 (state) on


def server_cpu_s(pids: Sequence[int]) -> float:
    """CPU seconds of PostgreSQL servers (``pids``: postmasters): each postmaster, its
    reaped children (backends and walsenders that ended) and its live children."""
    tick = os.sysconf("SC_CLK_TCK")
    wanted = set(pids)
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        st = _proc_stat(int(entry.name))
        if st is None:
            continue
        # st[1] is the parent pid; st[11:15] utime, stime, cutime, cstime
        if int(entry.name) in wanted:
            total += sum(int(x) for x in st[11:15])
        elif int(st[1]) in wanted:
            total += int(st[11]) + int(st[12])
    return total / tick


def load_now(own_servers: Sequence[int] = ()) -> dict[str, object]:
    """CPU counters and the PostgreSQL servers running (others compete for the CPUs).

    ``own_servers``: postmaster pids of the benchmark's own servers, whose CPU counts as
    the benchmark's (a walsender compressing a base backup is not "other activity")."""
    ps = subprocess.run(["ps", "-eo", "args="], capture_output=True, text=True).stdout
    servers = sorted(set(re.findall(r"/bin/postgres -D (\S+)", ps)))
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    mine = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return {
        "t": time.monotonic(),
        "busy_s": (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK"),
        "ours_s": sum(r.ru_utime + r.ru_stime for r in mine) + server_cpu_s(own_servers),
        "postgres_servers": servers,
    }


def foreign_cpu(before: dict[str, object], after: dict[str, object]) -> float:
    """CPU seconds used meanwhile by everything but this script and its children, per
    second of wall time (1.0 = one CPU kept busy), kernel work such as fsync included."""
    busy = after["busy_s"] - before["busy_s"]
    ours = after["ours_s"] - before["ours_s"]
    return max(busy - ours, 0.0) / max(after["t"] - before["t"], 1e-9)


def wait_idle(
    limit: float,
    ours: str | Sequence[str],
    max_busy: float | None = None,
    own_servers: Sequence[int] = (),
) -> dict[str, object]:
    """Wait (up to ``limit`` seconds) until no other PostgreSQL server runs and, with
    ``max_busy``, until other processes use less than that many CPUs (over 5 seconds)."""
    mine = {ours} if isinstance(ours, str) else set(ours)
    deadline = time.monotonic() + limit
    said = False
    while True:
        now = load_now(own_servers)
        others = [s for s in now["postgres_servers"] if s not in mine]
        busy = 0.0
        if max_busy is not None and not others:
            time.sleep(5)
            later = load_now(own_servers)
            busy = foreign_cpu(now, later)
            now = later
        settled = not others and (max_busy is None or busy <= max_busy)
        if settled or time.monotonic() >= deadline:
            if others:
                log(f"still running beside us: {others}")
            elif not settled:
                log(f"still busy: {busy:.2f} CPUs used by other processes")
            return now
        if not said:
            what = f"{len(others)} other PostgreSQL servers" if others else f"{busy:.2f} CPUs"
            log(f"waiting up to {limit:.0f}s for the machine to be idle ({what} busy)")
            said = True
        time.sleep(5)


# -- the report ----------------------------------------------------------------------------
def machine() -> dict[str, str]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip(),
        "cpu": cpu,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "zstandard": f"{zstandard.__version__} (libzstd {zstandard.ZSTD_VERSION[0]}."
        f"{zstandard.ZSTD_VERSION[1]}.{zstandard.ZSTD_VERSION[2]})",
    }


INTRO = (
    "# Benchmarks\n\n"
    "Generated by `make bench-wal`, `make bench-base`, `make bench-s3`, `make "
    "bench-retention` and `make bench-rehearsal` from their raw results; what each measures "
    "and how to read its tables: `bench/README.md`.\n"
)


def report_head(work: Path) -> dict[str, Any]:
    """The raw results' first keys: when, on which machine, on which filesystem (``work``'s)."""
    fs = subprocess.run(["stat", "-f", "-c", "%T", str(work)], capture_output=True, text=True)
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "fs": fs.stdout.strip(),
    }


def measured(r: Mapping[str, Any], target: str, versions: str) -> str:
    """The line under a report's heading: when, by what, on which machine, with what."""
    m = r["machine"]
    return (
        f"Measured {r['date']} by `make {target}` on {m['nproc']} CPUs ({m['cpu']}), Linux "
        f"{m['kernel']}, {r['fs']}; {versions}."
    )


def table(head: Sequence[str], rows: Iterable[Sequence[object]], align: str = "") -> list[str]:
    """A Markdown table; ``align`` has one letter per column (l, c, r), default l then r."""
    marks = {"l": "---", "c": ":-:", "r": "---:"}
    align = align or "l" + "r" * (len(head) - 1)
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(marks[a] for a in align) + "|"]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def as_ratio(x: float, bold: bool = False) -> str:
    """A ratio as the reports print it; bold where the design names it the headline."""
    return f"**{x:.2f}×**" if bold else f"{x:.2f}×"


def mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


def local_paths(text: str) -> list[str]:
    """Paths of this machine that ``text`` names (the checkout, home, the temp folder):
    BENCHMARKS.md is committed, so its commands use placeholders instead."""
    here = {str(ROOT), str(Path.home()), tempfile.gettempdir()}
    return sorted(p for p in here if re.search(re.escape(p) + r"(/|\b)", text))


def write_benchmarks(heading: str, section: str) -> None:
    """Put ``section`` (starting with ``heading``) into BENCHMARKS.md under the intro:
    replace the section with that heading, or append it; every other section stays."""
    text = BENCHMARKS.read_text() if BENCHMARKS.exists() else ""
    sections = [x.strip("\n") for x in re.split(r"^(?=## )", text, flags=re.M)[1:]]
    same = [i for i, x in enumerate(sections) if x.startswith(heading + "\n")]
    if same:
        sections[same[0]] = section.strip("\n")
    else:
        sections.append(section.strip("\n"))
    BENCHMARKS.write_text(INTRO + "".join(f"\n{x}\n" for x in sections))


def run_with_pgbackrest(name: str, args: Any, bench: Callable[..., int]) -> int:
    """Install pgBackRest if needed, then run ``bench(args, exe, work, cluster)`` with a
    scratch folder and a cluster that are stopped and removed (unless --keep) however it ends.
    """
    try:
        exe = ensure_pgbackrest()
    except (BenchError, subprocess.CalledProcessError) as exc:
        log(f"error: cannot install pgbackrest: {exc}")
        return 1
    OUT.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=OUT))
    owned_dir(work)
    cluster = LocalCluster(work / "pg")
    try:
        return bench(args, exe, work, cluster)
    except BenchError as exc:
        log(f"error: {exc}")
        return 1
    finally:
        cluster.stop()
        if cluster.running():
            log(f"WARNING: the server in {cluster.data} is still running")
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def report_options(p: argparse.ArgumentParser) -> None:
    """The options every benchmark has for its report."""
    p.add_argument("--no-report", action="store_true", help="leave BENCHMARKS.md alone")
    p.add_argument(
        "--render-only",
        action="store_true",
        help="measure nothing: render the report from the last run's raw results "
        "(bench/out/NAME-last.json) and write it to BENCHMARKS.md",
    )


def require_server_user(p: argparse.ArgumentParser) -> None:
    """As root, PostgreSQL runs as the postgres OS user: refuse to start without one."""
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SERVER_USER)
        except KeyError:
            p.error("running as root but there is no postgres OS user to run PostgreSQL as")


def quiet_options(p: argparse.ArgumentParser, wait_idle_s: float) -> None:
    """The options of a benchmark that waits for a quiet machine before each round."""
    p.add_argument(
        "--wait-idle",
        type=float,
        default=wait_idle_s,
        metavar="S",
        help="before each round, wait up to S seconds until no other PostgreSQL server runs "
        f"and other processes use at most --max-busy CPUs (default {wait_idle_s:g})",
    )
    p.add_argument("--max-busy", type=float, default=0.25, help="CPUs (default 0.25)")


def engine_note(r: Mapping[str, Any]) -> str:
    """The report's line naming the engine that was measured (``r["engine"]``)."""
    return (
        "- Engine (sha256 prefixes): "
        + ", ".join(f"`{k}` {v}" for k, v in r["engine"].items())
        + (" (changed during the run)." if r["engine_changed_during_run"] else ".")
    )


def results(name: str) -> Path:
    """Where a benchmark keeps the raw results of its last run (git-ignored)."""
    return OUT / f"{name}-last.json"


def finish(
    name: str,
    heading: str,
    render: Callable[[dict], str],
    report: dict[str, Any],
    why: str,
    no_report: bool,
) -> int:
    """Save the raw results (``report``, with its ``problems``), then publish the section
    rendered from what was saved: the report is a function of that file alone."""
    OUT.mkdir(parents=True, exist_ok=True)
    path = results(name)
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return rerender(name, heading, render, why, no_report)


def rerender(
    name: str, heading: str, render: Callable[[dict], str], why: str, no_report: bool
) -> int:
    """Publish the section rendered from the last run's raw results (``--render-only``)."""
    path = results(name)
    if not path.exists():
        log(f"error: no raw results in {path.relative_to(ROOT)}: run the benchmark first")
        return 1
    r = json.loads(path.read_text())
    return publish(heading, render(r), r.get("problems", []), why, no_report)


def publish(heading: str, section: str, problems: Sequence[str], why: str, no_report: bool) -> int:
    """Print the section; write it to BENCHMARKS.md unless a check of the run failed or
    it names a path of this machine."""
    print(section)
    leaked = local_paths(section)
    if leaked:  # the renderer's defect, not the run's: BENCHMARKS.md is committed
        problems = [*problems, f"the report names paths of this machine: {leaked}"]
        why = "see the problems above"
    if problems:
        for prob in problems:
            log(f"PROBLEM: {prob}")
        log(f"not writing BENCHMARKS.md: {why}")
        return 1
    if not no_report:
        write_benchmarks(heading, section)
        log(f"wrote {BENCHMARKS.relative_to(ROOT)}")
    return 0
