"""What ``wal-push`` and ``wal-fetch`` need from the config file, cached so that
archive_command and restore_command (run once per WAL file) do not import and run a YAML
parser on every call.

The cache holds values that are no secret only: the repository folder and its modes, the
age recipients (public keys), the path of the age identity file (not its content), whether
an offsite store is configured, the cluster names and the archive settings; never a DSN, a
webhook URL or anything else that may carry a password. It lives in the OS user's cache
folder (``$XDG_CACHE_HOME/pgbackup`` or ``~/.cache/pgbackup``, mode 0700, files 0600), one
file per config file, and is used only while the config file holds the same bytes (size
and CRC-32 of its content, so an edit within the filesystem's timestamp granularity
counts too) and the environment variables those values were expanded from (``${VAR}``,
``~``) are unchanged. Anything else is a miss: the config is parsed and validated in full,
as every other command does, and the cache written again.

Reading it needs the standard library's basics only: no YAML, dataclasses or pathlib.
"""

import os
from binascii import crc32

CONFIG_ENV = "PGBACKUP_CONFIG"
_FORMAT = "pgbackup-wal-settings 2"
_SCALARS = (
    "repository",
    "files",
    "folders",
    "group",
    "async",
    "spool_dir",
    "parallel",
    "identity_file",
    "offsite",
)


def stamp(data: bytes) -> tuple[int, int]:
    """What tells a config file's content from another: its size and CRC-32."""
    return len(data), crc32(data)


def config_file(explicit: str | os.PathLike[str] | None = None) -> str:
    """The config file from ``--config`` or ``$PGBACKUP_CONFIG``."""
    value = explicit or os.environ.get(CONFIG_ENV)
    if not value:
        from pg_backup_assets.core.errors import ConfigError

        raise ConfigError(f"no config file: pass --config FILE or set {CONFIG_ENV}")
    return os.fspath(value)


def pick_cluster(names: object, name: str | None) -> str:
    """``name`` when the config lists it, or the only cluster when ``name`` is None."""
    if name is None:
        if len(names) == 1:
            return next(iter(names))
        from pg_backup_assets.core.errors import ConfigError

        raise ConfigError(
            f"--cluster is required: the config lists {len(names)} clusters "
            f"({', '.join(sorted(names))})"
        )
    if name not in names:
        from pg_backup_assets.core.errors import ConfigError

        raise ConfigError(
            f"cluster {name!r} is not in the config (known: {', '.join(sorted(names))})"
        )
    return name


class WalSettings:
    """The config as ``wal-push``, the background pusher and ``wal-fetch`` see it."""

    __slots__ = (
        "config",  # the config file, absolute
        "repository",
        "files",
        "folders",
        "group",
        "recipients",
        "clusters",
        "asynchronous",
        "spool_dir",  # the spool of all clusters: <spool_dir>/<cluster>
        "parallel",
        "identity_file",  # the age identity's path ("" without one), never its content
        "offsite",  # an offsite store is configured (wal-fetch falls back to it)
    )

    def __init__(self, **values: object):
        for name in self.__slots__:
            setattr(self, name, values[name])

    @classmethod
    def from_config(cls, config: object, path: str) -> "WalSettings":
        archive, mode = config.archive, config.repository_mode
        return cls(
            config=path,
            repository=str(config.repository),
            files=mode.files,
            folders=mode.folders,
            group=mode.group,
            recipients=tuple(config.encryption.recipients) if config.encryption else (),
            clusters=tuple(config.clusters),
            asynchronous=archive.asynchronous,
            spool_dir=str(archive.spool_root(config.repository)),
            parallel=archive.parallel,
            identity_file=(
                str(config.encryption.identity_file)
                if config.encryption and config.encryption.identity_file
                else ""
            ),
            offsite=config.offsite is not None,
        )

    def cluster(self, name: str | None) -> str:
        return pick_cluster(self.clusters, name)

    def spool(self, cluster: str) -> str:
        return os.path.join(self.spool_dir, cluster)


def load(explicit: str | os.PathLike[str] | None = None) -> WalSettings:
    """The settings from the cache when it is valid; else from the config file, parsed and
    validated in full (a bad config fails exactly as it does for every command)."""
    path = os.path.abspath(config_file(explicit))
    try:
        with open(path, "rb") as f:
            cached = _read(path, f.read())
    except OSError:
        cached = None  # read_config below says what is wrong
    if cached is not None:
        return cached
    from pg_backup_assets.core.config import parse_config, read_config

    source, data, raw = read_config(path)
    config = parse_config(raw, source=source.resolve(), need_dsn_secrets=False)
    settings = WalSettings.from_config(config, path)
    _write(path, data, settings, _referenced(raw))
    return settings


def cache_file(path: str) -> str | None:
    """Where the settings of config file ``path`` (absolute) are cached; None without a
    home folder to cache in."""
    base = os.environ.get("XDG_CACHE_HOME")
    if not base:
        home = os.path.expanduser("~")
        if home == "~":
            return None
        base = os.path.join(home, ".cache")
    name = f"{crc32(path.encode()):08x}-{os.path.basename(path)}"
    return os.path.join(base, "pgbackup", name)


def _read(path: str, data: bytes) -> "WalSettings | None":
    where = cache_file(path)
    if where is None:
        return None
    try:
        with open(where, encoding="utf-8") as f:
            lines = f.read().split("\n")
    except (OSError, ValueError):
        return None
    if not lines or lines[0] != _FORMAT:
        return None
    one: dict[str, str] = {}
    many: dict[str, list[str]] = {"env": [], "noenv": [], "recipient": [], "cluster": []}
    for line in lines[1:]:
        key, _, value = line.partition("\t")
        if key in many:
            many[key].append(value)
        elif key:
            one[key] = value
    try:
        if one["config"] != path or (int(one["bytes"]), int(one["crc32"])) != stamp(data):
            return None
        for ref in many["env"]:
            var, _, value = ref.partition("\t")
            if os.environ.get(var) != value:
                return None
        if any(var in os.environ for var in many["noenv"]):
            return None
        return WalSettings(
            config=path,
            repository=one["repository"],
            files=int(one["files"]),
            folders=int(one["folders"]),
            group=one["group"] or None,
            recipients=tuple(many["recipient"]),
            clusters=tuple(many["cluster"]),
            asynchronous=one["async"] == "1",
            spool_dir=one["spool_dir"],
            parallel=int(one["parallel"]),
            identity_file=one["identity_file"],
            offsite=one["offsite"] == "1",
        )
    except (KeyError, ValueError):
        return None


def _write(path: str, data: bytes, settings: WalSettings, env: dict[str, str | None]) -> None:
    """Cache ``settings`` (parsed from ``data``); quietly nothing when it cannot be."""
    where = cache_file(path)
    if where is None:
        return
    scalars = {
        "repository": settings.repository,
        "files": str(settings.files),
        "folders": str(settings.folders),
        "group": settings.group or "",
        "async": "1" if settings.asynchronous else "0",
        "spool_dir": settings.spool_dir,
        "parallel": str(settings.parallel),
        "identity_file": settings.identity_file,
        "offsite": "1" if settings.offsite else "0",
    }
    size, crc = stamp(data)
    lines = [_FORMAT, f"config\t{path}", f"bytes\t{size}", f"crc32\t{crc}"]
    lines += [
        f"env\t{var}\t{value}" if value is not None else f"noenv\t{var}"
        for var, value in sorted(env.items())
    ]
    lines += [f"{key}\t{scalars[key]}" for key in _SCALARS]
    lines += [f"recipient\t{r}" for r in settings.recipients]
    lines += [f"cluster\t{c}" for c in settings.clusters]
    values = [path, *env, *(v for v in env.values() if v), *scalars.values(), *settings.recipients]
    if any("\t" in v or "\n" in v for v in values):
        return  # not representable: parse the config every time instead
    folder = os.path.dirname(where)
    tmp = f"{where}.tmp-{os.getpid()}"
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
        _prune(folder)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(fd, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        os.replace(tmp, where)
    except OSError:
        _unlink(tmp)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        return


def _prune(folder: str) -> None:
    """Remove the cached settings of config files that no longer exist."""
    for name in os.listdir(folder):
        entry = os.path.join(folder, name)
        try:
            with open(entry, encoding="utf-8") as f:
                head = f.read(4096).split("\n")
            config = head[1].partition("\t")[2] if head[0] == _FORMAT else ""
            if config and not os.path.exists(config):
                os.unlink(entry)
        except (OSError, ValueError, IndexError):
            continue


def _referenced(raw: object) -> dict[str, str | None]:
    """The environment variables the cached values were expanded from, with their values
    (None: unset; none of them is in a secret field)."""
    import re

    texts: list[object] = []
    if isinstance(raw, dict):
        texts.append(raw.get("repository"))
        mode = raw.get("repository_mode")
        if isinstance(mode, dict):
            texts.append(mode.get("group"))
        enc = raw.get("encryption")
        if isinstance(enc, dict) and isinstance(enc.get("recipients"), list):
            texts += enc["recipients"]
        if isinstance(enc, dict):
            texts.append(enc.get("identity_file"))
        archive = raw.get("archive")
        if isinstance(archive, dict):
            texts.append(archive.get("spool_dir"))
    env: dict[str, str | None] = {}
    for text in texts:
        if not isinstance(text, str):
            continue
        names = re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", text)
        if text.startswith("~"):
            names.append("HOME")
        for var in names:
            env[var] = os.environ.get(var)
    return env
