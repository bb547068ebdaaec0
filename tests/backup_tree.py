"""Fake backup files for the retention and status tests: the right names, any bytes.

Prune and status read backups by name (and status by size) only, so a file of
zeros under a backup's name stands in for a real one.
"""
from __future__ import annotations

from datetime import datetime
from pathlib import Path

from helpers import retention


def write_backup(env_root: Path, stamp: datetime, size: int = 4096) -> Path:
    """A fake backup of `size` bytes started at `stamp`, where the backup task puts it."""
    day = env_root / retention.date_dir_name(stamp)
    day.mkdir(parents=True, exist_ok=True)
    path = day / retention.backup_name(stamp)
    path.write_bytes(b"\0" * size)
    return path


def write_partial(env_root: Path, stamp: datetime, size: int = 100) -> Path:
    """The temporary file of a backup still being written (or of a killed one)."""
    day = env_root / retention.date_dir_name(stamp)
    day.mkdir(parents=True, exist_ok=True)
    path = day / retention.partial_name(stamp)
    path.write_bytes(b"\0" * size)
    return path


def files_under(root: Path) -> set[str]:
    """Every file below `root`, as paths relative to it."""
    return {str(path.relative_to(root)) for path in root.rglob("*") if path.is_file()}
