"""One line from a failed pipeline's stderr: the root cause, plus what to do about it."""
from __future__ import annotations

import re

from helpers.config import Database, backup_root, lock_wait_timeout

# Stage names as they prefix their own error messages, last stage first: when a stage
# fails, the stages before it fail too (broken pipe), so the last one to complain is
# where the trouble started.
STAGE_PREFIXES = ("encrypt:", "decrypt:", "gzip:", "pigz:", "psql:", "pg_dump:")
# pg_dump reports the statement that --lock-wait-timeout cancelled (since 15 on a
# "detail: Query was:" line, before on an "error: query was:" one).
LOCK_TABLE = re.compile(r"LOCK TABLE (?:ONLY )?(.+?) IN ACCESS SHARE MODE")


def explain_pipeline_failure(stderr: str, exited: int, db: Database) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    # The server's notices ("table ... does not exist, skipping") are never the cause.
    notices = [line for line in lines if any(f": {level}:  " in line for level in
                                             ("NOTICE", "WARNING", "INFO", "LOG", "DEBUG"))]
    if len(notices) < len(lines):
        lines = [line for line in lines if line not in notices]
    stage, cause = next(
        ((prefix, line) for prefix in STAGE_PREFIXES for line in lines
         if line.startswith(prefix) and ": detail:" not in line),
        ("", lines[0] if lines else f"the pipeline exited with status {exited}"),
    )
    # The server's own DETAIL and HINT lines follow the ERROR line that psql or pg_dump
    # prints: the HINT often is the fix ("You might need to increase
    # max_locks_per_transaction", "use ALTER TABLE NO FORCE ROW LEVEL SECURITY").
    server_says = []
    if cause in lines:
        for line in lines[lines.index(cause) + 1:]:
            if not line.startswith(("DETAIL:", "HINT:")):
                break
            server_says.append(line)
    # pg_dump and psql put the server's reason on "detail:" lines of their own.
    details = [line.split("detail:", 1)[1].strip() for line in lines
               if stage and line.startswith(stage + " detail:")]
    if details:
        cause += " (" + "; ".join(details) + ")"
    cause = " ".join([cause, *server_says])
    missing = next((line for line in lines if line.endswith("command not found")), None)
    if missing is not None:
        program = missing.rsplit(":", 2)[-2].strip()
        return f"{program} is not installed or not on PATH ({missing})"
    if "server version mismatch" in stderr:
        versions = next((line for line in lines if "server version:" in line), "")
        detail = versions.split("detail:", 1)[-1].strip()
        return (f"pg_dump is older than the server ({detail}): install a pg_dump at least"
                " as new as the server and put it first in PATH")
    if "statement timeout" in stderr and "LOCK TABLE" in stderr:
        table = LOCK_TABLE.search(stderr)
        where = f"table {table.group(1)}" if table else "a table"
        return (f"pg_dump gave up waiting for a lock on {where} after {lock_wait_timeout()} s:"
                " another session holds it (see pg_locks and pg_stat_activity); try again"
                " when it is done, or raise CARABASE_LOCK_WAIT_TIMEOUT")
    if "No space left on device" in stderr or "Disk quota exceeded" in stderr:
        return f"{cause} (free some space in {backup_root()} and try again)"
    cannot_connect = "connection to server" in stderr or "does not exist" in stderr
    if cause.startswith("pg_dump:") and cannot_connect:
        return f"{cause} (check {db.variable}: {db.uri})"
    return cause
