"""Backup file names <-> UTC times, and which backups to keep.

A backup is `<YYYY-MM-DD>/<YYYY-MM-DDTHHMMSS>.sql.gz.enc`, the time being the
backup's start in UTC. This module is the one place that knows that format.

`plan(stamps, now)` decides which backups to keep; it is pure (no I/O, no clock).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from types import MappingProxyType
from collections.abc import Callable, Iterable, Mapping

SUFFIX = ".sql.gz.enc"
PARTIAL_SUFFIX = ".partial"

_STAMP_FORMAT = "%Y-%m-%dT%H%M%S"
_BACKUP_NAME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{6}\.sql\.gz\.enc$")
_PARTIAL_NAME = re.compile(r"^\.\d{4}-\d{2}-\d{2}T\d{6}\.sql\.gz\.enc\.partial$")


def backup_name(stamp: datetime) -> str:
    """File name of the backup started at `stamp` (an aware datetime)."""
    return stamp.astimezone(timezone.utc).strftime(_STAMP_FORMAT) + SUFFIX


def date_dir_name(stamp: datetime) -> str:
    """Name of the per-day directory holding the backup started at `stamp`."""
    return stamp.astimezone(timezone.utc).strftime("%Y-%m-%d")


def partial_name(stamp: datetime) -> str:
    """Temporary name of a backup being written; never parses as a backup."""
    return "." + backup_name(stamp) + PARTIAL_SUFFIX


def parse_backup_name(name: str) -> datetime | None:
    """UTC start time of the backup called `name`, or None if it is not a backup name."""
    if not _BACKUP_NAME.match(name):
        return None
    try:
        stamp = datetime.strptime(name[: -len(SUFFIX)], _STAMP_FORMAT)
    except ValueError:  # shaped like a name, but not a real time (month 13)
        return None
    return stamp.replace(tzinfo=timezone.utc)


def is_partial_name(name: str) -> bool:
    """True for the temporary file of a backup in progress (or of a killed one)."""
    return bool(_PARTIAL_NAME.match(name))


# --- retention ----------------------------------------------------------------------

DAILY_WINDOW = timedelta(days=7)
WEEKS_KEPT = 4
MONTHS_KEPT = 3


@dataclass(frozen=True)
class Plan:
    """What retention decided: `keep` and `delete` partition the stamps it was given.

    `reasons` maps every kept stamp to all the rules that keep it, in rule order:
    "daily", "weekly 2026-W14" (ISO week), "monthly 2026-03", "newest", "future".
    """

    keep: frozenset[datetime]
    delete: frozenset[datetime]
    reasons: Mapping[datetime, tuple[str, ...]]

    def why(self, stamp: datetime) -> str:
        """Why `stamp` is kept, e.g. "daily, newest"; empty if it is to be deleted."""
        return ", ".join(self.reasons.get(stamp, ()))


def plan(stamps: Iterable[datetime], now: datetime) -> Plan:
    """Which backups to keep at `now`, given their UTC start times (aware datetimes).

    1. every backup from the last 7 days is kept ("daily");
    2. of the older ones, the newest of each of the 4 most recent ISO weeks that
       contain one ("weekly");
    3. of those older than every weekly keeper, the newest of each of the 3 most
       recent calendar months that contain one ("monthly");
    4. the newest backup is always kept ("newest"), and so is any dated after `now`
       ("future": a clock problem to look at, not a reason to lose data);
    5. everything else is deleted.

    Weeks and months are calendar buckets in UTC, so a keeper stays a keeper until a
    newer backup takes its bucket or its bucket ages out.
    """
    now = _utc(now)
    stamps = frozenset(_utc(stamp) for stamp in stamps)
    reasons: dict[datetime, list[str]] = {}

    def keep(stamp: datetime, reason: str) -> None:
        reasons.setdefault(stamp, []).append(reason)

    past = [stamp for stamp in stamps if stamp <= now]
    for stamp in past:
        if now - stamp < DAILY_WINDOW:
            keep(stamp, "daily")

    older = sorted(stamp for stamp in past if now - stamp >= DAILY_WINDOW)
    weekly = _newest_per_bucket(older, _iso_week, WEEKS_KEPT)
    for stamp, week in weekly:
        keep(stamp, f"weekly {week}")

    # Months only reach behind the weeks: "older than every weekly keeper".
    if weekly:
        oldest_weekly = min(stamp for stamp, _ in weekly)
        older = [stamp for stamp in older if stamp < oldest_weekly]
    for stamp, month in _newest_per_bucket(older, _month, MONTHS_KEPT):
        keep(stamp, f"monthly {month}")

    if stamps:
        keep(max(stamps), "newest")
    for stamp in stamps:
        if stamp > now:
            keep(stamp, "future")

    kept = frozenset(reasons)
    return Plan(
        keep=kept,
        delete=stamps - kept,
        reasons=MappingProxyType({stamp: tuple(why) for stamp, why in reasons.items()}),
    )


def _newest_per_bucket(
    oldest_first: list[datetime], bucket_of: Callable[[datetime], str], count: int
) -> list[tuple[datetime, str]]:
    """The newest stamp of each of the `count` most recent buckets that hold one."""
    chosen: list[tuple[datetime, str]] = []
    seen: set[str] = set()
    for stamp in reversed(oldest_first):  # newest first: a bucket's first hit is its newest
        bucket = bucket_of(stamp)
        if bucket in seen:
            continue
        if len(seen) == count:
            break
        seen.add(bucket)
        chosen.append((stamp, bucket))
    return chosen


def _iso_week(stamp: datetime) -> str:
    year, week, _ = stamp.isocalendar()  # ISO year: 2024-12-30 is in 2025-W01
    return f"{year}-W{week:02d}"


def _month(stamp: datetime) -> str:
    return f"{stamp.year}-{stamp.month:02d}"


def _utc(stamp: datetime) -> datetime:
    if stamp.tzinfo is None or stamp.utcoffset() is None:
        raise ValueError(f"{stamp!r} has no time zone: retention works on UTC-aware datetimes")
    return stamp.astimezone(timezone.utc)
