"""The one line a failed pipeline is summed up in."""
from __future__ import annotations

import pytest

from helpers.config import parse_database_url
from helpers.failures import explain_pipeline_failure


def test_failed_pipeline_explains_its_last_failing_stage():
    stderr = ("pg_dump: error: could not write to output file: Broken pipe\n"
              "gzip: stdout: Broken pipe\n"
              "encrypt: No space left on device\n")
    message = explain_pipeline_failure(stderr, 1, parse_database_url("postgresql:///x", "V"))

    assert message.startswith("encrypt: No space left on device")
    assert "free some space" in message


@pytest.mark.parametrize("stderr", [
    # pg_dump 15 and later
    "pg_dump: error: query failed: ERROR:  canceling statement due to statement timeout\n"
    "pg_dump: detail: Query was: LOCK TABLE \"public\".\"busy\" IN ACCESS SHARE MODE\n",
    # before 15
    "pg_dump: error: query failed: ERROR:  canceling statement due to statement timeout\n"
    "pg_dump: error: query was: LOCK TABLE \"public\".\"busy\" IN ACCESS SHARE MODE\n",
])
def test_dump_that_timed_out_on_a_lock_says_it_gave_up_waiting_and_on_which_table(
        monkeypatch, stderr):
    monkeypatch.setenv("CARABASE_LOCK_WAIT_TIMEOUT", "60")
    message = explain_pipeline_failure(stderr, 1, parse_database_url("postgresql:///x", "V"))

    assert message == ('pg_dump gave up waiting for a lock on table "public"."busy" after 60 s:'
                       " another session holds it (see pg_locks and pg_stat_activity); try"
                       " again when it is done, or raise CARABASE_LOCK_WAIT_TIMEOUT")


def test_statement_timeout_outside_the_lock_phase_is_not_called_a_lock_wait():
    stderr = ("pg_dump: error: Dumping the contents of table \"big\" failed: PQgetResult()"
              " failed.\npg_dump: detail: Error message from server: ERROR:  canceling"
              " statement due to statement timeout\n")
    message = explain_pipeline_failure(stderr, 1, parse_database_url("postgresql:///x", "V"))

    assert "lock" not in message and "statement timeout" in message


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


def test_pg_dump_failure_keeps_the_servers_hint():
    stderr = ('pg_dump: error: query failed: ERROR:  query would be affected by row-level'
              ' security policy for table "items"\n'
              "HINT:  To disable the policy for the table's owner, use ALTER TABLE NO FORCE"
              " ROW LEVEL SECURITY.\n"
              "pg_dump: detail: Query was: COPY public.items (id, name, secret) TO stdout;\n")

    line = explain_pipeline_failure(stderr, 1, parse_database_url("postgresql:///x", "V"))

    assert line == ('pg_dump: error: query failed: ERROR:  query would be affected by'
                    ' row-level security policy for table "items" (Query was: COPY'
                    " public.items (id, name, secret) TO stdout;) HINT:  To disable the"
                    " policy for the table's owner, use ALTER TABLE NO FORCE ROW LEVEL"
                    " SECURITY.")
