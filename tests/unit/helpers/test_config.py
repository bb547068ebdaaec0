"""Configuration: database URLs split so that no password reaches argv, the backup root."""
from __future__ import annotations

from pathlib import Path

import pytest

from helpers import config
from helpers.errors import UserError


def test_password_in_url_is_moved_out_of_the_uri():
    db = config.parse_database_url("postgresql://app:s%40cret@db.example:6432/carabase_prod"
                                  "?sslmode=require", "V")

    assert db.uri == "postgresql://app@db.example:6432/carabase_prod?sslmode=require"
    assert db.password == "s@cret" and db.name == "carabase_prod"
    assert db.child_env()["PGPASSWORD"] == "s@cret"


def test_password_and_dbname_query_parameters_are_honoured_and_removed():
    db = config.parse_database_url("postgres:///ignored?host=/run/pg&password=pw&dbname=real",
                                  "V")

    assert db.name == "real" and db.password == "pw"
    assert "pw" not in db.uri and db.uri.startswith("postgres:///real?")
    assert "host=%2Frun%2Fpg" in db.uri


def test_on_database_keeps_server_and_credentials():
    db = config.parse_database_url("postgresql://u:p@h:1/app", "V").on_database("postgres")

    assert db.uri == "postgresql://u@h:1/postgres" and db.password == "p"


@pytest.mark.parametrize("url, message", [
    ("mysql://h/db", "not a postgresql:// URL"),
    ("postgresql://h:5432", "names no database"),
])
def test_unusable_url_is_refused(url, message):
    with pytest.raises(UserError, match=message):
        config.parse_database_url(url, "CARABASE_DEV_DATABASE_URL")


def test_unset_url_defaults_to_local_carabase_env(monkeypatch):
    monkeypatch.delenv("CARABASE_STAGING_DATABASE_URL", raising=False)

    assert config.database("staging").uri == "postgresql:///carabase_staging"


@pytest.mark.parametrize("url", [
    "postgresql://app:s3cr3t/x@db.example/prod",
    "postgresql://app:s3cr3t?x@db.example/prod",
    "postgresql://app:s3cr3t#x@db.example/prod",
])
def test_url_whose_password_needs_percent_encoding_is_refused_without_showing_it(url):
    with pytest.raises(UserError) as refused:
        config.parse_database_url(url, "CARABASE_PROD_DATABASE_URL")

    assert "percent-encode" in refused.value.message
    assert "s3cr3t" not in refused.value.message


@pytest.mark.parametrize("url, message", [
    ("postgresql://[::1/db", "not a valid postgresql:// URL"),
    ("postgresql:///db?sslpassword=hunter2", "sslpassword"),
])
def test_url_that_cannot_be_used_safely_is_refused(url, message):
    with pytest.raises(UserError, match=message):
        config.parse_database_url(url, "V")


def test_multi_host_url_and_percent_encoded_options_survive_the_password_split():
    db = config.parse_database_url(
        "postgresql://u:p%2Fw@h1:5432,h2:5433/app?options=-c%20search_path%3Dx", "V")

    assert db.uri == "postgresql://u@h1:5432,h2:5433/app?options=-c%20search_path%3Dx"
    assert db.password == "p/w"


def test_relative_backup_dir_is_refused(monkeypatch):
    monkeypatch.setenv("CARABASE_BACKUP_DIR", "backups")

    with pytest.raises(UserError, match="absolute path"):
        config.backup_root()


@pytest.mark.parametrize("value", [" /srv/backups", "/srv/backups\n", "/srv/back\x1bups",
                                   "/srv/backups\u00a0", "\t"])
def test_backup_dir_with_edge_whitespace_or_a_control_character_is_refused(monkeypatch,
                                                                           value):
    monkeypatch.setenv("CARABASE_BACKUP_DIR", value)

    with pytest.raises(UserError, match="CARABASE_BACKUP_DIR has a space, tab or control"):
        config.backup_root()


def test_backup_dir_with_a_space_inside_is_a_path_like_any_other(monkeypatch):
    monkeypatch.setenv("CARABASE_BACKUP_DIR", "/srv/my backups")

    assert config.backup_root() == Path("/srv/my backups")


# --- CARABASE_ENVS and CARABASE_LOCK_WAIT_TIMEOUT ---------------------------------------


def test_every_env_is_configured_when_carabase_envs_is_unset(monkeypatch, tmp_path):
    monkeypatch.delenv("CARABASE_ENVS", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # and nothing recorded

    assert config.configured_envs() == ("dev", "staging", "prod")


def record(home, text: str) -> None:
    (home / ".carabase").mkdir()
    (home / ".carabase" / "env").write_text(text)


def test_envs_recorded_in_home_carabase_env_are_used_when_carabase_envs_is_unset(
        monkeypatch, tmp_path):
    monkeypatch.delenv("CARABASE_ENVS", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    record(tmp_path, "# written by scripts/setup.sh\nCARABASE_ENVS=prod,dev\n")

    assert config.configured_envs() == ("dev", "prod")


def test_carabase_envs_wins_over_the_recorded_envs(monkeypatch, tmp_path):
    monkeypatch.setenv("CARABASE_ENVS", "staging")
    monkeypatch.setenv("HOME", str(tmp_path))
    record(tmp_path, "CARABASE_ENVS=dev\n")

    assert config.configured_envs() == ("staging",)


def test_recorded_envs_naming_an_unknown_env_are_refused_naming_the_file(monkeypatch,
                                                                          tmp_path):
    monkeypatch.delenv("CARABASE_ENVS", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    record(tmp_path, "CARABASE_ENVS=prdo\n")

    with pytest.raises(UserError) as refused:
        config.configured_envs()

    assert refused.value.message == (
        f"CARABASE_ENVS in {tmp_path}/.carabase/env must list some of dev, staging, prod"
        " separated by commas, not 'prdo'")


@pytest.mark.parametrize("value", ["prod,dev", " dev , prod ", "prod dev", "dev,prod,dev"])
def test_carabase_envs_keeps_the_listed_envs_in_their_usual_order(monkeypatch, value):
    monkeypatch.setenv("CARABASE_ENVS", value)

    assert config.configured_envs() == ("dev", "prod")


@pytest.mark.parametrize("value", ["dev,prdo", "production", ",", "dev;prod"])
def test_carabase_envs_naming_an_unknown_env_is_refused_in_one_line(monkeypatch, value):
    monkeypatch.setenv("CARABASE_ENVS", value)

    with pytest.raises(UserError) as refused:
        config.configured_envs()

    assert refused.value.message == ("CARABASE_ENVS must list some of dev, staging, prod"
                                     f" separated by commas, not {value!r}")


def test_lock_wait_timeout_defaults_to_300_seconds(monkeypatch):
    monkeypatch.delenv("CARABASE_LOCK_WAIT_TIMEOUT", raising=False)

    assert config.lock_wait_timeout() == 300


@pytest.mark.parametrize("value, seconds", [("1", 1), (" 45 ", 45), ("2147483", 2147483)])
def test_lock_wait_timeout_is_read_in_whole_seconds(monkeypatch, value, seconds):
    monkeypatch.setenv("CARABASE_LOCK_WAIT_TIMEOUT", value)

    assert config.lock_wait_timeout() == seconds


@pytest.mark.parametrize("value", ["0", "-5", "1.5", "5s", "five", "²", "2147484"])
def test_lock_wait_timeout_that_is_not_whole_seconds_is_refused_in_one_line(monkeypatch,
                                                                            value):
    monkeypatch.setenv("CARABASE_LOCK_WAIT_TIMEOUT", value)

    with pytest.raises(UserError, match=r"^CARABASE_LOCK_WAIT_TIMEOUT must be a whole number"
                                        r" of seconds, from 1 to 2147483, not "):
        config.lock_wait_timeout()


def test_restore_sessions_default_to_one_per_core_and_one_for_a_small_backup(monkeypatch):
    monkeypatch.delenv("CARABASE_RESTORE_JOBS", raising=False)
    monkeypatch.setattr(config.os, "cpu_count", lambda: 6)

    assert config.restore_jobs(None) is None
    assert config.restore_sessions(None, config.SMALL_RESTORE) == 6
    assert config.restore_sessions(None, config.SMALL_RESTORE - 1) == 1


def test_restore_sessions_asked_for_are_used_whatever_the_size(monkeypatch):
    monkeypatch.setenv("CARABASE_RESTORE_JOBS", " 3 ")

    assert config.restore_sessions(config.restore_jobs(None), 100) == 3
    assert config.restore_sessions(config.restore_jobs("1"), 10**9) == 1  # --jobs wins


@pytest.mark.parametrize("option, variable, named", [
    (None, "0", "CARABASE_RESTORE_JOBS"), (None, "two", "CARABASE_RESTORE_JOBS"),
    (None, "²", "CARABASE_RESTORE_JOBS"), ("-1", "4", "--jobs"), ("1.5", None, "--jobs"),
])
def test_restore_sessions_that_are_not_a_whole_number_are_refused_in_one_line(
        monkeypatch, option, variable, named):
    if variable is None:
        monkeypatch.delenv("CARABASE_RESTORE_JOBS", raising=False)
    else:
        monkeypatch.setenv("CARABASE_RESTORE_JOBS", variable)

    with pytest.raises(UserError, match=rf"^{named} must be a whole number of sessions, 1 or"
                                        r" more, not '"):
        config.restore_jobs(option)
