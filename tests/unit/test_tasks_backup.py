"""How the backup and restore tasks read configuration and compose their commands.

MockContext shows the command a task would run; the end-to-end tests run it for real.
"""
from __future__ import annotations

import pytest
from invoke import Exit, MockContext, Result

import tasks
from helpers.config import parse_database_url


def test_backup_pipeline_fails_on_any_stage_and_quotes_every_value(monkeypatch, tmp_path):
    monkeypatch.setenv("CARABASE_BACKUP_DIR", str(tmp_path / "it's here"))
    monkeypatch.setenv("HOST_MASTER_KEY", "ab" * 32)
    monkeypatch.setenv("CARABASE_DEV_DATABASE_URL", "postgresql://u:pw@h/db name")
    monkeypatch.setenv("CARABASE_COMPRESSOR", "gzip")
    context = MockContext(run=Result(exited=0), repeat=True)

    tasks.run_backup(context, "dev")

    (command,), options = context.run.call_args
    assert command.startswith("set -o pipefail; pg_dump ")
    assert "pg_dump --format=plain --no-owner --no-privileges" in command
    assert "--clean" not in command  # a pure create script: restore builds a fresh database
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
        tasks.restore(context, "prod", str(backup), yes=True, i_know=False)


def test_server_identity_is_the_database_the_server_reports_not_the_url_name():
    # Behind a pooler, "dev_alias" may lead to prod's database: trust the server.
    db = parse_database_url("postgresql://pooler:6432/dev_alias", "V")
    context = MockContext(run=Result(stdout="7712428185212053603|carabase_prod\n"))

    assert tasks.server_identity(context, db) == ("7712428185212053603", "carabase_prod")
