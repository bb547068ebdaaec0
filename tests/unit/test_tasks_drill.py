"""How the drill composes its commands: MockContext shows what would run; the end-to-end
tests (tests/e2e/test_verify_drill_cli.py) run it for real."""
from __future__ import annotations

import pytest
from invoke import MockContext, Result

import tasks
from helpers.config import parse_database_url
from helpers.errors import UserError

SCRATCH = parse_database_url("postgresql://u:pw@h/it's scratch", "CARABASE_DRILL_DATABASE_URL")


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
    assert "DROP DATABASE IF EXISTS \"it'\"'\"'s scratch\";" in commands[1]
    assert "pg_terminate_backend" in commands[1]  # its sessions first, then a plain drop
    # Created and marked by one psql: no unmarked scratch database between the two.
    assert "CREATE DATABASE \"it'\"'\"'s scratch\" WITH TEMPLATE template0;" in commands[2]
    assert 'comment on database :"name" is ' in commands[2] and tasks.SCRATCH_MARK in commands[2]
    assert "--set 'name=it'\"'\"'s scratch'" in commands[2]  # the name, quoted by psql


def test_scratch_database_whose_creation_fails_is_dropped_again():
    context = MockContext(run=[Result(stdout="0|\n"), Result(exited=3, stderr="psql: boom\n"),
                               Result()], repeat=False)
    with pytest.raises(UserError, match="cannot create the scratch database"):
        tasks.create_scratch(context, SCRATCH, "drill dev")
    last = context.run.call_args_list[-1].args[0]
    assert "DROP DATABASE IF EXISTS \"it'\"'\"'s scratch\";" in last
