from pathlib import Path

import pytest
import yaml

from pg_backup_assets.core.config import load_config, parse_config
from pg_backup_assets.core.errors import ConfigError
from pg_backup_assets.core.postgres.client import redact_dsn, split_dsn

DESIGN_EXAMPLE = """
repository: /var/lib/pgbackup/repo
offsite:
  s3: {bucket: pg-offsite, prefix: prod/, endpoint_url: null, region: us-east-1,
       object_lock_days: 0}
encryption:
  recipients: [age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p]
  identity_file: /etc/pgbackup/age.key
clusters:
  main:
    dsn: "host=127.0.0.1 port=5432 user=postgres"
    databases: [app]
    rpo_seconds: 300
    rto_seconds: 1800
retention: {daily: 14, weekly: 8, monthly: 12, yearly: 7}
alerts: {webhook_url: null}
"""


def parse(text: str):
    return parse_config(yaml.safe_load(text), source=Path("/etc/pgbackup/pgbackup.yaml"))


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as exc:
        parse(text)
    return str(exc.value)


def test_design_example_loads():
    config = parse(DESIGN_EXAMPLE)
    main = config.cluster(None)
    assert main.name == "main"
    assert main.databases == ("app",)
    assert main.rpo_seconds == 300
    assert config.offsite.s3.bucket == "pg-offsite"
    assert config.offsite.s3.endpoint_url is None
    assert config.encryption.identity_file == Path("/etc/pgbackup/age.key")
    assert config.retention.weekly == 8


def test_defaults_and_relative_repository():
    config = parse("repository: repo\nclusters: {c1: {dsn: 'host=x'}}\n")
    c1 = config.cluster("c1")
    assert c1.databases is None  # all non-template databases
    assert (c1.rpo_seconds, c1.rto_seconds) == (300, 1800)
    assert config.repository == Path("/etc/pgbackup/repo")  # relative to the config file
    assert config.retention.daily == 14


@pytest.mark.parametrize(
    "text, named",
    [
        ("repository: r\nclusters: {main: {dsn: x}}\nrepositry: typo\n", "'repositry'"),
        ("repository: r\nclusters: {main: {dsn: x, rpo: 5}}\n", "'clusters.main.rpo'"),
        ("repository: r\nclusters: {main: {dsn: x}}\nretention: {daly: 3}\n", "'retention.daly'"),
        (
            "repository: r\nclusters: {main: {dsn: x}}\noffsite: {s3: {bucket: b, acl: x}}\n",
            "'offsite.s3.acl'",
        ),
    ],
)
def test_unknown_key_is_named(text, named):
    message = error_of(text)
    assert "unknown config key" in message and named in message


@pytest.mark.parametrize(
    "text, named",
    [
        ("clusters: {main: {dsn: x}}\n", "'repository'"),
        ("repository: r\n", "'clusters'"),
        ("repository: r\nclusters: {main: {databases: [a]}}\n", "'clusters.main.dsn'"),
        (
            "repository: r\nclusters: {main: {dsn: x}}\noffsite: {s3: {prefix: p}}\n",
            "'offsite.s3.bucket'",
        ),
    ],
)
def test_missing_key_is_named(text, named):
    message = error_of(text)
    assert "missing required config key" in message and named in message


@pytest.mark.parametrize(
    "text, named",
    [
        (
            "repository: r\nclusters: {main: {dsn: x, rpo_seconds: -5}}\n",
            "clusters.main.rpo_seconds",
        ),
        (
            "repository: r\nclusters: {main: {dsn: x, rto_seconds: soon}}\n",
            "clusters.main.rto_seconds",
        ),
        ("repository: r\nclusters: {main: {dsn: x, databases: app}}\n", "clusters.main.databases"),
        (
            "repository: r\nclusters: {main: {dsn: x}}\nretention: {weekly: -1}\n",
            "retention.weekly",
        ),
        (
            "repository: r\nclusters: {main: {dsn: x}}\nencryption: {recipients: [nope]}\n",
            "encryption.recipients[0]",
        ),
        ("repository: r\nclusters: {'bad name': {dsn: x}}\n", "clusters.bad name"),
        ("repository: r\nclusters: {}\n", "clusters"),
        (
            "repository: r\nclusters: {main: {dsn: x}}\noffsite: {path: /a, s3: {bucket: b}}\n",
            "offsite",
        ),
        ("repository: [1]\nclusters: {main: {dsn: x}}\n", "repository"),
        (
            "repository: r\nclusters: {main: {dsn: x}}\nbase_backup: {layout: zip}\n",
            "base_backup.layout",
        ),
        (
            "repository: r\nclusters: {main: {dsn: x}}\nbase_backup: {part_size_mib: 8}\n",
            "base_backup.part_size_mib",
        ),
        (
            "repository: r\nclusters: {main: {dsn: x}}\nbase_backup: {part_size_mib: big}\n",
            "base_backup.part_size_mib",
        ),
    ],
)
def test_bad_value_is_named(text, named):
    assert f"'{named}'" in error_of(text)


def test_base_backup_layout():
    default = parse("repository: r\nclusters: {main: {dsn: x}}\n").base_backup
    assert default.parts and default.part_size_mib == 128
    single = parse(
        "repository: r\nclusters: {main: {dsn: x}}\nbase_backup: {layout: single}\n"
    ).base_backup
    assert not single.parts
    assert "'base_backup.size'" in error_of(
        "repository: r\nclusters: {main: {dsn: x}}\nbase_backup: {size: 1}\n"
    )


def test_env_expansion(monkeypatch):
    monkeypatch.setenv("PGB_TEST_PASSWORD", "s3cr3t")
    config = parse(
        "repository: r\nclusters: {main: {dsn: 'host=h password=${PGB_TEST_PASSWORD}'}}\n"
    )
    assert "password=s3cr3t" in config.cluster("main").dsn


def test_unset_variable_is_named(monkeypatch):
    monkeypatch.delenv("PGB_UNSET_VAR", raising=False)
    message = error_of("repository: r\nclusters: {main: {dsn: 'password=${PGB_UNSET_VAR}'}}\n")
    assert "PGB_UNSET_VAR" in message and "clusters.main.dsn" in message


def test_bad_dsn_value_does_not_echo_it():
    message = error_of("repository: r\nclusters: {main: {dsn: 12345}}\n")
    assert "12345" not in message and "clusters.main.dsn" in message


def test_config_file_errors(tmp_path, monkeypatch):
    monkeypatch.delenv("PGBACKUP_CONFIG", raising=False)
    with pytest.raises(ConfigError, match="PGBACKUP_CONFIG"):
        load_config(None)
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("repository: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_cluster_selection():
    config = parse("repository: r\nclusters: {a: {dsn: x}, b: {dsn: y}}\n")
    with pytest.raises(ConfigError, match="--cluster is required"):
        config.cluster(None)
    with pytest.raises(ConfigError, match="'c' is not in the config"):
        config.cluster("c")


def test_passwords_are_redacted_and_kept_out_of_argv():
    dsn = "host=db.example port=5432 user=app password=hunter2 dbname=x"
    assert "hunter2" not in redact_dsn(dsn)
    assert "password=***" in redact_dsn(dsn)
    assert "hunter2" not in redact_dsn("postgresql://app:hunter2@db.example/x")
    conninfo, env = split_dsn(dsn)
    assert "hunter2" not in conninfo
    assert env["PGPASSWORD"] == "hunter2" and "hunter2" not in str(env.get("PGCONNECT_TIMEOUT"))


def test_archive_commands_do_not_need_dsn_secrets(monkeypatch, tmp_path):
    monkeypatch.delenv("PGB_UNSET_VAR", raising=False)
    path = tmp_path / "c.yaml"
    path.write_text("repository: r\nclusters: {main: {dsn: 'password=${PGB_UNSET_VAR}'}}\n")
    with pytest.raises(ConfigError, match="PGB_UNSET_VAR"):
        load_config(path)
    config = load_config(path, need_dsn_secrets=False)
    assert config.cluster("main").dsn == "password=${PGB_UNSET_VAR}"


BASE = "repository: r\nclusters: {main: {dsn: x}}\n"


def test_schedule_alert_and_timeout_defaults():
    config = parse(BASE)
    assert (config.schedules.daily, config.schedules.timezone) == ("30 2 * * *", "UTC")
    assert config.schedules.start_date is None  # the oldest backup's day, else today
    assert config.alerts.webhook_url is None and config.alerts.format == "json"
    assert config.timeouts.lock_wait_seconds == 300
    assert config.timeouts.archive_wait_seconds == 600
    assert config.sensors.alert_interval_seconds == 30


def test_schedules_alerts_timeouts_are_read():
    config = parse(
        BASE
        + "schedules: {daily: '15 1 * * 1-5', timezone: Europe/Berlin, start_date: 2026-11-01}\n"
        + "alerts: {webhook_url: 'https://hooks.example/T0/abc', format: slack, "
        + "ui_url: 'http://dagster:3000/', mute: ['*:size_anomaly']}\n"
        + "timeouts: {lock_wait_seconds: 5, run_seconds: 3600}\n"
    )
    assert config.schedules.daily == "15 1 * * 1-5"
    assert config.schedules.start_date == "2026-11-01"  # an unquoted YAML date too
    assert config.alerts.format == "slack" and config.alerts.mute == ("*:size_anomaly",)
    assert config.alerts.ui_url == "http://dagster:3000"
    assert (config.timeouts.lock_wait_seconds, config.timeouts.run_seconds) == (5, 3600)


@pytest.mark.parametrize(
    "extra, named",
    [
        ("schedules: {daily: '61 2 * * *'}", "'schedules.daily': '61' is not a valid minute"),
        ("schedules: {daily: 'nightly'}", "'schedules.daily': expected a cron expression"),
        ("schedules: {timezone: Mars/Olympus}", "'schedules.timezone'"),
        ("schedules: {start_date: '2026-02-30'}", "'schedules.start_date': no such day"),
        ("schedules: {start_date: yesterday}", "'schedules.start_date'"),
        ("alerts: {format: teams}", "'alerts.format'"),
        ("alerts: {webhook_url: 'hooks.example/abc'}", "'alerts.webhook_url'"),
        ("alerts: {mute: size_anomaly}", "'alerts.mute'"),
        ("timeouts: {lock_wait_seconds: 0}", "'timeouts.lock_wait_seconds'"),
        ("timeouts: {run_secs: 5}", "'timeouts.run_secs'"),
        ("sensors: {alert_interval_seconds: fast}", "'sensors.alert_interval_seconds'"),
    ],
)
def test_bad_schedule_alert_timeout_values_are_named(extra, named):
    assert named in error_of(BASE + extra + "\n")


def test_webhook_url_is_never_echoed():
    message = error_of(BASE + "alerts: {webhook_url: 'hooks.example/T0/s3cr3t'}\n")
    assert "s3cr3t" not in message


def test_cluster_names_dagster_cannot_tell_apart_are_refused():
    # '-' becomes '_' in Dagster's group and job names.
    config = parse("repository: r\nclusters: {prod-eu: {dsn: x}}\n")
    assert list(config.clusters) == ["prod-eu"]
    message = error_of("repository: r\nclusters: {prod-eu: {dsn: x}, prod_eu: {dsn: y}}\n")
    assert "'clusters.prod_eu'" in message and "'prod_eu'" in message


def test_rehearsal_settings_are_read_and_checked():
    config = parse(
        BASE
        + "rehearsal:\n  digests: false\n  lock_attempts: 3\n  queries:\n"
        + "    - {database: app, sql: 'SELECT count(*) > 0 FROM orders', expect: true}\n"
        + "    - {database: app, sql: 'SELECT 1', expect: 1, cluster: main}\n"
        + "schedules: {weekly: '15 3 * * 6'}\n"
    )
    r = config.rehearsal
    assert (r.digests, r.amcheck, r.lock_attempts, r.lock_timeout_ms) == (False, True, 3, 200)
    assert [(q.database, q.expect, q.cluster) for q in r.queries] == [
        ("app", "t", None),
        ("app", "1", "main"),
    ]
    assert config.schedules.weekly == "15 3 * * 6"


@pytest.mark.parametrize(
    "extra, named",
    [
        (
            "rehearsal: {queries: [{database: app, sql: 'SELECT 1'}]}",
            "'rehearsal.queries[0].expect'",
        ),
        ("rehearsal: {queries: [{database: a, sql: s, expect: 1, cluster: x}]}", "cluster"),
        ("rehearsal: {digests: maybe}", "'rehearsal.digests'"),
        ("rehearsal: {lock_attempts: 0}", "'rehearsal.lock_attempts'"),
        ("schedules: {weekly: 'every sunday'}", "'schedules.weekly'"),
    ],
)
def test_bad_rehearsal_settings_are_named(extra, named):
    assert named in error_of(BASE + extra + "\n")


def test_owners_tags_and_db_host_are_read():
    config = parse(
        "repository: r\nclusters:\n  main:\n    dsn: 'host=db-1.internal port=5433'\n"
        "    owners: [dba@example.com, 'team:platform']\n"
        "    tags: {env: prod, tier: 1, team/cost-center: db.ops}\n"
        "    db_host: db-1\n"
        "    description: Orders of the EU shop\n"
        "  other: {dsn: 'host=db-2'}\n"
    )
    main, other = config.cluster("main"), config.cluster("other")
    assert main.owners == ("dba@example.com", "team:platform")
    assert dict(main.tags) == {"env": "prod", "tier": "1", "team/cost-center": "db.ops"}
    assert main.db_host == "db-1"
    assert main.description == "Orders of the EU shop"
    assert (other.owners, other.tags, other.db_host, other.description) == ((), (), None, None)


@pytest.mark.parametrize(
    "cluster, named",
    [
        ("{dsn: x, owners: [bob]}", "'clusters.main.owners[0]'"),
        ("{dsn: x, owners: ['team:']}", "'clusters.main.owners[0]'"),
        ("{dsn: x, owners: dba@example.com}", "'clusters.main.owners'"),
        ("{dsn: x, tags: {'has space': x}}", "'clusters.main.tags.has space'"),
        ("{dsn: x, tags: {env: 'two words'}}", "'clusters.main.tags.env'"),
        ("{dsn: x, tags: {env: yes}}", "'clusters.main.tags.env'"),
        ("{dsn: x, tags: {pgbackup/host: db-9}}", "'clusters.main.tags.pgbackup/host'"),
        ("{dsn: x, tags: {dagster/kind/s3: ''}}", "'clusters.main.tags.dagster/kind/s3'"),
        ("{dsn: x, tags: [env]}", "'clusters.main.tags'"),
        ("{dsn: x, db_host: 'db 1'}", "'clusters.main.db_host'"),
        ("{dsn: x, description: [a, b]}", "'clusters.main.description'"),
        ("{dsn: x, owner: [a@b.io]}", "'clusters.main.owner'"),
    ],
)
def test_bad_owners_tags_and_db_host_are_named(cluster, named):
    message = error_of(f"repository: r\nclusters: {{main: {cluster}}}\n")
    assert named in message and "\n" not in message


def test_archive_settings_default_to_synchronous():
    archive = parse(BASE).archive
    assert (archive.asynchronous, archive.spool_dir, archive.parallel) == (False, None, 2)
    assert archive.spool(Path("/srv/repo"), "main") == Path("/srv/repo/.spool/main")
    archive = parse(BASE + "archive: {async: true, spool_dir: spool, parallel: 4}\n").archive
    assert (archive.asynchronous, archive.parallel) == (True, 4)
    assert archive.spool_dir == Path("/etc/pgbackup/spool")  # relative to the config file


@pytest.mark.parametrize(
    "archive, named, said",
    [
        ("{async: 'yes'}", "archive.async", "true or false"),
        ("{async: 1}", "archive.async", "true or false"),
        ("{parallel: 0}", "archive.parallel", "> 0"),
        ("{parallel: two}", "archive.parallel", "> 0"),
        ("{parallel: 65}", "archive.parallel", "from 1 to 64"),
        ("{spool_dir: ''}", "archive.spool_dir", "non-empty string"),
        ("{spool: /x}", "archive.spool", "unknown config key"),
        ("[async]", "archive", "expected a mapping"),
    ],
)
def test_bad_archive_settings_are_named(archive, named, said):
    message = error_of(f"{BASE}archive: {archive}\n")
    assert f"'{named}'" in message and said in message
