"""How the drill composes its commands: MockContext shows what would run; the end-to-end
tests (tests/e2e/test_verify_drill_cli.py) run it for real."""
from __future__ import annotations

import pytest
from invoke import MockContext, Result

import tasks
from helpers.config import parse_database_url
from helpers.errors import UserError

SCRATCH = parse_database_url("postgresql://u:pw@h/it's scratch", "CARABASE_DRILL_DATABASE_URL")


def test_apply_into_pipes_decrypt_gunzip_psql_stopping_at_the_first_error(tmp_path):
    backup = tmp_path / "a b.sql.gz.enc"
    backup.write_bytes(b"x")
    context = MockContext(run=Result(exited=0))

    assert tasks.apply_into(context, backup, SCRATCH, "drill dev") is None

    (command,), options = context.run.call_args
    assert command.startswith("set -o pipefail; ")
    assert f"-m helpers.crypto decrypt < '{backup}' | gzip -dc | psql -X" in command
    assert "ON_ERROR_STOP=on --dbname postgresql://u@h/it%27s%20scratch --file -" in command
    assert "pw" not in command.replace("pipefail", "")
    assert options["env"]["PGPASSWORD"] == "pw"


def test_failed_apply_returns_the_reason_instead_of_raising(tmp_path):
    backup = tmp_path / "b"
    backup.write_bytes(b"x")
    context = MockContext(run=Result(exited=3, stderr="psql:<stdin>:12: ERROR:  boom\n"))
    assert tasks.apply_into(context, backup, SCRATCH, "drill dev") == \
        "psql:<stdin>:12: ERROR:  boom"


def test_scratch_database_of_that_name_not_made_by_a_drill_is_never_dropped():
    context = MockContext(run=[Result(stdout="1|the team's reporting database\n")])
    with pytest.raises(UserError, match="exists and was not made by a drill"):
        tasks.create_scratch(context, SCRATCH, "drill dev")
    assert context.run.call_count == 1  # asked, dropped nothing, created nothing


def test_leftover_scratch_database_is_dropped_then_made_afresh_and_marked():
    context = MockContext(run=[Result(stdout=f"1|{tasks.SCRATCH_MARK}\n"), Result(),
                               Result()], repeat=False)
    tasks.create_scratch(context, SCRATCH, "drill dev")
    commands = [call.args[0] for call in context.run.call_args_list]
    assert "drop database if exists :\"name\" with (force)" in commands[1]
    assert 'create database :"name" template template0;' in commands[2]
    assert 'comment on database :"name" is ' in commands[2] and tasks.SCRATCH_MARK in commands[2]
    assert "--set 'name=it'\"'\"'s scratch'" in commands[2]  # the name, quoted by psql
