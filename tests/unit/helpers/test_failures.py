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
