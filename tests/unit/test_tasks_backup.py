"""How the backup and restore tasks read configuration and compose their commands.

MockContext shows the command a task would run; the end-to-end tests run it for real.
"""
from __future__ import annotations

import pytest
from invoke import Exit, MockContext, Result

import tasks


def test_password_in_url_is_moved_out_of_the_uri():
    db = tasks.parse_database_url("postgresql://app:s%40cret@db.example:6432/carabase_prod"
                                  "?sslmode=require", "V")

    assert db.uri == "postgresql://app@db.example:6432/carabase_prod?sslmode=require"
    assert db.password == "s@cret" and db.name == "carabase_prod"
    assert db.child_env()["PGPASSWORD"] == "s@cret"


def test_password_and_dbname_query_parameters_are_honoured_and_removed():
    db = tasks.parse_database_url("postgres:///ignored?host=/run/pg&password=pw&dbname=real",
                                  "V")

    assert db.name == "real" and db.password == "pw"
    assert "pw" not in db.uri and db.uri.startswith("postgres:///real?")
    assert "host=%2Frun%2Fpg" in db.uri


def test_on_database_keeps_server_and_credentials():
    db = tasks.parse_database_url("postgresql://u:p@h:1/app", "V").on_database("postgres")

    assert db.uri == "postgresql://u@h:1/postgres" and db.password == "p"


@pytest.mark.parametrize("url, message", [
    ("mysql://h/db", "not a postgresql:// URL"),
    ("postgresql://h:5432", "names no database"),
])
def test_unusable_url_is_refused(url, message):
    with pytest.raises(Exit, match=message):
        tasks.parse_database_url(url, "CARABASE_DEV_DATABASE_URL")


def test_unset_url_defaults_to_local_carabase_env(monkeypatch):
    monkeypatch.delenv("CARABASE_STAGING_DATABASE_URL", raising=False)

    assert tasks.database("staging").uri == "postgresql:///carabase_staging"


def test_backup_pipeline_fails_on_any_stage_and_quotes_every_value(monkeypatch, tmp_path):
    monkeypatch.setenv("CARABASE_BACKUP_DIR", str(tmp_path / "it's here"))
    monkeypatch.setenv("HOST_MASTER_KEY", "ab" * 32)
    monkeypatch.setenv("CARABASE_DEV_DATABASE_URL", "postgresql://u:pw@h/db name")
    monkeypatch.setenv("CARABASE_COMPRESSOR", "gzip")
    context = MockContext(run=Result(exited=0), repeat=True)

    tasks.run_backup(context, "dev")

    (command,), options = context.run.call_args
    assert command.startswith("set -o pipefail; pg_dump ")
    assert "--clean --if-exists --no-owner --no-privileges" in command
    assert "--dbname postgresql://u@h/db%20name |" in command
    assert "| gzip -9 |" in command and "-m helpers.crypto encrypt >" in command
    assert "'" + str(tmp_path / "it's here").replace("'", "'\"'\"'") in command
    assert "pw" not in command.replace("pipefail", "")
    assert options["env"]["PGPASSWORD"] == "pw"


def test_restore_into_prod_without_i_know_stops_before_running_anything(monkeypatch,
                                                                        tmp_path):
    monkeypatch.setenv("HOST_MASTER_KEY", "ab" * 32)
    monkeypatch.delenv("CARABASE_I_KNOW", raising=False)
    backup = tmp_path / "b.sql.gz.enc"
    backup.write_bytes(b"\x01")
    context = MockContext()  # any run() call would raise: nothing may run

    with pytest.raises(Exit, match="--i-know"):
        tasks.run_restore(context, "prod", str(backup), yes=True, i_know=False)


def test_failed_pipeline_explains_its_last_failing_stage():
    stderr = ("pg_dump: error: could not write to output file: Broken pipe\n"
              "gzip: stdout: Broken pipe\n"
              "encrypt: No space left on device\n")
    result = Result(stderr=stderr, exited=1)

    message = tasks.explain_pipeline_failure(result, tasks.parse_database_url(
        "postgresql:///x", "V"))

    assert message.startswith("encrypt: No space left on device")
    assert "free some space" in message


@pytest.mark.parametrize("url", [
    "postgresql://app:s3cr3t/x@db.example/prod",
    "postgresql://app:s3cr3t?x@db.example/prod",
    "postgresql://app:s3cr3t#x@db.example/prod",
])
def test_url_whose_password_needs_percent_encoding_is_refused_without_showing_it(url):
    with pytest.raises(Exit) as refused:
        tasks.parse_database_url(url, "CARABASE_PROD_DATABASE_URL")

    assert "percent-encode" in refused.value.message
    assert "s3cr3t" not in refused.value.message


@pytest.mark.parametrize("url, message", [
    ("postgresql://[::1/db", "not a valid postgresql:// URL"),
    ("postgresql:///db?sslpassword=hunter2", "sslpassword"),
])
def test_url_that_cannot_be_used_safely_is_refused(url, message):
    with pytest.raises(Exit, match=message):
        tasks.parse_database_url(url, "V")


def test_multi_host_url_and_percent_encoded_options_survive_the_password_split():
    db = tasks.parse_database_url(
        "postgresql://u:p%2Fw@h1:5432,h2:5433/app?options=-c%20search_path%3Dx", "V")

    assert db.uri == "postgresql://u@h1:5432,h2:5433/app?options=-c%20search_path%3Dx"
    assert db.password == "p/w"


def test_relative_backup_dir_is_refused(monkeypatch):
    monkeypatch.setenv("CARABASE_BACKUP_DIR", "backups")

    with pytest.raises(Exit, match="absolute path"):
        tasks.backup_root()


def test_backups_are_found_only_in_their_own_date_directory(monkeypatch, tmp_path):
    monkeypatch.setenv("CARABASE_BACKUP_DIR", str(tmp_path))
    name = "2026-04-09T031700.sql.gz.enc"
    for folder in ("2026-04-09", "2026-04-10", "pinned"):
        (tmp_path / "dev" / folder).mkdir(parents=True)
        (tmp_path / "dev" / folder / name).write_bytes(b"x")

    assert [path.parent.name for _, path in tasks.list_backups("dev")] == ["2026-04-09"]


def test_stale_partials_are_removed_only_from_date_directories(monkeypatch, tmp_path):
    monkeypatch.setenv("CARABASE_BACKUP_DIR", str(tmp_path))
    partial = ".2026-04-09T031700.sql.gz.enc.partial"
    for folder in ("2026-04-09", "keep-me"):
        (tmp_path / "dev" / folder).mkdir(parents=True)
        (tmp_path / "dev" / folder / partial).write_bytes(b"x")
    (tmp_path / "dev" / "empty-but-mine").mkdir()

    removed = tasks.remove_stale_partials("dev")

    assert removed == [tmp_path / "dev" / "2026-04-09" / partial]
    assert (tmp_path / "dev" / "keep-me" / partial).exists()
    assert (tmp_path / "dev" / "empty-but-mine").is_dir()
    assert not (tmp_path / "dev" / "2026-04-09").exists()


def test_server_identity_is_the_database_the_server_reports_not_the_url_name():
    # Behind a pooler, "dev_alias" may lead to prod's database: trust the server.
    db = tasks.parse_database_url("postgresql://pooler:6432/dev_alias", "V")
    context = MockContext(run=Result(stdout="7712428185212053603|carabase_prod\n"))

    assert tasks.server_identity(context, db) == ("7712428185212053603", "carabase_prod")
