"""The restore drill's judgement, its record, and when the schedule runs it.

`judge` is pure: the rows the dump carries (helpers.dumpscan), the rows the scratch
database holds after the restore, and the live database's tables and estimates go in;
PASS, WARN or FAIL and the problems come out. `record` and `last_drill` keep the result
in `<env>/.drill.json` for `backup.status`; `is_due` says whether tonight's run drills.
Running the restore itself is tasks.py's job.
"""
from __future__ import annotations

import json
import sys
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from helpers.config import backup_root, env_dir
from helpers.dumpscan import display_name
from helpers.errors import UserError
from helpers.process import file_lock
from helpers.settings import write_private

Table = tuple[str, str]  # (schema, name)

RECORD_NAME = ".drill.json"
RECORD_SCHEMA = 1
SCHEDULES = ("weekly", "nightly", "off")
DEFAULT_SCHEDULE = "weekly"
SUNDAY = 6  # datetime.weekday()
# A table whose dump holds under half the rows the live database estimates, once the
# estimate is big enough to mean something, is worth a look (WARN, not FAIL: estimates
# lag, and rows may have been added since the backup).
FAR_FEWER_RATIO = 0.5
SMALLEST_TRUSTED_ESTIMATE = 1000
NAMES_SHOWN = 5  # in the summary line; the record keeps every name


@dataclass
class Proof:
    """The outcome of a drill: what `drill` prints and records."""

    result: str  # PASS, WARN or FAIL
    tables: int = 0
    rows: int = 0
    problems: list[str] = field(default_factory=list)


@dataclass
class Live:
    """The live env database: each table's row estimate (negative: never estimated),
    and its large objects."""

    estimates: dict[Table, float]
    large_objects: int = 0


def judge(dump_rows: dict[Table, int], dump_large_objects: int,
          restored_rows: dict[Table, int], restored_large_objects: int,
          live: Live | None, unfinished_table: Table | None = None,
          live_unreachable: str | None = None) -> Proof:
    """PASS when the restore holds exactly what the dump carries and the dump holds every
    table the live database has; FAIL when not; WARN for rows far below the estimates.

    `restored_rows` leaves out tables that belong to an extension: the extension's own
    script fills them in the scratch database, so they hold more than the dump carries.
    """
    failures: list[str] = []
    warnings: list[str] = []
    if unfinished_table is not None:
        failures.append(f"the dump ends inside the data of {display_name(unfinished_table)}")
    mismatched = [f"{display_name(table)} holds {rows:,} rows, the dump carries"
                  f" {dump_rows.get(table, 0):,}"
                  for table, rows in sorted(restored_rows.items())
                  if rows != dump_rows.get(table, 0)]
    if mismatched:
        failures.append(f"{len(mismatched)} tables restored other rows than the dump"
                        f" carries: {_some(mismatched)}")
    if restored_large_objects != dump_large_objects:
        failures.append(f"{restored_large_objects:,} large objects restored, the dump carries"
                        f" {dump_large_objects:,}")
    if live is None:
        warnings.append(f"not compared with the live database: {live_unreachable}")
    else:
        missing = sorted(table for table in live.estimates if table not in dump_rows)
        if missing:
            failures.append(f"{len(missing)} tables of the live database missing from the"
                            f" backup: {_some([display_name(table) for table in missing])}")
        fewer = [f"{display_name(table)} ({dump_rows[table]:,} rows, live ~{estimate:,.0f})"
                 for table, estimate in sorted(live.estimates.items())
                 if table in dump_rows and _far_fewer(dump_rows[table], estimate)]
        if fewer:
            warnings.append(f"far fewer rows than the live database estimates: {_some(fewer)}")
        if live.large_objects and not dump_large_objects:
            failures.append(f"the live database has {live.large_objects:,} large objects,"
                            " the backup none")
        elif _far_fewer(dump_large_objects, live.large_objects):
            warnings.append(f"far fewer large objects ({dump_large_objects:,}) than the live"
                            f" database has ({live.large_objects:,})")
    result = "FAIL" if failures else "WARN" if warnings else "PASS"
    return Proof(result, len(dump_rows), sum(dump_rows.values()), failures + warnings)


def _far_fewer(rows: int, estimate: float) -> bool:
    return estimate >= SMALLEST_TRUSTED_ESTIMATE and rows < estimate * FAR_FEWER_RATIO


def _some(names: list[str]) -> str:
    shown = ", ".join(names[:NAMES_SHOWN])
    return shown + (f" and {len(names) - NAMES_SHOWN} more" if len(names) > NAMES_SHOWN else "")


def unreadable_problem(reason: str, other: Path | None, key_opens_other: bool) -> str:
    """Why a drill's backup would not decrypt, blaming the key only when it is to blame:
    a tag that fails says "wrong key, or damaged"; whether the same key opens `other`,
    another backup of the env, tells which. Without another backup, both stay possible."""
    if not reason.startswith("authentication failed") or (other and key_opens_other):
        return f"the backup is damaged: {reason}"
    if other is None:
        return f"the key does not open the backup: {reason}"
    return (f"the key is wrong: it opens neither this backup nor {other.name} (check"
            " HOST_MASTER_KEY_FILE, or ~/.carabase/master.key: the backups need the key"
            " that made them)")


def summary(env: str, proof: Proof, file: Path, seconds: float | None) -> str:
    """`drill prod: PASS <file> restored in 12.3s: 42 tables, 1,234,567 rows` (+ problems)."""
    line = f"drill {env}: {proof.result} {file}"
    if seconds is not None:
        line += f" restored in {seconds:.1f}s: {proof.tables:,} tables, {proof.rows:,} rows"
    if proof.problems:
        line += ("; " if seconds is not None else ": ") + "; ".join(proof.problems)
    return line


# --- the record ---------------------------------------------------------------------


def record_path(env: str) -> Path:
    return env_dir(env) / RECORD_NAME


def record(env: str, proof: Proof, file: Path, finished: datetime,
           seconds: float | None) -> Path:
    """Write `<env>/.drill.json` (0600) in one step: a reader sees the old or the new."""
    data = {"schema": RECORD_SCHEMA, "result": proof.result, "file": str(file),
            "finished": finished.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "seconds": None if seconds is None else round(seconds, 1),
            **{key: value for key, value in asdict(proof).items() if key != "result"}}
    path = record_path(env)
    try:
        write_private(path, json.dumps(data, indent=2) + "\n")
    except UserError as error:
        raise UserError(f"drill {env}: {error.message}") from None
    return path


def last_drill(env: str) -> dict | None:
    """The last drill's record, None if no drill has run. Raises ValueError (with the
    reason) for a record that cannot be read."""
    path = record_path(env)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read {path}: {getattr(error, 'strerror', None) or error}") \
            from None
    if not isinstance(data, dict) or data.get("result") not in ("PASS", "WARN", "FAIL") \
            or not isinstance(data.get("finished"), str):
        raise ValueError(f"cannot read {path}: not a drill record")
    return data


def finished_at(data: dict) -> datetime:
    return datetime.strptime(data["finished"], "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=timezone.utc)


@contextmanager
def scratch_lock(action: str):
    """One drill at a time on this machine, whatever the env: they share the scratch
    database, and each drops a leftover of it before starting. A second drill (another
    env's nightly run) waits for the first to finish."""
    path = backup_root() / ".drill.lock"

    def wait(fd: int) -> None:
        print(f"{action}: waiting for another drill to finish", file=sys.stderr)

    with ExitStack() as held:
        try:
            held.enter_context(file_lock(path, wait))
        except OSError as error:
            raise UserError(f"{action}: cannot open {path}: {error.strerror or error}") \
                from None
        yield


# --- the schedule -------------------------------------------------------------------


def drill_schedule(environ) -> str:
    """CARABASE_DRILL (written by install-cron --drill): weekly, nightly or off."""
    chosen = environ.get("CARABASE_DRILL", "").strip() or DEFAULT_SCHEDULE
    if chosen not in SCHEDULES:
        raise UserError(f"CARABASE_DRILL must be weekly, nightly or off, not {chosen!r}")
    return chosen


def is_due(schedule: str, last: datetime | None, now: datetime,
           last_result: str | None = None) -> bool:
    """Whether the nightly run at `now` (local time, aware) drills.

    weekly: on Sundays (local time) unless a drill already ran that day, and whenever
    none has run for 7 days (a machine asleep on Sunday catches up). A failed last
    drill, or none yet, makes it due every night until one passes muster.
    """
    if schedule == "off":
        return False
    if schedule == "nightly" or last is None or last_result == "FAIL":
        return True
    if now - last >= timedelta(days=7):
        return True
    return now.weekday() == SUNDAY and last.astimezone(now.tzinfo).date() < now.date()


def drill_due(env: str, environ, now: datetime) -> bool:
    """is_due for `env` tonight: CARABASE_DRILL and the last record. `now` is local time
    (datetime.now().astimezone()). A record that cannot be read makes a drill due."""
    try:
        last = last_drill(env)
    except ValueError:
        return drill_schedule(environ) != "off"
    return is_due(drill_schedule(environ), finished_at(last) if last else None, now,
                  last["result"] if last else None)
