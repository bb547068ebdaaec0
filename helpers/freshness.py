"""How fresh each env's backups are: the judgement `backup.status` prints.

`assess_freshness` is pure (backups and `now` in, a verdict out); `freshness_of` feeds
it from the tree on disk, by names and sizes only.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from helpers import drill as drills
from helpers import tree
from helpers.config import env_dir

FRESH_FOR = timedelta(hours=30)  # PASS while the newest backup is younger than this
STALE_AFTER = timedelta(hours=72)  # FAIL from this age on; WARN in between
SMALLEST_PLAUSIBLE_BACKUP = 1024  # bytes; the encrypted gzip of an empty dump is smaller
SEVERITY = {"PASS": 0, "WARN": 1, "FAIL": 2}  # also the exit status of `backup.status`
IN_THE_FUTURE = "newest backup is dated in the future: check the clock"
# The version of `status --json` (docs/status.md). Fields keep their meaning; a change
# that would alter one takes a new field, or a new schema number.
JSON_SCHEMA = 1


@dataclass(frozen=True)
class Freshness:
    """How one env's newest backup looks: what `backup.status` prints for it."""

    env: str
    status: str  # PASS, WARN or FAIL
    latest: datetime | None = None  # the newest backup's start (UTC), from its name
    age: timedelta | None = None
    path: Path | None = None
    warning: str | None = None  # what makes it worse than its age alone says
    drill: dict | None = None  # the last restore drill's record (helpers.drill)

    def age_hours(self) -> float | None:
        """The age in hours, rounded down to a tenth, so that the age shown never reaches a
        threshold before the status does; None with no backup, or one dated in the future
        (an age that would be negative)."""
        if self.age is None or self.age < timedelta(0):
            return None
        return (self.age // timedelta(minutes=6)) / 10

    def line(self) -> str:
        head = f"[{self.env:<7}] {self.status}"
        if self.latest is None:
            return f"{head} {self.warning or 'no backups'}"
        hours = self.age_hours()
        when = "in the future" if hours is None else f"age={hours:.1f}h ago"
        text = f"{head} latest={utc_text(self.latest)} {when}"
        if self.drill is not None:
            text += f" drill={self.drill['finished']}"
        warning = self.warning
        if hours is None and warning:  # "in the future" is said already
            warning = warning.replace(IN_THE_FUTURE, "check the clock")
        return f"{text} ({warning})" if warning else text

    def as_json(self) -> dict:
        return {
            "env": self.env,
            "status": self.status,
            "latest": utc_text(self.latest) if self.latest else None,
            "age_hours": self.age_hours(),
            "path": str(self.path) if self.path else None,
            "warning": self.warning,
            "drill": self.drill,
        }


def utc_text(stamp: datetime) -> str:
    return stamp.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def assess_freshness(env: str, backups: list[tuple[datetime, Path, int]],
                     now: datetime, drill: dict | None = None,
                     drill_unreadable: str | None = None) -> Freshness:
    """Judge env at `now` from its backups: (UTC start, path, size in bytes), oldest first.

    Only the last two matter: the newest's age, and its size against the one before it.
    A last restore drill (its record, or why that cannot be read) that did not pass
    makes the env at least WARN.
    """
    if not backups:
        return Freshness(env, "FAIL", drill=drill)
    latest, path, size = backups[-1]
    age = now - latest
    status = "PASS" if age < FRESH_FOR else "WARN" if age < STALE_AFTER else "FAIL"
    warnings = []
    if latest > now:  # would pass forever, however stale the env really is
        warnings.append(IN_THE_FUTURE)
    # An empty or truncated dump is fresh by its name; its size gives it away.
    if size < SMALLEST_PLAUSIBLE_BACKUP:
        warnings.append(f"newest backup is {size} B, under 1 KiB")
    elif len(backups) > 1 and size * 2 < backups[-2][2]:
        percent = size * 100 // backups[-2][2]
        warnings.append(f"newest backup is {percent}% the size of the one before it")
    if drill is not None and drill["result"] != "PASS":
        problems = drill.get("problems") or []
        warnings.append(f"last drill {drill['result']}" + (f": {problems[0]}" if problems else ""))
    if drill_unreadable:
        warnings.append(drill_unreadable)
    if warnings and status == "PASS":
        status = "WARN"
    return Freshness(env, status, latest, age, path, "; ".join(warnings) or None, drill)


def freshness_of(env: str, now: datetime) -> Freshness:
    """assess_freshness on env's backups as they are on disk (names and sizes only)."""
    misplaced = tree.not_a_directory(env)
    if misplaced:
        return Freshness(env, "FAIL", warning=misplaced)
    try:
        sized = []
        for stamp, path in tree.list_backups(env)[-2:]:
            try:
                sized.append((stamp, path, path.stat().st_size))
            except FileNotFoundError:  # pruned between listing and stat
                continue
    except OSError as error:
        return Freshness(env, "FAIL", warning=f"cannot read {env_dir(env)}: {error.strerror}")
    try:
        drill, drill_unreadable = drills.last_drill(env), None
    except ValueError as error:
        drill, drill_unreadable = None, str(error)
    return assess_freshness(env, sized, now, drill, drill_unreadable)


def worst_status(reports: list[Freshness]) -> str:
    return max((report.status for report in reports), key=SEVERITY.__getitem__, default="PASS")


def status_json(worst: str, reports: list[Freshness]) -> str:
    return json.dumps({"schema": JSON_SCHEMA, "status": worst,
                       "envs": [report.as_json() for report in reports]}, indent=2)
