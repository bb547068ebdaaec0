"""How the backup and restore tasks read configuration and compose their commands.

MockContext shows the command a task would run; the end-to-end tests run it for real.
"""
from __future__ import annotations

import shlex

import pytest
from invoke import Context, Exit, MockContext, Result

import tasks
from helpers.config import parse_database_url
from tests.support import pipeline_on_lifeline


def test_backup_pipeline_fails_on_any_stage_and_quotes_every_value(monkeypatch, tmp_path):
    monkeypatch.setenv("CARABASE_BACKUP_DIR", str(tmp_path / "it's here"))
    monkeypatch.setenv("HOST_MASTER_KEY", "ab" * 32)
    monkeypatch.setenv("CARABASE_DEV_DATABASE_URL", "postgresql://u:pw@h/db name")
    monkeypatch.setenv("CARABASE_COMPRESSOR", "gzip")
    context = MockContext(run=Result(exited=0), repeat=True)

    tasks.run_backup(context, "dev")

    (guarded,), options = context.run.call_args
    command = pipeline_on_lifeline(guarded)
    assert command.startswith("set -o pipefail; pg_dump ")
    assert "pg_dump --format=plain --no-tablespaces" in command
    assert "--no-owner" not in command and "--no-privileges" not in command  # grants travel
    assert "--clean" not in command  # a pure create script: restore builds a fresh database
    assert "--dbname postgresql://u@h/db%20name |" in command
    assert "| gzip -9 |" in command and "-m helpers.crypto encrypt >" in command
    assert "'" + str(tmp_path / "it's here").replace("'", "'\"'\"'") in command
    assert "pw" not in command.replace("pipefail", "")
    assert options["env"]["PGPASSWORD"] == "pw"


@pytest.mark.parametrize("configured, option", [(None, "--lock-wait-timeout=300s"),
                                                ("1", "--lock-wait-timeout=1s")])
def test_backup_waits_for_a_table_lock_only_as_long_as_configured(monkeypatch, tmp_path,
                                                                  configured, option):
    monkeypatch.setenv("CARABASE_BACKUP_DIR", str(tmp_path))
    monkeypatch.setenv("HOST_MASTER_KEY", "ab" * 32)
    monkeypatch.delenv("CARABASE_LOCK_WAIT_TIMEOUT", raising=False)
    if configured:
        monkeypatch.setenv("CARABASE_LOCK_WAIT_TIMEOUT", configured)
    context = MockContext(run=Result(exited=0), repeat=True)

    tasks.run_backup(context, "dev")

    pg_dump = shlex.split(pipeline_on_lifeline(context.run.call_args[0][0]))[3:]
    assert option in pg_dump[:pg_dump.index("|")]


def test_backup_with_a_lock_wait_timeout_that_is_not_whole_seconds_runs_nothing(monkeypatch,
                                                                                tmp_path):
    monkeypatch.setenv("CARABASE_BACKUP_DIR", str(tmp_path))
    monkeypatch.setenv("HOST_MASTER_KEY", "ab" * 32)
    monkeypatch.setenv("CARABASE_LOCK_WAIT_TIMEOUT", "5m")

    with pytest.raises(Exit, match="CARABASE_LOCK_WAIT_TIMEOUT must be a whole number"):
        tasks.backup_dev(MockContext())  # any run() call would raise
    assert not tmp_path.joinpath("dev").exists()


def test_invoke_holds_the_lifeline_for_as_long_as_the_command_runs():
    # in_stream=False: invoke keeps the command's stdin open and unwritten until it ends;
    # were it closed early, the lifeline would stop every backup at once.
    result = Context().run(tasks.on_lifeline("sleep 0.5; echo finished"), hide=True,
                           warn=True, in_stream=False, env=tasks.child_env())

    assert (result.exited, result.stdout) == (0, "finished\n")


def test_restore_into_prod_without_i_know_stops_before_running_anything(monkeypatch,
                                                                        tmp_path):
    monkeypatch.setenv("HOST_MASTER_KEY", "ab" * 32)
    monkeypatch.delenv("CARABASE_I_KNOW", raising=False)
    backup = tmp_path / "b.sql.gz.enc"
    backup.write_bytes(b"\x01")
    context = MockContext()  # any run() call would raise: nothing may run

    with pytest.raises(Exit, match="--i-know"):
        tasks.restore(context, "prod", str(backup), yes=True, i_know=False)


def test_server_identity_is_the_database_the_server_reports_not_the_url_name():
    # Behind a pooler, "dev_alias" may lead to prod's database: trust the server.
    db = parse_database_url("postgresql://pooler:6432/dev_alias", "V")
    context = MockContext(run=Result(stdout="7712428185212053603|carabase_prod\n"))

    assert tasks.server_identity(context, db) == ("7712428185212053603", "carabase_prod")
