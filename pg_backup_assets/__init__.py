"""PostgreSQL backup and restore run as a Dagster asset graph."""

__version__ = "0.1.0"
