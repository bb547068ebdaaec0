"""The backup tree on disk: `<root>/<env>/<YYYY-MM-DD>/<name>`, its directories, its
temporary files, and publishing a finished backup under its final name.

Names come from `retention` (names <-> times); this module only reads and writes files.
"""
from __future__ import annotations

import os
import re
import stat
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from helpers import retention
from helpers.config import backup_root, env_dir
from helpers.errors import UserError

DATE_DIR = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def ensure_private_dir(path: Path) -> Path:
    """Create `path` and any missing parent as 0700.

    Of the directories that exist already, only those inside the backup root (env and
    date directories: ours) are tightened to 0700. The root itself and what is above it
    keep their mode: the root may be a group-shared directory, $HOME, or /tmp with its
    sticky bit.
    """
    root = backup_root()
    for directory in (*reversed(path.parents), path):
        if not directory.exists():
            directory.mkdir(mode=0o700, exist_ok=True)
        elif not directory.is_dir():
            raise UserError(f"{directory} is not a directory: check CARABASE_BACKUP_DIR")
        elif root in directory.parents and directory.stat().st_mode & 0o077:
            directory.chmod(0o700)
    return path


def not_a_directory(env: str) -> str | None:
    """What is wrong when a file (not a directory) stands where env's backups would be:
    the backup root, a directory above it, or the env's directory. None otherwise, a
    missing directory included (it is simply empty)."""
    root = backup_root()
    for directory in (*reversed(root.parents), root):
        if directory.exists() and not directory.is_dir():
            return f"{directory} is not a directory (check CARABASE_BACKUP_DIR)"
    directory = env_dir(env)
    if directory.exists() and not directory.is_dir():
        return f"{directory} is not a directory (move it aside: {env}'s backups go there)"
    return None


def list_backups(env: str) -> list[tuple[datetime, Path]]:
    """Every backup of `env` as (UTC start time, path), oldest first: the regular files
    with a backup's name in their own date directory."""
    return scan_backups(env)[0]


def not_backups(env: str) -> list[tuple[Path, str]]:
    """What has a backup's name in a date directory but is not a regular file (a
    symlink, a folder...), as (path, what it is): never counted, pruned or restored."""
    return scan_backups(env)[1]


def scan_backups(env: str) -> tuple[list[tuple[datetime, Path]], list[tuple[Path, str]]]:
    found, others = [], []
    root = env_dir(env)
    if not root.is_dir():
        return found, others
    for day in date_dirs(root):
        for entry in day.iterdir():
            stamp = retention.parse_backup_name(entry.name)
            # A copy filed under another day is the user's.
            if stamp is None or retention.date_dir_name(stamp) != day.name:
                continue
            # lstat: a symlink named like a backup (to /etc/passwd, say) must never become
            # a keeper in place of the real backup of its day.
            mode = entry.lstat().st_mode
            if stat.S_ISREG(mode):
                found.append((stamp, entry))
            else:
                others.append((entry, kind_of(mode)))
    return sorted(found), sorted(others)


def kind_of(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a directory"
    return "a special file"


def date_dirs(root: Path) -> list[Path]:
    """The YYYY-MM-DD directories of an env: the only ones backups live in."""
    return [day for day in root.iterdir()
            if DATE_DIR.match(day.name) and day.is_dir() and not day.is_symlink()]


def remove_stale_partials(env: str) -> list[Path]:
    """Delete temporary files left by killed backups. Call only while holding the lock."""
    removed = []
    root = env_dir(env)
    if not root.is_dir():
        return removed
    for day in date_dirs(root):
        for entry in day.iterdir():
            if retention.is_partial_name(entry.name):
                entry.unlink(missing_ok=True)
                removed.append(entry)
        remove_if_empty(day)
    return removed


def remove_if_empty(directory: Path) -> None:
    try:
        directory.rmdir()
    except OSError:  # not empty (or already gone): leave it
        pass


@contextmanager
def os_errors_reported(action: str):
    """An unreadable directory, a full disk...: one line naming the file, no traceback."""
    try:
        yield
    except OSError as error:
        where = f" {error.filename}" if error.filename else ""
        raise UserError(f"{action} failed:{where}: {error.strerror or error}") from None


def fresh_stamp(env: str) -> datetime:
    """Now, to the second; the next second if a backup of this second exists already.

    Called under the env's lock, so no other backup of the env can take the same name.
    """
    while True:
        stamp = datetime.now(timezone.utc).replace(microsecond=0)
        day = env_dir(env) / retention.date_dir_name(stamp)
        if not (day / retention.backup_name(stamp)).exists():
            return stamp
        time.sleep(1 - datetime.now(timezone.utc).microsecond / 1e6)


def publish(partial: Path, final: Path, action: str) -> None:
    """fsync the finished file, rename it to its final name, fsync the directory."""
    try:
        fd = os.open(partial, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(partial, final)
        fd = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as error:
        final.unlink(missing_ok=True)
        raise UserError(f"{action} failed: cannot write {final.parent}: {error.strerror}") \
            from None
