"""Carabase backups: encrypted pg_dump backups per env, retention, status, restore, schedule.

    invoke backup.prod                         one encrypted backup of prod
    invoke backup.prune prod [--dry-run]       apply retention to prod's backups
    invoke backup.status [--json]              freshness of every env
    invoke backup.restore dev FILE [--yes]     restore a backup into dev's database
    invoke backup.install-cron prod            nightly backup + prune at 03:17

The shell does the heavy lifting (pg_dump, gzip, psql); `helpers` holds the envelope
filter, the retention math and the plist rendering. See README.md and DESIGN.md.
"""
from __future__ import annotations

import errno
import fcntl
import os
import shlex
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

from invoke import Collection, Exit, task

from helpers import crypto, retention

ENVS = ("dev", "staging", "prod")
REPO = Path(__file__).resolve().parent


# --- configuration ------------------------------------------------------------------


def check_env(env: str) -> str:
    if env not in ENVS:
        raise Exit(f"unknown env {env!r}: expected one of {', '.join(ENVS)}")
    return env


def backup_root() -> Path:
    configured = os.environ.get("CARABASE_BACKUP_DIR")
    return Path(configured).expanduser() if configured else Path.home() / ".carabase" / "backups"


def env_dir(env: str) -> Path:
    return backup_root() / check_env(env)


def require_key() -> bytes:
    """The master key, or a one-line Exit saying what is wrong with it."""
    try:
        return crypto.load_key(os.environ)
    except crypto.MasterKeyError as error:
        raise Exit(f"refusing to run: {error}") from None


@dataclass(frozen=True)
class Database:
    """Where an env's database is, split so that the password never reaches argv."""

    variable: str  # the environment variable the URL came from, for messages
    uri: str  # the URL without its password: safe in argv and messages
    name: str  # the database name
    password: str | None

    def child_env(self) -> dict[str, str]:
        """Environment for a libpq child (psql, pg_dump): the password travels here."""
        child = {"PGAPPNAME": "carabase-backup"}
        if self.password is not None:
            child["PGPASSWORD"] = self.password
        return child

    def on_database(self, name: str) -> "Database":
        """The same server and credentials, another database (for CREATE DATABASE)."""
        parts = urlsplit(self.uri)
        uri = urlunsplit(parts._replace(path="/" + quote(name, safe="")))
        return Database(self.variable, uri, name, self.password)


def database(env: str) -> Database:
    variable = f"CARABASE_{check_env(env).upper()}_DATABASE_URL"
    url = os.environ.get(variable) or f"postgresql:///carabase_{env}"
    return parse_database_url(url, variable)


def parse_database_url(url: str, variable: str) -> Database:
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise Exit(f"{variable} is not a postgresql:// URL")
    userinfo, at, hostport = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    params = parse_qsl(parts.query, keep_blank_values=True)
    query_password = [value for key, value in params if key == "password"]
    query_dbname = [value for key, value in params if key == "dbname"]
    params = [(key, value) for key, value in params if key not in ("password", "dbname")]
    # In libpq a query parameter overrides the path, so the last dbname= wins.
    name = query_dbname[-1] if query_dbname else unquote(parts.path.lstrip("/"))
    if not name:
        raise Exit(f"{variable} names no database: end it with /<database name>")
    netloc = (user + "@" if at and user else "") + hostport
    uri = urlunsplit((parts.scheme, netloc, "/" + quote(name, safe=""), urlencode(params), ""))
    if query_password:
        secret = query_password[-1]
    elif password:
        secret = unquote(password)
    else:
        secret = None
    return Database(variable, uri, name, secret)


# --- the backup tree ------------------------------------------------------------------


def ensure_private_dir(path: Path) -> Path:
    """Create `path` (and missing parents) as 0700; tighten it if it exists looser."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o077:
        path.chmod(0o700)
    return path


def list_backups(env: str) -> list[tuple[datetime, Path]]:
    """Every backup of `env` as (UTC start time, path), oldest first. Names only."""
    found = []
    root = env_dir(env)
    if not root.is_dir():
        return found
    for day in root.iterdir():
        if not day.is_dir():
            continue
        for entry in day.iterdir():
            stamp = retention.parse_backup_name(entry.name)
            if stamp is not None and entry.is_file():
                found.append((stamp, entry))
    return sorted(found)


def remove_stale_partials(env: str) -> list[Path]:
    """Delete temporary files left by killed backups. Call only while holding the lock."""
    removed = []
    root = env_dir(env)
    if not root.is_dir():
        return removed
    for day in root.iterdir():
        if day.is_dir():
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
def env_lock(env: str, action: str):
    """Hold the env's lock for the duration: one backup or prune of an env at a time.

    flock, so a killed holder never leaves a stale lock behind.
    """
    directory = ensure_private_dir(env_dir(env))
    fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise Exit(
                f"{action}: another backup or prune of {env} is running (pid {holder});"
                " try again when it has finished"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


# --- running pipelines ----------------------------------------------------------------


def pipeline(*stages: str) -> str:
    """A bash pipeline that fails when any stage fails."""
    return "set -o pipefail; " + " | ".join(stages)


def quoted(*words: object) -> str:
    return " ".join(shlex.quote(str(word)) for word in words)


def helper_command(module: str, *args: str) -> str:
    """`python -m helpers.<module>` with this very interpreter."""
    return quoted(sys.executable, "-m", f"helpers.{module}", *args)


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment additions for every pipeline: helpers importable from any cwd."""
    pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return {"PYTHONPATH": pythonpath, **(extra or {})}


@contextmanager
def children_stop_on_signal():
    """Turn SIGINT/SIGTERM/SIGHUP into: stop our child processes, remember the signal.

    invoke only forwards Ctrl-C as a keystroke and keeps waiting, and a SIGTERM aimed at
    us alone would leave psql running until it COMMITs; so we stop the children
    ourselves and let the task clean up and exit 128+signal.
    """
    state = SimpleNamespace(signum=None)

    def on_signal(signum, frame):
        if state.signum is None:
            state.signum = signum
        terminate_descendants()

    watched = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {signum: signal.signal(signum, on_signal) for signum in watched}
    try:
        yield state
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def terminate_descendants() -> None:
    """SIGTERM every process below this one (portable: ps exists on macOS and Linux)."""
    listing = subprocess.run(
        ["ps", "-A", "-o", "pid=", "-o", "ppid="], capture_output=True, text=True
    ).stdout
    children: dict[int, list[int]] = {}
    for line in listing.splitlines():
        pid, ppid = (int(field) for field in line.split())
        children.setdefault(ppid, []).append(pid)
    pending = list(children.get(os.getpid(), []))
    while pending:
        pid = pending.pop()
        pending.extend(children.get(pid, []))
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


def interrupted(action: str, signum: int) -> Exit:
    name = signal.Signals(signum).name
    return Exit(f"{action}: interrupted by {name}", code=128 + signum)


# --- tasks ----------------------------------------------------------------------------


ns = Collection()
backup_tasks = Collection("backup")
ns.add_collection(backup_tasks)
