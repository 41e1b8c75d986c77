"""The emergency runbook of a cluster: the exact commands that restore it from the offsite
store, with pgbackup and with nothing but the stock tools, refreshed by every rehearsal
that passed (it used the same store and the same key)."""

from __future__ import annotations

import datetime as dt
import shlex
from dataclasses import dataclass

from pg_backup_assets.core.config import Config
from pg_backup_assets.core.storage.repository import Repository

RUNBOOK = "runbook.md"


@dataclass(frozen=True)
class _Store:
    """How the stock tools reach a cluster's objects in the store a restore would use."""

    description: str
    root: str  # s3://bucket/prefix<cluster> or a folder
    aws: str | None  # "aws s3 [--endpoint-url U]" for S3, None for a folder

    def get(self, path: str) -> str:
        """A command writing object ``path`` (under the cluster) to stdout."""
        if self.aws:
            return f'{self.aws} cp "{self.root}/{path}" -'
        return f'cat "{self.root}/{path}"'

    def parts(self, folder: str, suffix: str) -> str:
        """Shell: the names of a backup's data parts in ``folder`` (under the cluster)."""
        if self.aws:
            listing = f'{self.aws} ls "{self.root}/{folder}/"'
            return f"$({listing} | awk '{{print $4}}' | grep '^part-.*\\.tar{suffix}$')"
        return f'$(cd "{self.root}/{folder}" && ls -1 part-*.tar{suffix})'

    def newest_backup(self) -> str:
        if self.aws:
            listing = f"{self.aws} ls {self.root}/base/ --recursive"
            return f"{listing} | grep catalog.json | sort -k4 | tail -n 1"
        return f"ls -1d {self.root}/base/*/* | sort | tail -n 1"

    def first_wal_object(self) -> str:
        """Shell: the object of WAL file $1 in folder $dir, or nothing."""
        if self.aws:
            return f"{self.aws} ls \"{self.root}/wal/$dir/$1-\" | awk '{{print $4}}' | head -n 1"
        return f'cd "{self.root}/wal/$dir" 2>/dev/null && ls -1 "$1-"* 2>/dev/null | head -n 1'


def _store(config: Config, cluster: str) -> _Store:
    off = config.offsite
    if off is not None and off.s3 is not None:
        endpoint = f" --endpoint-url {off.s3.endpoint_url}" if off.s3.endpoint_url else ""
        where = f", endpoint {off.s3.endpoint_url}" if off.s3.endpoint_url else ""
        return _Store(
            f"S3 bucket `{off.s3.bucket}`, prefix `{off.s3.prefix}{cluster}/`{where}",
            f"s3://{off.s3.bucket}/{off.s3.prefix}{cluster}",
            f"aws s3{endpoint}",
        )
    if off is not None:
        return _Store(f"folder `{off.path}/{cluster}/`", f"{off.path}/{cluster}", None)
    root = f"{config.repository}/{cluster}"
    return _Store(f"no offsite store: the repository `{root}/`", root, None)


def _decrypt(config: Config) -> str:
    if not config.encryption:
        return ""
    key = config.encryption.identity_file or "/path/to/age.key"
    return f"age -d -i {shlex.quote(str(key))} | "


def last_passing_report(repo: Repository, cluster: str) -> dict | None:
    """The newest rehearsal report of ``cluster`` that passed, if any."""
    passing = [
        doc
        for info in repo.storage.list(f"{cluster}/rehearsals/")
        if info.key.endswith(".json") and (doc := repo.get_json(info.key)).get("passed")
    ]
    return max(passing, key=lambda d: d.get("started_at", 0), default=None)


def fetch_script(config: Config, cluster: str) -> str:
    """``fetch-wal.sh NAME DEST``: a restore_command of stock tools only (aws or cat, age,
    zstd, sha256sum). Exit 1: not archived; 126: damaged (PostgreSQL stops recovery)."""
    store = _store(config, cluster)
    return f"""#!/bin/sh
# fetch-wal.sh NAME DEST: restore_command = '/usr/local/bin/fetch-wal.sh %f %p'
set -u
case "$1" in *.history) dir=history ;; *) dir=$(printf %s "$1" | cut -c1-16) ;; esac
obj=$({store.first_wal_object()})
[ -n "$obj" ] || exit 1
want=${{obj#"$1-"}}; want=${{want%%.*}}
{store.get("wal/$dir/$obj")} | {_decrypt(config)}zstd -d -q > "$2.part" || exit 126
[ "$(sha256sum "$2.part" | cut -c1-64)" = "$want" ] || {{ rm -f "$2.part"; exit 126; }}
mv "$2.part" "$2"
"""


def render_runbook(config: Config, cluster: str, report: object | None = None) -> str:
    """Markdown; ``report``: the rehearsal that proved it (a RehearsalReport or its dict)."""
    r = report.to_dict() if hasattr(report, "to_dict") else report
    store = _store(config, cluster)
    enc = config.encryption
    key = str(enc.identity_file) if enc and enc.identity_file else "(not in the config)"
    cfg = shlex.quote(str(config.source)) if config.source else "/etc/pgbackup/pgbackup.yaml"
    suffix = ".zst.age" if enc else ".zst"
    to = f"/srv/pg/{cluster}"
    major = r.get("pg_major") if r else None
    pg_ctl = f"/usr/lib/postgresql/{major}/bin/pg_ctl" if major else "pg_ctl"
    lines = [f"# Emergency restore runbook: cluster `{cluster}`", ""]
    if r and r.get("passed"):
        when = dt.datetime.fromtimestamp(r["started_at"], dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        phases = r.get("phases", {})
        lines += [
            f"Proven by the rehearsal of {when}: `{r['backup']}` restored from the "
            f"{r['source']} store to restore point `{r['point']['name']}` "
            f"({r['point']['lsn']}), WAL {'..'.join(r.get('wal', []))}, a usable server in "
            f"**{r['rto_s']:.0f}s** (fetch + extract {phases.get('fetch_s', 0):.0f}s, replay "
            f"{phases.get('replay_s', 0):.0f}s), every table identical to the source.",
            "",
        ]
    else:
        lines += ["No rehearsal has passed yet: these commands are unproven.", ""]
    lines += [
        "## Where things are",
        "",
        f"- Offsite copy: {store.description}",
        f"- Decryption key (age identity, private): `{key}`"
        + (", keep a copy outside this site" if enc else " (the backups are not encrypted)"),
        f"- Config: `{cfg}`, cluster `{cluster}`",
        "",
        "## With pgbackup",
        "",
        "```sh",
        f"pgbackup --config {cfg} --cluster {cluster} info",
        f"pgbackup --config {cfg} --cluster {cluster} restore --source offsite --to {to} \\",
        "    --target-time 'YYYY-MM-DDTHH:MM:SSZ' --start",
        "# no --target-time: to the end of the archive; --archive-mode preserve: a copy that",
        "# becomes the new primary (it archives its new timeline there)",
        "```",
        "",
        "## With the stock tools only (aws, age, zstd, tar, sha256sum)",
        "",
        f"Objects are `{'age(zstd(data))' if enc else 'zstd(data)'}`; each backup's "
        "catalog.json is plain JSON naming its objects and their sha256.",
        "",
        "```sh",
        f"{store.newest_backup()}   # the newest backup: base/DAY/LABEL",
        f"mkdir -m 700 {to}",
        "# Each part is a tar of its own; pg_control's part goes last (a folder without it",
        "# never starts). A backup from before parts has one base.tar instead.",
        f"for part in {store.parts('base/DAY/LABEL', suffix)} pg_control.tar{suffix}; do",
        f"  {store.get('base/DAY/LABEL/$part')} | {_decrypt(config)}zstd -d | tar -x -C {to}",
        "done",
        f"{store.get(f'base/DAY/LABEL/backup_manifest{suffix}')} | {_decrypt(config)}zstd -d \\",
        f"    > {to}/backup_manifest",
        "install -m 755 fetch-wal.sh /usr/local/bin/fetch-wal.sh   # below",
        f"cat >> {to}/postgresql.auto.conf <<'EOF'",
        "restore_command = '/usr/local/bin/fetch-wal.sh %f %p'",
        "recovery_target_action = 'promote'",
        "archive_mode = 'off'",
        "# recovery_target_time = 'YYYY-MM-DD HH:MM:SS+00'",
        "EOF",
        f"touch {to}/recovery.signal && chown -R postgres: {to}",
        f"su postgres -c '{pg_ctl} -D {to} -l {to}/startup.log start'",
        "```",
        "",
        "`fetch-wal.sh`:",
        "",
        "```sh",
        fetch_script(config, cluster).rstrip(),
        "```",
        "",
    ]
    if r and r.get("passed"):
        lines += ["The last rehearsal's phases:", "", "| phase | seconds |", "|---|---:|"]
        lines += [f"| {k} | {v:.1f} |" for k, v in r.get("phases", {}).items()]
        lines.append("")
    return "\n".join(lines)
