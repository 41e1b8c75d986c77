"""The database host a cluster runs on: the key of its concurrency limits."""

import pytest

from pg_backup_assets.core.errors import ConfigError
from pg_backup_assets.core.postgres.client import db_host


@pytest.mark.parametrize(
    "dsn, host",
    [
        ("host=db-1.internal port=5432 user=backup", "db-1.internal"),
        ("host=10.0.0.5 port=5433", "10.0.0.5"),
        ("postgresql://backup@db-2.internal:5432/app", "db-2.internal"),
        ("hostaddr=10.0.0.7 port=5432", "10.0.0.7"),
        ("host=primary,standby port=5432,5432", "primary"),  # libpq tries the first first
        ("host=/var/run/postgresql", "localhost"),  # a Unix socket: this machine
        ("dbname=app", "localhost"),  # libpq's default is the local socket
        ("host=::1", "__1"),
    ],
)
def test_the_host_comes_from_the_dsn(dsn, host):
    assert db_host(dsn) == host


def test_the_config_names_it_when_the_dsn_cannot():
    # Two names of one machine are two hosts to Dagster unless the config says otherwise.
    assert db_host("host=db-1.internal", explicit="db-1") == "db-1"


def test_an_unparseable_dsn_is_not_echoed():
    with pytest.raises(ConfigError) as exc:
        db_host("host='oops password=hunter2")
    assert "hunter2" not in str(exc.value)
