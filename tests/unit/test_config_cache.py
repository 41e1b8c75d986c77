"""The cache of what wal-push reads from the config: used only while it is right, and
never a place where a secret ends up."""

import os
import stat

import pytest

from pg_backup_assets.core import config, config_cache
from pg_backup_assets.core.errors import ConfigError

TEXT = (
    "repository: ${PGB_TEST_REPO}\n"
    "clusters:\n"
    "  main: {dsn: 'host=db password=${PGB_TEST_SECRET}'}\n"
    "  other: {dsn: 'host=db2'}\n"
    "alerts: {webhook_url: 'https://hooks.example/T0/hook-token'}\n"
    "archive: {async: true, parallel: 2}\n"
)


@pytest.fixture
def cfg(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("PGB_TEST_REPO", str(tmp_path / "repo"))
    monkeypatch.setenv("PGB_TEST_SECRET", "hunter2")
    path = tmp_path / "pgbackup.yaml"
    path.write_text(TEXT)
    return path


def no_parsing(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the config was parsed")

    monkeypatch.setattr(config, "read_config", refuse)


def test_second_load_comes_from_the_cache(cfg, monkeypatch, tmp_path):
    first = config_cache.load(cfg)
    assert (first.repository, first.clusters) == (str(tmp_path / "repo"), ("main", "other"))
    assert (first.asynchronous, first.parallel) == (True, 2)
    assert first.spool_dir == str(tmp_path / "repo" / ".spool")
    no_parsing(monkeypatch)
    second = config_cache.load(cfg)
    assert {k: getattr(second, k) for k in second.__slots__} == {
        k: getattr(first, k) for k in first.__slots__
    }
    assert second.cluster("main") == "main"
    with pytest.raises(ConfigError, match="--cluster is required"):
        second.cluster(None)


def test_an_edit_of_the_same_size_and_time_is_seen(cfg):
    config_cache.load(cfg)
    st = cfg.stat()
    cfg.write_text(TEXT.replace("parallel: 2", "parallel: 7"))  # same size
    os.utime(cfg, ns=(st.st_atime_ns, st.st_mtime_ns))  # and the same mtime
    assert config_cache.load(cfg).parallel == 7


def test_a_changed_environment_variable_is_seen(cfg, monkeypatch, tmp_path):
    config_cache.load(cfg)
    monkeypatch.setenv("PGB_TEST_REPO", str(tmp_path / "elsewhere"))
    assert config_cache.load(cfg).repository == str(tmp_path / "elsewhere")


def test_a_broken_config_is_not_hidden_by_the_cache(cfg):
    config_cache.load(cfg)
    cfg.write_text(TEXT.replace("parallel: 2", "parallel: 0"))
    with pytest.raises(ConfigError, match="'archive.parallel'"):
        config_cache.load(cfg)


def test_no_secret_in_the_cache_and_only_its_user_reads_it(cfg):
    config_cache.load(cfg)
    cached = config_cache.cache_file(str(cfg))
    with open(cached) as f:
        text = f.read()
    assert str(cfg) in text
    for secret in ("hunter2", "PGB_TEST_SECRET", "hook-token", "hooks.example", "host=db"):
        assert secret not in text
    assert stat.S_IMODE(os.stat(cached).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(cached)).st_mode) == 0o700


def test_entries_of_removed_config_files_are_pruned(cfg, tmp_path):
    gone = tmp_path / "gone.yaml"
    gone.write_text(TEXT)
    config_cache.load(gone)
    assert os.path.exists(config_cache.cache_file(str(gone)))
    gone.unlink()
    config_cache.load(cfg)  # a miss writes, and prunes
    assert not os.path.exists(config_cache.cache_file(str(gone)))
