"""The one line a failed pipeline is summed up in."""
from __future__ import annotations

from helpers.config import parse_database_url
from helpers.failures import explain_pipeline_failure


def test_failed_pipeline_explains_its_last_failing_stage():
    stderr = ("pg_dump: error: could not write to output file: Broken pipe\n"
              "gzip: stdout: Broken pipe\n"
              "encrypt: No space left on device\n")
    message = explain_pipeline_failure(stderr, 1, parse_database_url("postgresql:///x", "V"))

    assert message.startswith("encrypt: No space left on device")
    assert "free some space" in message


def test_failed_psql_keeps_the_servers_hint():
    stderr = ("psql:<stdin>:4021: ERROR:  out of shared memory\n"
              "HINT:  You might need to increase max_locks_per_transaction.\n")
    message = explain_pipeline_failure(stderr, 3, parse_database_url("postgresql:///x", "V"))

    assert message == ("psql:<stdin>:4021: ERROR:  out of shared memory"
                       " HINT:  You might need to increase max_locks_per_transaction.")


def test_a_missing_program_is_named():
    stderr = "bash: line 1: psql: command not found\n"
    message = explain_pipeline_failure(stderr, 127, parse_database_url("postgresql:///x", "V"))

    assert message.startswith("psql is not installed or not on PATH")


def test_the_servers_notices_are_not_taken_for_the_cause():
    stderr = ('psql:<stdin>:2: NOTICE:  table "note" does not exist, skipping\n'
              "psql:<stdin>:5: ERROR:  division by zero\n")
    message = explain_pipeline_failure(stderr, 3, parse_database_url("postgresql:///x", "V"))

    assert message == "psql:<stdin>:5: ERROR:  division by zero"
