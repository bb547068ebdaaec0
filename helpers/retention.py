"""Backup file names <-> UTC times, and which backups to keep.

A backup is `<YYYY-MM-DD>/<YYYY-MM-DDTHHMMSS>.sql.gz.enc`, the time being the
backup's start in UTC. This module is the one place that knows that format.
"""
from __future__ import annotations

import re
from datetime import datetime, timezone

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
