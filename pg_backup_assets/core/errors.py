"""Errors the engine raises. Each message says what happened, to what, and what to do next."""


class PgBackupError(Exception):
    """Base class; the CLI prints the message and exits non-zero."""


class ConfigError(PgBackupError):
    """The configuration file is missing, unreadable or invalid (the message names the key)."""


class IntegrityError(PgBackupError):
    """A stored object does not match its recorded checksum, or cannot be decoded."""


class NotFoundError(PgBackupError):
    """The requested backup, dump or object is not in the repository."""


class CommandError(PgBackupError):
    """An external PostgreSQL tool (pg_dump, pg_restore, initdb, ...) failed."""
