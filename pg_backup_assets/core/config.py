"""Load and validate the YAML configuration (see DESIGN §3).

Every problem is reported as one line that names the key at fault. Strings may use
``${VAR}`` to take secrets from the environment; secrets are never echoed back.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from pg_backup_assets.core.config_cache import config_file, pick_cluster
from pg_backup_assets.core.errors import ConfigError

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]*$")
_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
# Dagster's rules for asset tags (keys with an optional namespace, short plain values) and
# owners (an email address or a team), checked here so that a bad one is a config error.
_TAG_KEY = re.compile(r"^([A-Za-z0-9_.-]{1,63}/)?[A-Za-z0-9_.-]{1,63}$")
_TAG_VALUE = re.compile(r"^[A-Za-z0-9_.-]{0,63}$")
_EMAIL = re.compile(r"^[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,7}$")
RESERVED_TAG_PREFIXES = ("dagster/", "pgbackup/")


def dagster_name(cluster: str) -> str:
    """A cluster name as Dagster's group and job names allow it (``^[A-Za-z0-9_]+$``)."""
    return cluster.replace("-", "_")


@dataclass(frozen=True)
class S3Offsite:
    bucket: str
    prefix: str = ""
    endpoint_url: str | None = None
    region: str | None = None
    object_lock_days: int = 0
    max_attempts: int = 10  # botocore's retries ("standard" mode), CLI and assets alike


@dataclass(frozen=True)
class Offsite:
    s3: S3Offsite | None = None
    path: Path | None = None


@dataclass(frozen=True)
class Encryption:
    recipients: tuple[str, ...]
    identity_file: Path | None = None


@dataclass(frozen=True)
class ClusterConfig:
    name: str
    dsn: str
    databases: tuple[str, ...] | None = None  # None: every non-template database
    rpo_seconds: int = 300
    rto_seconds: int = 1800
    # The database server it runs on, for "at most N backups at once per host"; None: the
    # DSN's host (core.postgres.client.db_host).
    db_host: str | None = None
    owners: tuple[str, ...] = ()  # shown on every asset of the cluster: emails, "team:NAME"
    tags: tuple[tuple[str, str], ...] = ()  # asset tags of every asset of the cluster
    description: str | None = None  # what the cluster is, in the operator's words (the UI)


@dataclass(frozen=True)
class Retention:
    daily: int = 14
    weekly: int = 8
    monthly: int = 12
    yearly: int = 7


ALERT_FORMATS = ("json", "slack")


@dataclass(frozen=True)
class Alerts:
    webhook_url: str | None = None  # a secret (Slack's URLs are): never logged
    format: str = "json"  # or "slack": {"text": ...}
    ui_url: str | None = None  # the Dagster UI's address, for links in alerts
    mute: tuple[str, ...] = ()  # patterns like "main/logical_dump:size_anomaly", "*/three_two_one"


@dataclass(frozen=True)
class Sensors:
    wal_archive_interval_seconds: int = 60
    offsite_wal_interval_seconds: int = 60
    alert_interval_seconds: int = 30


@dataclass(frozen=True)
class Schedules:
    daily: str = "30 2 * * *"  # cron of the daily backup run
    weekly: str = "0 4 * * 0"  # cron of the weekly restore rehearsal (Sunday 04:00)
    timezone: str = "UTC"
    start_date: str | None = None  # the first daily partition; None: see partition_start


@dataclass(frozen=True)
class SmokeQuery:
    database: str
    sql: str
    expect: str  # the first column of the first row, as text
    cluster: str | None = None  # None: every cluster


@dataclass(frozen=True)
class Rehearsal:
    queries: tuple[SmokeQuery, ...] = ()
    digests: bool = True  # a content digest per table (a full read of each, source and copy)
    amcheck: bool = True  # pg_amcheck --heapallindexed on every database of the copy
    lock_timeout_ms: int = 200  # pinning the reference: how long one table lock may wait
    lock_attempts: int = 20  # ... and how often to try before comparing by presence only


@dataclass(frozen=True)
class Timeouts:
    lock_wait_seconds: int = 300  # pg_dump --lock-wait-timeout
    archive_wait_seconds: int = 600  # how long pg_basebackup may wait for WAL archiving
    run_seconds: int = 6 * 3600  # every Dagster run's dagster/max_runtime


@dataclass(frozen=True)
class RepositoryMode:
    """Who may read the repository: the Dagster user and the postgres user share it."""

    files: int = 0o640
    folders: int = 0o750
    group: str | None = None  # every object and folder is given to this group


MAX_PARALLEL = 64


@dataclass(frozen=True)
class BaseBackupLayout:
    """How a base backup is stored: in parts of about ``part_size_mib`` (compressed here,
    restored in parallel), or with ``parts`` off as one stream compressed by the server
    (the layout before parts; restored on one core)."""

    parts: bool = True
    part_size_mib: int = 128


PART_SIZE_MIB = (16, 4096)


@dataclass(frozen=True)
class Archive:
    """How ``wal-push`` archives: in the call (the default), or ``asynchronous``: a
    background pusher started by the first call pushes every segment PostgreSQL has marked
    ready with ``parallel`` workers, and a call returns once its own segment is durable."""

    asynchronous: bool = False
    spool_dir: Path | None = None  # None: the repository's .spool folder
    parallel: int = 2

    def spool_root(self, repository: Path) -> Path:
        """The folder that holds every cluster's spool."""
        return self.spool_dir or repository / SPOOL

    def spool(self, repository: Path, cluster: str) -> Path:
        """The spool folder of ``cluster``: the pusher's lock, log and segment statuses."""
        return self.spool_root(repository) / cluster


SPOOL = ".spool"


@dataclass(frozen=True)
class Config:
    repository: Path
    clusters: dict[str, ClusterConfig]
    offsite: Offsite | None = None
    encryption: Encryption | None = None
    retention: Retention = field(default_factory=Retention)
    alerts: Alerts = field(default_factory=Alerts)
    sensors: Sensors = field(default_factory=Sensors)
    schedules: Schedules = field(default_factory=Schedules)
    timeouts: Timeouts = field(default_factory=Timeouts)
    repository_mode: RepositoryMode = field(default_factory=RepositoryMode)
    rehearsal: Rehearsal = field(default_factory=Rehearsal)
    archive: Archive = field(default_factory=Archive)
    base_backup: BaseBackupLayout = field(default_factory=BaseBackupLayout)
    scratch_dir: Path | None = None  # where verification extracts; default: the repository's
    source: Path | None = None

    def cluster(self, name: str | None) -> ClusterConfig:
        """The named cluster, or the only one when ``name`` is None."""
        return self.clusters[pick_cluster(self.clusters, name)]


def config_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The config file from ``--config`` or ``$PGBACKUP_CONFIG``."""
    return Path(config_file(explicit))


def load_config(
    path: str | os.PathLike[str] | None = None, need_dsn_secrets: bool = True
) -> Config:
    """Read, expand and validate the config file.

    ``need_dsn_secrets=False`` (wal-push, wal-fetch): a ``${VAR}`` in a cluster's DSN that
    is not set is left as it is, since archive_command never connects to the server and
    must not fail for a password it does not use.
    """
    source, _, raw = read_config(path)
    return parse_config(raw, source=source.resolve(), need_dsn_secrets=need_dsn_secrets)


def read_config(path: str | os.PathLike[str] | None = None) -> tuple[Path, bytes, Any]:
    """The config file's path, its bytes and the YAML document they hold (not validated)."""
    source = config_path(path)
    try:
        data = source.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {source}: {exc.strerror}") from None
    try:
        raw = yaml.safe_load(data)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config file {source} is not valid YAML{where}") from None
    return source, data, raw


def parse_config(raw: Any, source: Path | None = None, need_dsn_secrets: bool = True) -> Config:
    """Validate an already-parsed YAML document."""
    top = _mapping(raw, "(top level)")
    _only(
        top,
        "",
        required={"repository", "clusters"},
        optional={
            "offsite",
            "encryption",
            "retention",
            "alerts",
            "sensors",
            "schedules",
            "timeouts",
            "repository_mode",
            "archive",
            "scratch_dir",
            "rehearsal",
            "base_backup",
        },
    )
    base = source.parent if source else Path.cwd()
    repository = _path(top["repository"], "repository", base)

    clusters_raw = _mapping(top["clusters"], "clusters")
    if not clusters_raw:
        raise ConfigError("config key 'clusters': list at least one cluster")
    clusters = {
        name: _cluster(name, value, need_dsn_secrets) for name, value in clusters_raw.items()
    }
    _distinct_dagster_names(clusters)

    offsite = _offsite(top["offsite"], base) if top.get("offsite") is not None else None
    encryption = _encryption(top["encryption"], base) if top.get("encryption") is not None else None
    retention = _retention(top.get("retention") or {})
    sensors = Sensors(**_positive_ints(top.get("sensors"), "sensors", Sensors()))
    timeouts = Timeouts(**_positive_ints(top.get("timeouts"), "timeouts", Timeouts()))
    return Config(
        repository=repository,
        clusters=clusters,
        offsite=offsite,
        encryption=encryption,
        retention=retention,
        alerts=_alerts(top.get("alerts") or {}),
        sensors=sensors,
        schedules=_schedules(top.get("schedules") or {}),
        timeouts=timeouts,
        repository_mode=_repository_mode(top.get("repository_mode") or {}),
        rehearsal=_rehearsal(top.get("rehearsal") or {}, clusters),
        archive=_archive(top.get("archive") or {}, base),
        base_backup=_base_backup(top.get("base_backup") or {}),
        scratch_dir=_path(top["scratch_dir"], "scratch_dir", base)
        if top.get("scratch_dir")
        else None,
        source=source,
    )


def _repository_mode(value: Any) -> RepositoryMode:
    body = _mapping(value, "repository_mode")
    _only(body, "repository_mode", optional={"files", "folders", "group"})
    files = _mode(body.get("files", "0640"), "repository_mode.files", allowed=0o666)
    folders = _mode(body.get("folders", "0750"), "repository_mode.folders", allowed=0o777)
    if folders & 0o700 != 0o700 or files & 0o600 != 0o600:
        raise ConfigError(
            "config key 'repository_mode': the owner needs read and write on files and "
            "read, write and search (7) on folders"
        )
    group = body.get("group")
    if group is not None:
        group = _str(group, "repository_mode.group")
        import grp

        try:
            grp.getgrnam(group)
        except KeyError:
            raise ConfigError(
                f"config key 'repository_mode.group': there is no OS group {group!r}"
            ) from None
    return RepositoryMode(files, folders, group)


def _archive(value: Any, base: Path) -> Archive:
    body = _mapping(value, "archive")
    _only(body, "archive", optional={"async", "spool_dir", "parallel"})
    asynchronous = body.get("async", False)
    if not isinstance(asynchronous, bool):
        raise ConfigError(
            f"config key 'archive.async': expected true or false, got {_kind(asynchronous)}"
        )
    parallel = _positive_int(body.get("parallel", Archive.parallel), "archive.parallel")
    if parallel > MAX_PARALLEL:
        raise ConfigError(
            f"config key 'archive.parallel': expected a whole number from 1 to {MAX_PARALLEL} "
            f"(workers pushing segments at once), got {parallel}"
        )
    spool = body.get("spool_dir")
    return Archive(
        asynchronous=asynchronous,
        spool_dir=_path(spool, "archive.spool_dir", base) if spool is not None else None,
        parallel=parallel,
    )


def _base_backup(value: Any) -> BaseBackupLayout:
    body = _mapping(value, "base_backup")
    _only(body, "base_backup", optional={"layout", "part_size_mib"})
    layout = body.get("layout", "parts")
    if layout not in ("parts", "single"):
        raise ConfigError(
            f"config key 'base_backup.layout': expected parts or single, got {layout!r}"
        )
    size = body.get("part_size_mib", BaseBackupLayout.part_size_mib)
    low, high = PART_SIZE_MIB
    if isinstance(size, bool) or not isinstance(size, int) or not low <= size <= high:
        raise ConfigError(
            f"config key 'base_backup.part_size_mib': expected a whole number of MiB from "
            f"{low} to {high}, got {size!r}"
        )
    return BaseBackupLayout(parts=layout == "parts", part_size_mib=size)


def _mode(value: Any, key: str, allowed: int) -> int:
    # YAML 1.1 reads an unquoted 0640 as the octal number it is; a string is octal too.
    if isinstance(value, str) and re.fullmatch(r"0?[0-7]{3}", value):
        value = int(value, 8)
    if isinstance(value, bool) or not isinstance(value, int) or value & ~allowed:
        raise ConfigError(
            f"config key {key!r}: expected an octal mode within {allowed:04o}, e.g. "
            f"'{allowed & 0o750:04o}', got {value!r}"
        )
    return value


def _distinct_dagster_names(clusters: dict[str, ClusterConfig]) -> None:
    seen: dict[str, str] = {}
    for name in clusters:
        other = seen.setdefault(dagster_name(name), name)
        if other != name:
            raise ConfigError(
                f"config key 'clusters.{name}': clusters {other!r} and {name!r} would share the "
                f"Dagster group name {dagster_name(name)!r} ('-' becomes '_'); rename one"
            )


def _positive_ints(value: Any, key: str, defaults: Any) -> dict[str, int]:
    """A mapping of whole numbers > 0 whose keys are the fields of ``defaults``."""
    body = _mapping(value or {}, key)
    names = set(defaults.__dataclass_fields__)
    _only(body, key, optional=names)
    return {k: _positive_int(body.get(k, getattr(defaults, k)), f"{key}.{k}") for k in names}


def _alerts(value: Any) -> Alerts:
    body = _mapping(value, "alerts")
    _only(body, "alerts", optional={"webhook_url", "format", "ui_url", "mute"})
    fmt = body.get("format", "json")
    if fmt not in ALERT_FORMATS:
        raise ConfigError(
            f"config key 'alerts.format': expected one of {', '.join(ALERT_FORMATS)}, got {fmt!r}"
        )
    mute = body.get("mute") or []
    if not isinstance(mute, list) or not all(isinstance(m, str) and m for m in mute):
        raise ConfigError("config key 'alerts.mute': expected a list of patterns")
    return Alerts(
        # The webhook URL is a secret (Slack's carry their token): never shown back.
        webhook_url=_url(body.get("webhook_url"), "alerts.webhook_url", secret=True),
        format=fmt,
        ui_url=_url(body.get("ui_url"), "alerts.ui_url"),
        mute=tuple(mute),
    )


def _url(value: Any, key: str, secret: bool = False) -> str | None:
    if value is None:
        return None
    url = _str(value, key, secret=secret)
    if not re.match(r"^https?://[^\s/]+", url):
        shown = "a value that is not one" if secret else repr(url)
        raise ConfigError(f"config key {key!r}: expected an http(s):// URL, got {shown}")
    return url.rstrip("/")


def _schedules(value: Any) -> Schedules:
    body = _mapping(value, "schedules")
    _only(body, "schedules", optional={"daily", "weekly", "timezone", "start_date"})
    daily = _cron(body.get("daily", Schedules.daily), "schedules.daily")
    weekly = _cron(body.get("weekly", Schedules.weekly), "schedules.weekly")
    timezone = _str(body.get("timezone", "UTC"), "schedules.timezone")
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(
            f"config key 'schedules.timezone': {timezone!r} is not an IANA time zone "
            "(e.g. UTC, Europe/Berlin)"
        ) from None
    start = body.get("start_date")
    if start is not None:
        # YAML reads an unquoted 2026-11-01 as a date.
        start = start.isoformat() if isinstance(start, dt.date) else start
        if not isinstance(start, str) or not _DAY.match(start):
            raise ConfigError(
                f"config key 'schedules.start_date': expected a day as YYYY-MM-DD, got {start!r}"
            )
        try:
            dt.date.fromisoformat(start)
        except ValueError:
            raise ConfigError(f"config key 'schedules.start_date': no such day {start!r}") from None
    return Schedules(daily=daily, weekly=weekly, timezone=timezone, start_date=start)


def _rehearsal(value: Any, clusters: dict[str, ClusterConfig]) -> Rehearsal:
    body = _mapping(value, "rehearsal")
    _only(
        body,
        "rehearsal",
        optional={"queries", "digests", "amcheck", "lock_timeout_ms", "lock_attempts"},
    )
    queries = []
    raw = body.get("queries") or []
    if not isinstance(raw, list):
        raise ConfigError("config key 'rehearsal.queries': expected a list")
    for i, q in enumerate(raw):
        key = f"rehearsal.queries[{i}]"
        q = _mapping(q, key)
        _only(q, key, required={"database", "sql", "expect"}, optional={"cluster"})
        cluster = _opt_str(q.get("cluster"), f"{key}.cluster")
        if cluster is not None and cluster not in clusters:
            raise ConfigError(f"config key '{key}.cluster': no cluster {cluster!r} is configured")
        expect = q["expect"]
        if isinstance(expect, bool):
            expect = "t" if expect else "f"  # PostgreSQL's text for a boolean
        queries.append(
            SmokeQuery(
                _str(q["database"], f"{key}.database"),
                _str(q["sql"], f"{key}.sql"),
                str(expect),
                cluster,
            )
        )
    flags = {}
    for flag in ("digests", "amcheck"):
        if flag in body:
            if not isinstance(body[flag], bool):
                raise ConfigError(f"config key 'rehearsal.{flag}': expected true or false")
            flags[flag] = body[flag]
    return Rehearsal(
        queries=tuple(queries),
        lock_timeout_ms=_positive_int(
            body.get("lock_timeout_ms", 200), "rehearsal.lock_timeout_ms"
        ),
        lock_attempts=_positive_int(body.get("lock_attempts", 20), "rehearsal.lock_attempts"),
        **flags,
    )


_CRON_FIELDS = (
    ("minute", 0, 59),
    ("hour", 0, 23),
    ("day of month", 1, 31),
    ("month", 1, 12),
    ("day of week", 0, 7),
)


def _cron(value: Any, key: str) -> str:
    """A five-field cron expression of numbers, ``*``, ranges, steps and lists."""
    text = _str(value, key)
    fields = text.split()
    if len(fields) != 5:
        raise ConfigError(
            f"config key {key!r}: expected a cron expression with 5 fields "
            f"(minute hour day-of-month month day-of-week), got {text!r}"
        )
    for field_text, (what, low, high) in zip(fields, _CRON_FIELDS, strict=True):
        for part in field_text.split(","):
            m = re.match(r"^(\*|(\d+)(?:-(\d+))?)(?:/(\d+))?$", part)
            numbers = [int(g) for g in (m.group(2, 3) if m else ()) if g is not None]
            if (
                not m
                or any(n < low or n > high for n in numbers)
                or (m.group(4) is not None and int(m.group(4)) == 0)
            ):
                raise ConfigError(
                    f"config key {key!r}: {part!r} is not a valid {what} field "
                    f"({low}-{high}, '*', ranges a-b, steps /n and lists a,b) in {text!r}"
                )
    return text


def _cluster(name: Any, value: Any, need_dsn_secrets: bool = True) -> ClusterConfig:
    key = f"clusters.{name}"
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(
            f"config key {key!r}: a cluster name must start with a letter and use only "
            "letters, digits, '_' and '-' (it becomes the Dagster asset key prefix)"
        )
    body = _mapping(value, key)
    _only(
        body,
        key,
        required={"dsn"},
        optional={
            "databases",
            "rpo_seconds",
            "rto_seconds",
            "db_host",
            "owners",
            "tags",
            "description",
        },
    )
    dsn = _str(body["dsn"], f"{key}.dsn", secret=True, strict=need_dsn_secrets)
    databases = None
    if body.get("databases") is not None:
        dbs = body["databases"]
        if not isinstance(dbs, list) or not dbs or not all(isinstance(d, str) and d for d in dbs):
            raise ConfigError(
                f"config key '{key}.databases': expected a non-empty list of database names"
            )
        databases = tuple(dbs)
    return ClusterConfig(
        name=name,
        dsn=dsn,
        databases=databases,
        rpo_seconds=_positive_int(body.get("rpo_seconds", 300), f"{key}.rpo_seconds"),
        rto_seconds=_positive_int(body.get("rto_seconds", 1800), f"{key}.rto_seconds"),
        db_host=_db_host(body.get("db_host"), f"{key}.db_host"),
        owners=_owners(body.get("owners"), f"{key}.owners"),
        tags=_tags(body.get("tags"), f"{key}.tags"),
        description=_opt_str(body.get("description"), f"{key}.description"),
    )


def _db_host(value: Any, key: str) -> str | None:
    if value is None:
        return None
    host = _str(value, key)
    if not _TAG_VALUE.match(host):
        raise ConfigError(
            f"config key {key!r}: expected a host name of letters, digits, '.', '-' and '_' "
            f"(at most 63), got {host!r}"
        )
    return host


def _owners(value: Any, key: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ConfigError(f"config key {key!r}: expected a list, got {_kind(value)}")
    for i, owner in enumerate(value):
        team = isinstance(owner, str) and owner.startswith("team:") and len(owner) > 5
        if not (team or (isinstance(owner, str) and _EMAIL.match(owner))):
            raise ConfigError(
                f"config key '{key}[{i}]': expected an email address or 'team:NAME', "
                f"got {_kind(owner)}"
            )
    return tuple(value)


def _tags(value: Any, key: str) -> tuple[tuple[str, str], ...]:
    body = _mapping(value if value is not None else {}, key)
    tags = []
    for k, v in body.items():
        if not isinstance(k, str) or not _TAG_KEY.match(k):
            raise ConfigError(
                f"config key '{key}.{k}': a tag name is letters, digits, '.', '-' and '_' (at "
                "most 63), with an optional 'namespace/' before it"
            )
        if k.startswith(RESERVED_TAG_PREFIXES):
            raise ConfigError(
                f"config key '{key}.{k}': tags starting with "
                f"{' or '.join(RESERVED_TAG_PREFIXES)} are set by pg-backup-assets itself"
            )
        if isinstance(v, int) and not isinstance(v, bool):
            v = str(v)
        if not isinstance(v, str) or not _TAG_VALUE.match(v):
            raise ConfigError(
                f"config key '{key}.{k}': a tag value is letters, digits, '.', '-' and '_' "
                f"(at most 63), got {_kind(v)}"
            )
        tags.append((k, v))
    return tuple(tags)


def _offsite(value: Any, base: Path) -> Offsite:
    body = _mapping(value, "offsite")
    _only(body, "offsite", optional={"s3", "path"})
    if ("s3" in body) == ("path" in body):
        raise ConfigError("config key 'offsite': give exactly one of 's3' or 'path'")
    if "path" in body:
        return Offsite(path=_path(body["path"], "offsite.path", base))
    s3 = _mapping(body["s3"], "offsite.s3")
    _only(
        s3,
        "offsite.s3",
        required={"bucket"},
        optional={"prefix", "endpoint_url", "region", "object_lock_days", "max_attempts"},
    )
    lock = s3.get("object_lock_days", 0)
    if lock != 0:
        lock = _positive_int(lock, "offsite.s3.object_lock_days")
    return Offsite(
        s3=S3Offsite(
            bucket=_str(s3["bucket"], "offsite.s3.bucket"),
            prefix=_opt_str(s3.get("prefix"), "offsite.s3.prefix") or "",
            endpoint_url=_opt_str(s3.get("endpoint_url"), "offsite.s3.endpoint_url"),
            region=_opt_str(s3.get("region"), "offsite.s3.region"),
            object_lock_days=lock,
            max_attempts=_positive_int(s3.get("max_attempts", 10), "offsite.s3.max_attempts"),
        )
    )


def _encryption(value: Any, base: Path) -> Encryption:
    body = _mapping(value, "encryption")
    _only(body, "encryption", required={"recipients"}, optional={"identity_file"})
    recipients = body["recipients"]
    if not isinstance(recipients, list) or not recipients:
        raise ConfigError(
            "config key 'encryption.recipients': expected a non-empty list of age recipients"
        )
    checked = []
    for i, r in enumerate(recipients):
        r = _str(r, f"encryption.recipients[{i}]")
        if not (r.startswith("age1") or r.startswith("ssh-")):
            raise ConfigError(
                f"config key 'encryption.recipients[{i}]': not an age recipient "
                "(expected 'age1...' or an ssh public key)"
            )
        checked.append(r)
    identity = body.get("identity_file")
    return Encryption(
        recipients=tuple(checked),
        identity_file=_path(identity, "encryption.identity_file", base) if identity else None,
    )


def _retention(value: Any) -> Retention:
    body = _mapping(value, "retention")
    _only(body, "retention", optional={"daily", "weekly", "monthly", "yearly"})
    out = {}
    for tier in ("daily", "weekly", "monthly", "yearly"):
        if tier in body:
            v = body[tier]
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ConfigError(
                    f"config key 'retention.{tier}': expected a whole number >= 0, got {v!r}"
                )
            out[tier] = v
    return Retention(**out)


def _expand(value: str, key: str, strict: bool = True) -> str:
    def sub(m: re.Match[str]) -> str:
        var = m.group(1)
        if var not in os.environ:
            if not strict:
                return m.group(0)
            raise ConfigError(f"config key {key!r}: environment variable {var} is not set")
        return os.environ[var]

    return _VAR.sub(sub, value)


def _mapping(value: Any, key: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"config key {key!r}: expected a mapping, got {_kind(value)}")
    return value


def _only(
    body: dict[str, Any],
    key: str,
    required: set[str] = frozenset(),
    optional: set[str] = frozenset(),
) -> None:
    prefix = f"{key}." if key else ""
    for k in body:
        if k not in required and k not in optional:
            allowed = ", ".join(sorted(required | optional))
            raise ConfigError(f"unknown config key '{prefix}{k}' (allowed here: {allowed})")
    for k in sorted(required):
        if body.get(k) is None:
            raise ConfigError(f"missing required config key '{prefix}{k}'")


def _str(value: Any, key: str, secret: bool = False, strict: bool = True) -> str:
    if not isinstance(value, str) or not value.strip():
        shown = "a secret" if secret else _kind(value)
        raise ConfigError(f"config key {key!r}: expected a non-empty string, got {shown}")
    return _expand(value, key, strict)


def _opt_str(value: Any, key: str) -> str | None:
    return None if value is None else _str(value, key)


def _path(value: Any, key: str, base: Path) -> Path:
    p = Path(_str(value, key)).expanduser()
    return p if p.is_absolute() else (base / p)


def _positive_int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"config key {key!r}: expected a whole number > 0, got {value!r}")
    return value


def _kind(value: Any) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"{type(value).__name__} {value!r}"
