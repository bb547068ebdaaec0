"""Fake backup files for the retention and status tests: the right names, any bytes.

Prune and status read backups by name (and status by size) only, so a file of
zeros under a backup's name stands in for a real one.
"""
from __future__ import annotations

import os
from datetime import datetime, timezone
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


def seed_old_backups(backup_dir: Path, env: str = "dev") -> list[Path]:
    """Three backups of one day long ago (random bytes over 1 KiB): a prune deletes the
    two older ones and keeps the newest."""
    day = backup_dir / env / "2020-01-01"
    day.mkdir(parents=True)
    paths = []
    for hour in (1, 2, 3):
        path = day / retention.backup_name(datetime(2020, 1, 1, hour, tzinfo=timezone.utc))
        path.write_bytes(b"\x01" + os.urandom(2048))
        paths.append(path)
    return paths
