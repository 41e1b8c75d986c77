"""The ``pgbackup`` command. Kept lean: commands import only what they use. ``wal-push``,
which PostgreSQL runs for every WAL segment, takes a path of its own past argparse: its
arguments are read by hand, its config from a cache (``core/config_cache.py``), and an
asynchronous call whose segment is done imports the standard library's basics only."""

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable, Sequence


def _parser() -> "argparse.ArgumentParser":
    import argparse

    p = argparse.ArgumentParser(
        prog="pgbackup", description="PostgreSQL backup and restore with provable restores."
    )
    p.add_argument("--config", help="config file (default: $PGBACKUP_CONFIG)")
    p.add_argument("--cluster", help="cluster name from the config (optional with one cluster)")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="end-to-end run on a throwaway local cluster")
    demo.add_argument("--dir", default=".demo", help="state folder (default: .demo)")
    demo.add_argument(
        "--keep-running", action="store_true", help="leave the demo server running afterwards"
    )

    rd = sub.add_parser("restore-dump", help="restore a logical dump into a database")
    rd.add_argument("--database", required=True, help="which database's dump to restore")
    rd.add_argument("--into", required=True, metavar="DSN", help="target database (libpq DSN)")
    rd.add_argument("--date", help="the dump of this day (YYYY-MM-DD; default: the newest)")
    rd.add_argument(
        "--table", action="append", default=[], metavar="T", help="only this table (repeatable)"
    )
    rd.add_argument(
        "--no-owner", action="store_true", help="do not restore object ownership (pg_restore -O)"
    )

    rs = sub.add_parser("restore", help="restore a base backup, to a point in time")
    rs.add_argument("--to", required=True, metavar="DIR", help="new data directory")
    targets = rs.add_mutually_exclusive_group()
    targets.add_argument("--target-time", metavar="T", help="ISO 8601 time with zone")
    targets.add_argument("--target-lsn", metavar="L", help="e.g. 0/3000060")
    targets.add_argument("--target-xid", metavar="X", help="transaction id")
    targets.add_argument("--target-name", metavar="N", help="restore point name")
    rs.add_argument(
        "--source",
        choices=["local", "offsite"],
        default="local",
        help="restore from the local repository (default) or the offsite store",
    )
    rs.add_argument(
        "--start", action="store_true", help="start the server and replay to the target"
    )
    rs.add_argument("--force", action="store_true", help="empty a non-empty --to folder first")
    rs.add_argument(
        "--delta",
        action="store_true",
        help="--to holds an older copy of the same cluster: keep the files that match the "
        "backup, rewrite the others, remove what the backup lacks",
    )
    rs.add_argument(
        "--workers",
        type=_positive,
        default=None,
        metavar="N",
        help="parts extracted at once (default: one per core)",
    )
    rs.add_argument(
        "--archive-mode",
        choices=["off", "preserve"],
        default="off",
        help="off (default): the copy never archives WAL; preserve: it keeps the source's "
        "archiving (a copy that replaces the source archives its new timeline)",
    )

    rp = sub.add_parser("restore-point", help="create a named restore point on the cluster")
    rp.add_argument("name")

    push = sub.add_parser(
        "wal-push", help="archive one WAL file (archive_command = 'pgbackup ... wal-push %%p')"
    )
    push.add_argument("path", help="the WAL file (%%p)")

    sub.add_parser(
        "archive-command",
        help="print the archive_command line for postgresql.conf (with archive.async: one "
        "that answers a segment the background pusher already archived without Python)",
    )

    fetch = sub.add_parser(
        "wal-fetch",
        help="restore one WAL file (restore_command = 'pgbackup ... wal-fetch %%f %%p')",
    )
    fetch.add_argument(
        "--source",
        choices=["local", "offsite"],
        default="local",
        help="local (default; falls back to offsite when configured) or offsite only",
    )
    fetch.add_argument("name", help="the WAL file name (%%f)")
    fetch.add_argument("dest", help="where to write it (%%p)")

    info = sub.add_parser("info", help="what the repository holds")
    info.add_argument("--json", action="store_true", help="machine-readable output")

    rh = sub.add_parser(
        "rehearse", help="restore the offsite copy into a scratch server and verify it"
    )
    rh.add_argument("--week", help="the week's partition key, its Sunday (default: this week)")
    rh.add_argument("--json", action="store_true", help="the whole report as JSON")

    rb = sub.add_parser("runbook", help="print the emergency restore runbook (Markdown)")
    rb.add_argument(
        "--source",
        choices=["local", "offsite"],
        default="local",
        help="read the last rehearsal from the local repository (default) or the offsite store",
    )

    ex = sub.add_parser("expire", help="apply (or show) the GFS retention plan")
    ex.add_argument("--dry-run", action="store_true", help="show the plan; delete nothing")
    ex.add_argument("--json", action="store_true", help="machine-readable output")

    verify = sub.add_parser("verify", help="re-read every object: sha256, decoding, WAL continuity")
    verify.add_argument(
        "--source",
        choices=["local", "offsite", "all"],
        default="local",
        help="the local repository (default), the offsite store, or both",
    )
    verify.add_argument("--json", action="store_true", help="machine-readable output")
    return p


def _positive(value: str) -> int:
    import argparse

    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number from 1, got {value!r}")
    return n


def main(argv: "Sequence[str] | None" = None) -> int:
    own_process = argv is None  # the pgbackup command itself, not a caller in Python
    argv = list(sys.argv[1:] if argv is None else argv)
    push = _wal_push_args(argv)
    if push is not None:  # archive_command, once per WAL segment: no argparse
        return _leave(_run(lambda: _wal_push(*push), None), own_process)
    # restore_command: PostgreSQL reads an exit status up to 125 as "not archived" and, for
    # a recovery without a target, ends recovery there. Any failure of wal-fetch but "not
    # archived" (bad arguments, config, store, disk, a bug) must stop recovery instead.
    fatal = WAL_FETCH_FATAL if "wal-fetch" in argv else None
    fetch = _wal_fetch_args(argv) if fatal else None
    if fetch is not None:  # restore_command, once per WAL file: the local copy, leanly
        status = _run(lambda: _wal_fetch_lean(*fetch), fatal)
        if status is not None:
            return _leave(status, own_process)
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:
        if fatal and exc.code not in (0, None):
            return fatal
        raise
    return _run(lambda: _COMMANDS[args.command](args), fatal)


def _leave(status: int, own_process: bool) -> int:
    """The status of a per-WAL-file command. As the pgbackup process itself, exit at once:
    every file is written, fsynced and closed, and no thread is left, so the interpreter's
    teardown (a few ms of freeing modules) is skipped."""
    if own_process:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    return status


def _run(command: "Callable[[], int]", fatal: int | None) -> int:
    """Run a command; an error is one line on stderr and an exit status (``fatal``, when
    given, for every failure)."""
    try:
        return command()
    except KeyboardInterrupt:
        print("pgbackup: interrupted", file=sys.stderr)
        return fatal or 130
    except Exception as exc:
        return _report(exc, fatal)


def _report(exc: Exception, fatal: int | None) -> int:
    from pg_backup_assets.core.errors import ConfigError, PgBackupError

    if isinstance(exc, ConfigError):
        print(f"pgbackup: config error: {_flat(exc)}", file=sys.stderr)
        return fatal or 2
    if isinstance(exc, PgBackupError):
        print(f"pgbackup: error: {_flat(exc)}", file=sys.stderr)
        return fatal or 1
    if isinstance(exc, OSError):
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"pgbackup: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return fatal or 1
    # A bug: one line, the traceback only when asked for.
    if os.environ.get("PGBACKUP_DEBUG"):
        raise exc
    print(
        f"pgbackup: internal error: {type(exc).__name__}: {exc} (run with PGBACKUP_DEBUG=1 "
        "for the traceback, and please report it)",
        file=sys.stderr,
    )
    return fatal or 1


def _lean_args(argv: list[str], command: str) -> tuple[str | None, str | None, list[str]] | None:
    """(config, cluster, the arguments after ``command``) of ``[--config F] [--cluster C]
    COMMAND ...``, read by hand for the commands PostgreSQL runs once per WAL file; None
    when anything else comes before ``command`` (argparse then reads it all)."""
    options: dict[str, str] = {}
    i = 0
    while i < len(argv) and argv[i] != command:
        flag, eq, value = argv[i].partition("=")
        if flag not in ("--config", "--cluster") or flag in options:
            return None
        if not eq:
            if i + 1 >= len(argv):
                return None
            i, value = i + 1, argv[i + 1]
        options[flag] = value
        i += 1
    if i == len(argv):
        return None
    return options.get("--config"), options.get("--cluster"), argv[i + 1 :]


def _wal_push_args(argv: list[str]) -> tuple[str | None, str | None, str] | None:
    """(config, cluster, path) of ``[--config F] [--cluster C] wal-push PATH``; None for
    anything else (``--help`` included), which argparse then reads."""
    parsed = _lean_args(argv, "wal-push")
    if parsed is None:
        return None
    config, cluster, rest = parsed
    if len(rest) != 1 or rest[0].startswith("-"):
        return None
    return config, cluster, rest[0]


def _wal_fetch_args(argv: list[str]) -> tuple[str | None, str | None, str, str] | None:
    """(config, cluster, name, dest) of ``[--config F] [--cluster C] wal-fetch [--source
    local] NAME DEST``; None for anything else, which argparse then reads."""
    parsed = _lean_args(argv, "wal-fetch")
    if parsed is None:
        return None
    config, cluster, rest = parsed
    if rest[:2] == ["--source", "local"]:
        rest = rest[2:]
    elif rest[:1] == ["--source=local"]:
        rest = rest[1:]
    if len(rest) != 2 or any(r.startswith("-") for r in rest):
        return None
    return config, cluster, rest[0], rest[1]


def _wal_fetch_lean(config: str | None, cluster: str | None, name: str, dest: str) -> int | None:
    """wal-fetch from the local repository with the cached config (no YAML, no argparse):
    0 once the file is restored; 1 when it is not archived and no offsite store could have
    it; None when the full command must decide (an offsite store to try, a damaged or
    unreadable local copy: it tries every copy and reports)."""
    from pg_backup_assets.core import config_cache
    from pg_backup_assets.core.errors import NotFoundError
    from pg_backup_assets.core.wal.archive import fetch
    from pg_backup_assets.core.wal.spool import repository

    settings = config_cache.load(config)
    try:
        fetch(repository(settings), settings.cluster(cluster), name, dest)
        return 0
    except NotFoundError as exc:
        if settings.offsite:
            return None
        print(f"pgbackup: {exc}", file=sys.stderr)
        return 1
    except Exception:  # noqa: BLE001 - the full command tries again and says what is wrong
        return None


def _wal_push(config: str | None, cluster: str | None, path: str) -> int:
    from pg_backup_assets.core import config_cache
    from pg_backup_assets.core.wal.spool import wal_push

    settings = config_cache.load(config)
    return wal_push(settings, settings.cluster(cluster), path)


def _cmd_demo(args: "argparse.Namespace") -> int:
    from pg_backup_assets.demo import run_demo

    return run_demo(args.dir, keep_running=args.keep_running)


def _cmd_restore_dump(args: "argparse.Namespace") -> int:
    from pg_backup_assets.core.config import load_config
    from pg_backup_assets.core.dumps.restore import restore_dump
    from pg_backup_assets.core.storage.repository import Repository

    config = load_config(args.config)
    cluster = config.cluster(args.cluster)
    dump_set = restore_dump(
        Repository.from_config(config),
        cluster.name,
        args.database,
        args.into,
        date=args.date,
        tables=args.table,
        no_owner=args.no_owner,
        log=lambda m: print(m, file=sys.stderr),
    )
    print(f"restored {args.database} from the {dump_set.date} dump ({dump_set.set_id})")
    return 0


def _cmd_restore(args: "argparse.Namespace") -> int:
    from pathlib import Path

    from pg_backup_assets.core.base.restore import Target, restore
    from pg_backup_assets.core.config import load_config
    from pg_backup_assets.core.postgres.client import redact_dsn
    from pg_backup_assets.core.storage.repository import Repository

    config = load_config(args.config)
    cluster = config.cluster(args.cluster)
    if args.source == "offsite":
        from pg_backup_assets.core.offsite.store import offsite_repository

        repo = offsite_repository(config)
    else:
        repo = Repository.from_config(config)
    kind = next(
        (k for k in ("time", "lsn", "xid", "name") if getattr(args, f"target_{k}") is not None),
        None,
    )
    target = Target.parse(kind, getattr(args, f"target_{kind}") if kind else None)
    result = restore(
        repo,
        cluster,
        config.source,
        Path(args.to),
        target,
        start=args.start,
        force=args.force,
        log=lambda m: print(m, file=sys.stderr),
        source=args.source,
        archive_mode=args.archive_mode,
        s3_env=bool(config.offsite and config.offsite.s3),
        workers=args.workers,
        delta=args.delta,
    )
    print(f"restored {result.backup.label} from {repo.describe()} into {result.data_dir}")
    print(f"  fetch + extract   {result.fetch_extract_s:.1f}s")
    done = result.extracted
    if args.delta and done is not None:
        print(
            f"  delta             {done.files_written:,} files written, {done.files_kept:,} "
            f"kept ({done.files_vouched:,} of them vouched for by the restore record, not "
            f"read), {done.files_removed:,} removed"
        )
    if result.server:
        print(f"  replay            {result.replay_s:.1f}s")
        print(
            f"  WAL fetched ahead {result.wal_fetched_ahead} of {result.wal_wanted} files, "
            f"{result.wal_taken_ahead} taken by replay"
        )
        print(f"  reached           {result.reached_lsn} ({result.stop_reason or 'end of WAL'})")
        print(f"  last transaction  {result.reached_time or 'n/a'}")
        archiving = "off on it" if args.archive_mode == "off" else "as the source's"
        print(f"  server            {redact_dsn(result.dsn())}  (archiving: {archiving})")
        print(f"  stop it with      {result.server.stop_command()}")
    else:
        print(f"  start it with     pg_ctl -D {result.data_dir} start  (it recovers to the target)")
        archiving = "off" if args.archive_mode == "off" else "as the source's (preserve)"
        print(f"                    (as the OS user that owns it; archiving: {archiving})")
    return 0


def _cmd_restore_point(args: "argparse.Namespace") -> int:
    from pg_backup_assets.core.base.restore_point import create_restore_point
    from pg_backup_assets.core.config import load_config
    from pg_backup_assets.core.storage.repository import Repository
    from pg_backup_assets.core.wal.names import format_lsn

    config = load_config(args.config)
    point = create_restore_point(
        Repository.from_config(config), config.cluster(args.cluster), args.name
    )
    print(f"restore point {point.name} at {format_lsn(point.lsn)} (timeline {point.timeline})")
    return 0


def _lean_config(args: "argparse.Namespace"):  # noqa: ANN202
    # wal-push/wal-fetch: only the modules they need (no psycopg, dagster or boto3).
    from pg_backup_assets.core.config import load_config

    return load_config(args.config, need_dsn_secrets=False)


def _cmd_wal_push(args: "argparse.Namespace") -> int:
    return _wal_push(args.config, args.cluster, args.path)


def _cmd_archive_command(args: "argparse.Namespace") -> int:
    from pg_backup_assets.core.config import config_path
    from pg_backup_assets.core.wal.archive import archive_command, quote_setting

    command = archive_command(config_path(args.config), args.cluster)
    print(f"archive_command = {quote_setting(command)}")
    return 0


def _cmd_wal_fetch(args: "argparse.Namespace") -> int:
    from pg_backup_assets.core.errors import NotFoundError
    from pg_backup_assets.core.storage.repository import Repository
    from pg_backup_assets.core.wal.archive import fetch

    config = _lean_config(args)
    cluster = config.cluster(args.cluster).name
    sources = ["local", "offsite"] if config.offsite else ["local"]
    if args.source == "offsite":
        sources = ["offsite"]
    failures: list[str] = []
    missing = True
    for source in sources:
        try:
            if source == "local":
                repo = Repository.from_config(config)
            else:
                from pg_backup_assets.core.offsite.store import offsite_repository

                repo = offsite_repository(config)
            fetch(repo, cluster, args.name, args.dest)
            return 0
        except NotFoundError as exc:
            failures.append(str(exc))
        except Exception as exc:  # damaged, unreachable, denied, disk full...: try the next copy
            failures.append(_one_line(exc))
            missing = False
    print("pgbackup: " + "; ".join(failures), file=sys.stderr)
    # PostgreSQL probes for files that may not exist: "not archived" is a quiet exit 1.
    # A damaged segment or an unreachable store must stop recovery, not end it early as if
    # the WAL ended there: PostgreSQL treats an exit status above 125 as fatal.
    return 1 if missing else WAL_FETCH_FATAL


def _flat(exc: BaseException) -> str:
    """An error as one line: what tools printed over several lines, joined."""
    return "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}" + (f" ({exc.filename})" if exc.filename else "")
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _cmd_info(args: "argparse.Namespace") -> int:
    from pg_backup_assets.core.config import load_config
    from pg_backup_assets.core.info import repository_info
    from pg_backup_assets.core.storage.repository import Repository

    config = load_config(args.config)
    names = [config.cluster(args.cluster).name] if args.cluster else sorted(config.clusters)
    offsite = None
    if config.offsite:
        from pg_backup_assets.core.offsite.store import offsite_repository

        offsite = offsite_repository(config, max_attempts=2)  # a look, not a transfer
    doc = repository_info(
        Repository.from_config(config), names, offsite, daily=config.retention.daily
    )
    if args.json:
        import json

        json.dump(doc, sys.stdout, indent=2, sort_keys=True)
        print()
        return 0
    for name, c in doc["clusters"].items():
        print(f"cluster {name}")
        if c.get("offsite_error"):
            print(f"  offsite store: cannot be listed: {c['offsite_error']}")
        print(f"  logical dumps: {len(c['dumps'])}")
        for d in c["dumps"]:
            print(
                f"    {d['date']}  {d['database']:<24} {d['size_bytes']:>14,} bytes"
                + _offsite_column(d)
            )
        print(f"  base backups: {len(c['base_backups'])}")
        for b in c["base_backups"]:
            state = "verified" if b["verified"] else "NOT verified"
            print(
                f"    {b['label']}  {b['start_lsn']}..{b['stop_lsn']} tl {b['timeline']}  "
                f"{b['size_bytes']:>14,} bytes  {_tiers_column(b)}  {state}" + _offsite_column(b)
            )
        wal = c["wal"]
        span = f" ({wal['first']} .. {wal['last']})" if wal["first"] else ""
        print(f"  WAL segments archived: {wal['count']}{span}")
        if "offsite_missing" in wal:
            print(f"    not offsite yet: {wal['offsite_missing']} objects")
        for first, last in wal["gaps"]:
            print(f"    GAP: {first} .. {last} missing")
    return 0


def _tiers_column(backup: dict) -> str:
    tiers = backup.get("tiers") or {}
    return ", ".join(f"{t} {w}" for t, w in sorted(tiers.items())) or "daily"


def _offsite_column(entry: dict) -> str:
    return f"  offsite: {entry['offsite']}" if entry.get("offsite") else ""


def _cmd_rehearse(args: "argparse.Namespace") -> int:
    import datetime as dt
    import json

    from pg_backup_assets.core.catalog import check_date
    from pg_backup_assets.core.config import load_config
    from pg_backup_assets.core.rehearsal.rehearse import rehearse, week_of

    config = load_config(args.config)
    cluster = config.cluster(args.cluster).name
    week = week_of(dt.date.fromisoformat(check_date(args.week)) if args.week else dt.date.today())
    report = rehearse(config, cluster, week, log=lambda m: print(m, file=sys.stderr))
    if args.json:
        json.dump(report.to_dict(), sys.stdout, indent=2, sort_keys=True)
        print()
    else:
        for t in report.tables + report.dump.get("tables", []):
            state = "ok" if t["ok"] else "DIFFERS"
            print(
                f"  {t['database']}.{t['table']:<40} {t['source_rows']:>12,} "
                f"{t['copy_rows'] if t['copy_rows'] is not None else 'missing':>12} {state}"
            )
        for c in report.checks:
            print(f"  {c['check']:<14} {'ok' if c['ok'] else 'FAILED'}: {c['detail']}")
        rto = (
            f"RTO {report.rto_s:.1f}s (fetch {report.phases['fetch_s']:.1f}s, replay "
            f"{report.phases['replay_s']:.1f}s)"
            if report.rto_s is not None
            else "RTO not measured"
        )
        rpo = f"RPO {report.rpo_s:.0f}s" if report.rpo_s is not None else "RPO not measured"
        print(f"{rto}; {rpo}")
    for p in report.problems:
        print(f"pgbackup: {p}", file=sys.stderr)
    return 0 if report.passed else 1


def _cmd_runbook(args: "argparse.Namespace") -> int:
    from pg_backup_assets.core.config import load_config
    from pg_backup_assets.core.rehearsal.runbook import last_passing_report, render_runbook
    from pg_backup_assets.core.storage.repository import Repository

    config = load_config(args.config)
    cluster = config.cluster(args.cluster).name
    if args.source == "offsite":
        # The local site may be gone: the copy the last passing rehearsal left offsite.
        from pg_backup_assets.core.errors import NotFoundError
        from pg_backup_assets.core.offsite.store import offsite_repository
        from pg_backup_assets.core.rehearsal.runbook import RUNBOOK

        try:
            with offsite_repository(config).storage.open(f"{cluster}/{RUNBOOK}") as f:
                print(f.read().decode())
            return 0
        except NotFoundError:
            print(
                "pgbackup: no rehearsal has passed yet: the runbook below is unproven",
                file=sys.stderr,
            )
            report = None
    else:
        report = last_passing_report(Repository.from_config(config), cluster)
    print(render_runbook(config, cluster, report))
    return 0


def _cmd_expire(args: "argparse.Namespace") -> int:
    import json

    from pg_backup_assets.core.config import load_config
    from pg_backup_assets.core.retention.expire import expire

    config = load_config(args.config)
    names = [config.cluster(args.cluster).name] if args.cluster else sorted(config.clusters)
    docs = {}
    for name in names:
        report = expire(config, name, args.dry_run, log=lambda m: print(m, file=sys.stderr))
        p = report.plan
        docs[name] = {
            "dry_run": args.dry_run,
            "halted": p.halted,
            "backups": [
                {
                    "kind": d.backup.kind,
                    "date": d.backup.date,
                    "label": d.backup.label,
                    "tiers": d.backup.tiers,
                    "keep": d.keep,
                    "reasons": d.reasons,
                    "size_bytes": d.backup.size_bytes,
                }
                for d in p.decisions
            ],
            "wal": [
                {
                    "first": r.first,
                    "last": r.last,
                    "objects": r.objects,
                    "bytes": r.bytes,
                    "keep": r.keep,
                    "reason": r.reason,
                }
                for r in p.wal
            ],
            "freed_bytes": report.freed,
            "swept": report.swept,
        }
        if args.json:
            continue
        print(f"cluster {name}" + (" (dry run: nothing is deleted)" if args.dry_run else ""))
        if p.halted:
            print(f"  {p.halted}")
        for d in sorted(p.decisions, key=lambda d: (d.backup.date, d.backup.kind), reverse=True):
            state = "keep  " if d.keep else "EXPIRE"
            print(
                f"  {state} {d.backup.date} {d.backup.kind:<4} {d.backup.label:<40} "
                f"{'; '.join(d.reasons)}"
            )
        for r in p.wal:
            state = "keep  " if r.keep else "EXPIRE"
            print(f"  {state} WAL {r.first}..{r.last} ({r.objects} objects): {r.reason}")
        print(f"  freed: {report.freed['local']:,} bytes here, {report.freed['offsite']:,} offsite")
    if args.json:
        json.dump({"clusters": docs}, sys.stdout, indent=2, sort_keys=True)
        print()
    return 0


def _cmd_verify(args: "argparse.Namespace") -> int:
    from pg_backup_assets.core.config import load_config
    from pg_backup_assets.core.storage.repository import Repository
    from pg_backup_assets.core.verify import Report, verify_repository

    config = load_config(args.config)
    names = [config.cluster(args.cluster).name] if args.cluster else sorted(config.clusters)
    sources = ["local", "offsite"] if args.source == "all" else [args.source]
    report = Report()
    for source in sources:
        if source == "local":
            repo = Repository.from_config(config)
        else:
            from pg_backup_assets.core.offsite.store import offsite_repository

            repo = offsite_repository(config)
        verify_repository(
            repo,
            source,
            names,
            lambda m: print(m, file=sys.stderr),
            report,
            daily=config.retention.daily,
        )
    if args.json:
        import json

        json.dump(report.to_dict(), sys.stdout, indent=2, sort_keys=True)
        print()
    else:
        header = ("source", "cluster", "what", "item", "objects", "bytes", "result")
        rows = [
            (
                r.source,
                r.cluster,
                r.what,
                r.item,
                f"{r.objects:,}",
                f"{r.bytes:,}",
                "ok" if r.ok else "FAILED",
            )
            for r in report.rows
        ]
        widths = [max(len(x[i]) for x in [header, *rows]) for i in range(len(header))]
        for line in [header, *rows]:
            print(
                "  ".join(
                    v.rjust(w) if i in (4, 5) else v.ljust(w)
                    for i, (v, w) in enumerate(zip(line, widths, strict=True))
                ).rstrip()
            )
    problems = report.all_problems
    if problems:
        print(f"\n{len(problems)} problems:", file=sys.stderr)
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
        return 1
    if not args.json:
        print(f"\nevery object re-read and decoded; no problem found ({len(report.rows)} rows)")
    return 0


WAL_FETCH_FATAL = 126

_COMMANDS = {
    "demo": _cmd_demo,
    "restore-dump": _cmd_restore_dump,
    "info": _cmd_info,
    "verify": _cmd_verify,
    "expire": _cmd_expire,
    "rehearse": _cmd_rehearse,
    "runbook": _cmd_runbook,
    "restore": _cmd_restore,
    "restore-point": _cmd_restore_point,
    "wal-push": _cmd_wal_push,
    "archive-command": _cmd_archive_command,
    "wal-fetch": _cmd_wal_fetch,
}

if __name__ == "__main__":
    sys.exit(main())
