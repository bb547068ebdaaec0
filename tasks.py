"""Carabase backups: encrypted pg_dump backups per env, retention, status, restore, schedule.

    invoke backup.prod                         one encrypted backup of prod
    invoke backup.prune prod [--dry-run]       apply retention to prod's backups
    invoke backup.status [--json]              freshness of every env
    invoke backup.restore dev FILE [--yes]     restore a backup into dev's database
    invoke backup.install-cron prod            nightly backup + prune at 03:17
    invoke backup.uninstall-cron prod          remove that schedule

The shell does the heavy lifting (pg_dump, gzip/pigz, psql); `helpers` holds the
envelope filter, the retention math, the schedule rendering and the progress line.
Sections, in order: configuration, the backup tree, running pipelines, backup, restore,
retention and status, schedule, and the namespace. See README.md.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

from invoke import Collection, Exit, task

from helpers import crypto, launchd, progress, retention, schedule, systemd

ENVS = ("dev", "staging", "prod")
DATE_DIR = re.compile(r"^\d{4}-\d{2}-\d{2}$")
REPO = Path(__file__).resolve().parent


# --- configuration ------------------------------------------------------------------


def check_env(env: str) -> str:
    if env not in ENVS:
        raise Exit(f"unknown env {env!r}: expected one of {', '.join(ENVS)}")
    return env


def backup_root() -> Path:
    configured = os.environ.get("CARABASE_BACKUP_DIR")
    if not configured:
        return Path.home() / ".carabase" / "backups"
    root = Path(configured).expanduser()
    if not root.is_absolute():  # it would follow the current directory around
        raise Exit(f"CARABASE_BACKUP_DIR must be an absolute path, not {configured!r}")
    return root


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

    def on_database(self, name: str) -> Database:
        """The same server and credentials, another database (for CREATE DATABASE)."""
        parts = urlsplit(self.uri)
        uri = build_uri(parts.scheme, parts.netloc, name, parts.query)
        return Database(self.variable, uri, name, self.password)


def database(env: str) -> Database:
    variable = f"CARABASE_{check_env(env).upper()}_DATABASE_URL"
    url = os.environ.get(variable) or f"postgresql:///carabase_{env}"
    return parse_database_url(url, variable)


def parse_database_url(url: str, variable: str) -> Database:
    """Split a libpq URL into a password-free URI and the password. Messages never quote
    the URL itself: it may hold a password."""
    try:
        parts = urlsplit(url)
    except ValueError:  # unbalanced IPv6 brackets
        raise Exit(f"{variable} is not a valid postgresql:// URL") from None
    if parts.scheme not in ("postgresql", "postgres"):
        raise Exit(f"{variable} is not a postgresql:// URL")
    if parts.fragment or ("@" not in parts.netloc and "@" in url[len(parts.scheme) + 3:]):
        # A password holding '/', '?' or '#' cuts the URL short before its '@': the
        # password would then be read as a host and port, and shown in argv.
        raise Exit(f"{variable} cannot be read as a URL: percent-encode special"
                   " characters in the user name and password (/ as %2F, ? as %3F, # as %23)")
    userinfo, at, hostport = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    params = parse_qsl(parts.query, keep_blank_values=True)
    if any(key == "sslpassword" for key, _ in params):
        raise Exit(f"{variable}: sslpassword in the URL would show in process arguments;"
                   " use a client key without a passphrase, or libpq's service file")
    query_password = [value for key, value in params if key == "password"]
    query_dbname = [value for key, value in params if key == "dbname"]
    params = [(key, value) for key, value in params if key not in ("password", "dbname")]
    # In libpq a query parameter overrides the path, so the last dbname= wins.
    name = query_dbname[-1] if query_dbname else unquote(parts.path.lstrip("/"))
    if not name:
        raise Exit(f"{variable} names no database: end it with /<database name>")
    netloc = (user + "@" if at and user else "") + hostport
    # quote_via=quote: libpq decodes %20, not '+', as a space.
    uri = build_uri(parts.scheme, netloc, name, urlencode(params, quote_via=quote))
    if query_password:
        secret = query_password[-1]
    elif password:
        secret = unquote(password)
    else:
        secret = None
    return Database(variable, uri, name, secret)


def build_uri(scheme: str, netloc: str, name: str, query: str) -> str:
    # Not urlunsplit: it drops the "//" of an empty host ("postgresql:///db?host=/sock").
    return f"{scheme}://{netloc}/{quote(name, safe='')}" + (f"?{query}" if query else "")


# --- the backup tree ------------------------------------------------------------------


def ensure_private_dir(path: Path) -> Path:
    """Create `path` and any missing parent as 0700; tighten the backup tree if looser."""
    root = backup_root()
    for directory in (*reversed(path.parents), path):
        if not directory.exists():
            directory.mkdir(mode=0o700, exist_ok=True)
        elif not directory.is_dir():
            raise Exit(f"{directory} is not a directory: check CARABASE_BACKUP_DIR")
        elif (directory == root or root in directory.parents) \
                and directory.stat().st_mode & 0o077:
            directory.chmod(0o700)
    return path


def list_backups(env: str) -> list[tuple[datetime, Path]]:
    """Every backup of `env` as (UTC start time, path), oldest first. Names only."""
    found = []
    root = env_dir(env)
    if not root.is_dir():
        return found
    for day in date_dirs(root):
        for entry in day.iterdir():
            stamp = retention.parse_backup_name(entry.name)
            # A copy filed under another day (or a folder of its own) is the user's.
            if stamp is not None and retention.date_dir_name(stamp) == day.name \
                    and entry.is_file():
                found.append((stamp, entry))
    return sorted(found)


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
        raise Exit(f"{action} failed:{where}: {error.strerror or error}") from None


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


def pipeline(*stages: str | None) -> str:
    """A bash pipeline that fails when any stage fails; None stages are left out."""
    return "set -o pipefail; " + " | ".join(stage for stage in stages if stage)


def quoted(*words: object) -> str:
    return " ".join(shlex.quote(str(word)) for word in words)


def helper_command(module: str, *args: str) -> str:
    """`python -m helpers.<module>` with this very interpreter."""
    return quoted(sys.executable, "-m", f"helpers.{module}", *args)


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment additions for every pipeline: helpers importable from any cwd."""
    pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return {"PYTHONPATH": pythonpath, **(extra or {})}


class Interrupted(BaseException):
    """A signal asked us to stop; BaseException so that no `except Exception` eats it."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


@contextmanager
def stop_on_signal(action: str):
    """For the whole of a task: on SIGINT, SIGTERM or SIGHUP, stop our child processes
    and unwind with cleanup, exiting 128+signal.

    invoke only forwards Ctrl-C as a keystroke and keeps waiting, and a SIGTERM aimed at
    us alone would leave psql running until it COMMITs; so the children are stopped
    here, and Interrupted unwinds through every `finally` that removes temporary files.
    """
    raised = False

    def on_signal(signum, frame):
        nonlocal raised
        if raised:  # a second signal must not break the cleanup of the first
            return
        raised = True
        terminate_descendants()
        raise Interrupted(signum)

    watched = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {signum: signal.signal(signum, on_signal) for signum in watched}
    try:
        yield
    except Interrupted as caught:
        name = signal.Signals(caught.signum).name
        raise Exit(f"{action}: interrupted by {name}", code=128 + caught.signum) from None
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


# --- backup ---------------------------------------------------------------------------

# Plain SQL that re-applies over an existing database of any env, on any machine:
# DROP ... IF EXISTS before each CREATE, no owners, grants or tablespaces from the source,
# and no subscriptions (restoring prod's into dev would start pulling prod's changes).
PG_DUMP_OPTIONS = (
    "--format=plain",
    "--clean",
    "--if-exists",
    "--no-owner",
    "--no-privileges",
    "--no-tablespaces",
    "--no-subscriptions",
    "--no-security-labels",
    "--quote-all-identifiers",
)


COMPRESSORS = ("pigz", "gzip")


def compression_program() -> str:
    """pigz or gzip: CARABASE_COMPRESSOR if set, else pigz when it is on PATH.

    Either writes the same gzip format, so restores never depend on which one made a
    backup; pigz is just faster (on every core for compression, zlib's inflate for -t).
    """
    chosen = os.environ.get("CARABASE_COMPRESSOR", "").strip()
    if chosen and chosen not in COMPRESSORS:
        raise Exit(f"CARABASE_COMPRESSOR must be pigz or gzip, not {chosen!r}")
    if chosen == "pigz" and shutil.which("pigz") is None:
        raise Exit("CARABASE_COMPRESSOR=pigz but pigz is not on PATH: install pigz"
                   " (apt-get install pigz, brew install pigz) or unset CARABASE_COMPRESSOR")
    if chosen == "gzip" or shutil.which("pigz") is None:
        return "gzip"
    return "pigz"


def compressor() -> str:
    """The compression stage of the backup pipeline, level 9 whichever program; pigz
    runs CARABASE_COMPRESS_THREADS threads (default: one per core)."""
    threads = compress_threads()  # checked even for gzip: a typo must not wait for pigz
    if compression_program() == "pigz":
        return quoted("pigz", "-9", "-p", threads)
    return "gzip -9"


def gzip_check(path: Path) -> str:
    """A command that fails unless `path` holds an intact gzip stream. pigz -t takes half
    the time of gzip -t; its -v makes it refuse trailing junk, as gzip -t does."""
    if compression_program() == "pigz":
        return quoted("pigz", "-t", "-v", path)
    return quoted("gzip", "-t", path)


def compress_threads() -> int:
    configured = os.environ.get("CARABASE_COMPRESS_THREADS", "").strip()
    if not configured:
        return os.cpu_count() or 1
    if not configured.isdigit() or int(configured) < 1:
        raise Exit(f"CARABASE_COMPRESS_THREADS must be a whole number of threads, 1 or"
                   f" more, not {configured!r}")
    return int(configured)


def watching_terminal() -> str | None:
    """The terminal our stderr is on, if any: a person is watching there. None under
    cron, launchd and systemd (output to cron.log) or with output to a file or pipe."""
    try:
        return os.ttyname(sys.stderr.fileno()) if sys.stderr.isatty() else None
    except (AttributeError, OSError, ValueError):  # stderr closed or replaced
        return None


def progress_stage(label: str, total: int | None = None) -> str | None:
    """A pass-through stage that draws a live progress line on the watching terminal,
    or None when nobody watches. It draws on the terminal itself, not on its stderr,
    which invoke captures for error messages; and drawing is best effort, so that it
    cannot fail the pipeline."""
    terminal = watching_terminal()
    if terminal is None:
        return None
    sizes = () if total is None else ("--total", str(total))
    return helper_command("progress", "--label", label, *sizes, "--to", terminal)


def run_backup(c, env: str) -> Path:
    """One encrypted backup of `env`, published only once complete and on disk."""
    action = f"backup {env}"
    require_key()
    db = database(env)
    compress = compressor()
    started = time.monotonic()
    with os_errors_reported(action), stop_on_signal(f"{action} (nothing was published)"), \
            env_lock(env, action):
        remove_stale_partials(env)
        stamp = fresh_stamp(env)
        day = ensure_private_dir(env_dir(env) / retention.date_dir_name(stamp))
        final = day / retention.backup_name(stamp)
        partial = day / retention.partial_name(stamp)
        os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        try:
            command = pipeline(
                quoted("pg_dump", *PG_DUMP_OPTIONS, "--dbname", db.uri),
                compress,
                # After compression: it counts the file as it grows, and costs next to
                # nothing there (a fifth of the bytes, or less, of the dump itself).
                progress_stage(f"{action}: wrote"),
                helper_command("crypto", "encrypt") + " > " + quoted(partial),
            )
            result = c.run(command, env=child_env(db.child_env()), hide=True, warn=True,
                           in_stream=False)
            if not result.ok:
                raise Exit(f"{action} failed: {explain_pipeline_failure(result, db)}")
            publish(partial, final, action)
        except BaseException:
            partial.unlink(missing_ok=True)
            remove_if_empty(day)
            raise
    size = final.stat().st_size
    elapsed = time.monotonic() - started
    print(f"{action}: wrote {final} ({progress.human_bytes(size)}) in {elapsed:.1f}s")
    return final


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
        raise Exit(f"{action} failed: cannot write {final.parent}: {error.strerror}") from None


# Stage names as they prefix their own error messages, last stage first: when a stage
# fails, the stages before it fail too (broken pipe), so the last one to complain is
# where the trouble started.
_STAGE_PREFIXES = ("encrypt:", "decrypt:", "gzip:", "pigz:", "psql:", "pg_dump:")


def explain_pipeline_failure(result, db: Database) -> str:
    """One line from a failed pipeline's stderr: the root cause, plus what to do."""
    lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
    stage, cause = next(
        ((prefix, line) for prefix in _STAGE_PREFIXES for line in lines
         if line.startswith(prefix) and ": detail:" not in line),
        ("", lines[0] if lines else f"the pipeline exited with status {result.exited}"),
    )
    # pg_dump and psql put the server's reason on "detail:" lines of their own.
    details = [line.split("detail:", 1)[1].strip() for line in lines
               if stage and line.startswith(stage + " detail:")]
    if details:
        cause += " (" + "; ".join(details) + ")"
    text = result.stderr
    if "server version mismatch" in text:
        versions = next((line for line in lines if "server version:" in line), "")
        detail = versions.split("detail:", 1)[-1].strip()
        return (f"pg_dump is older than the server ({detail}): install a pg_dump at least"
                " as new as the server and put it first in PATH")
    if "No space left on device" in text or "Disk quota exceeded" in text:
        return f"{cause} (free some space in {backup_root()} and try again)"
    cannot_connect = "connection to server" in text or "does not exist" in text
    if cause.startswith("pg_dump:") and cannot_connect:
        return f"{cause} (check {db.variable}: {db.uri})"
    return cause


@task(name="dev")
def backup_dev(c):
    """One encrypted backup of the dev database."""
    run_backup(c, "dev")


@task(name="staging")
def backup_staging(c):
    """One encrypted backup of the staging database."""
    run_backup(c, "staging")


@task(name="prod")
def backup_prod(c):
    """One encrypted backup of the prod database."""
    run_backup(c, "prod")


# --- restore --------------------------------------------------------------------------


def psql_command(db: Database, *args: str) -> str:
    """psql that ignores ~/.psqlrc and stops at the first error."""
    return quoted("psql", "-X", "--quiet", "--set", "ON_ERROR_STOP=on", "--dbname", db.uri, *args)


def run_restore(c, env: str, file: str, yes: bool, i_know: bool) -> None:
    action = f"restore into {env}"
    check_env(env)
    source = user_path(file)
    if not source.exists():
        raise Exit(f"{action}: no such backup file: {source}")
    if not source.is_file():
        raise Exit(f"{action}: {source} is not a file")
    key = require_key()
    i_know = i_know or os.environ.get("CARABASE_I_KNOW") == "1"
    if env == "prod" and not i_know:
        raise Exit(f"{action} refused: restoring into prod needs --i-know (or CARABASE_I_KNOW=1)")
    target = database(env)
    if env != "prod":
        refuse_if_reaches_prod(c, target, action)

    with stop_on_signal(f"{action} (nothing was changed)"), private_tempfile() as plaintext:
        decrypt_and_check(c, key, source, plaintext, action)
        confirm_restore(source, env, target, yes, action)
        started = time.monotonic()
        apply_backup(c, plaintext, target, action)
    elapsed = time.monotonic() - started
    print(f"{action}: restored {source} into {target.uri} in {elapsed:.1f}s")


def user_path(file: str) -> Path:
    """A path as the user typed it. pnpm and npm run scripts from the repository root,
    and say in INIT_CWD where the user was."""
    try:
        path = Path(file).expanduser()
    except RuntimeError:  # ~user that does not exist
        path = Path(file)
    if not path.is_absolute() and os.environ.get("npm_lifecycle_event"):  # noqa: SIM112
        path = Path(os.environ.get("INIT_CWD", ".")) / path
    return path.resolve()


@contextmanager
def private_tempfile():
    """A 0600 temporary file from the moment it exists, deleted whatever happens."""
    fd, name = tempfile.mkstemp(prefix="carabase-restore-", suffix=".sql.gz")
    os.close(fd)
    try:
        yield Path(name)
    finally:
        os.unlink(name)


def decrypt_and_check(c, key: bytes, source: Path, plaintext: Path, action: str) -> None:
    """Decrypt `source` into `plaintext`, checking the tag and then the gzip stream."""
    try:
        src = open(source, "rb")  # noqa: SIM115 -- closed by the `with` below
    except OSError as error:
        raise Exit(f"{action}: cannot read {source}: {error.strerror}") from None
    try:
        with src, open(plaintext, "wb") as dst:
            crypto.decrypt_to(key, src, dst)
    except crypto.InvalidEnvelope as error:
        raise Exit(f"{action} refused: {source.name}: {error}") from None
    except OSError as error:
        raise Exit(f"{action}: cannot decrypt {source} into {plaintext.parent}"
                   f" (set TMPDIR to use another directory): {error.strerror}") from None
    check = c.run(gzip_check(plaintext), hide=True, warn=True, in_stream=False)
    if not check.ok:
        raise Exit(f"{action} refused: {source.name} decrypts but its gzip stream is damaged")


def apply_backup(c, plaintext: Path, target: Database, action: str) -> None:
    """Apply the dump in one transaction; on any failure the target is as it was."""
    created = create_database_if_missing(c, target, action)
    try:
        # With a person watching, a progress stage feeds gzip from the file, so that its
        # percentage is of the backup itself (gzip and psql keep pace through the pipes).
        # gzip even when pigz is installed: psql sets the pace here, and pigz -dc was
        # measured no faster (its threads compete with psql and the server for the cores).
        watch = progress_stage(f"{action}: read", total=plaintext.stat().st_size)
        if watch:
            decompress = f"{watch} < {quoted(plaintext)} | gzip -dc"
        else:
            decompress = quoted("gzip", "-dc", plaintext)
        # One transaction, committed only if the whole dump came through. Not psql's
        # --single-transaction: it sends COMMIT whenever its input ends, so a gzip killed
        # half-way would commit half a restore. Without our COMMIT, psql leaves with the
        # transaction open and the server rolls it back.
        command = pipeline(
            f"{{ echo 'BEGIN;'; {decompress} && echo 'COMMIT;'; }}",
            psql_command(target, "--file", "-") + " > /dev/null",
        )
        result = c.run(command, env=child_env(target.child_env()), hide=True, warn=True,
                       in_stream=False)
        if not result.ok:
            raise Exit(f"{action} failed, nothing was changed: "
                       f"{explain_pipeline_failure(result, target)}")
    except BaseException:
        if created:  # it did not exist before: leave it not existing
            drop_database(c, target)
        raise


def confirm_restore(source: Path, env: str, target: Database, yes: bool, action: str) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise Exit(f"{action} refused: no terminal to confirm on; pass --yes to restore"
                   " without asking")
    stamp = retention.parse_backup_name(source.name)
    taken = f" taken {stamp:%Y-%m-%d %H:%M:%S}Z" if stamp else ""
    print(f"This replaces the contents of {env}'s database {target.uri}\n"
          f"with the backup {source}{taken}.")
    try:
        answer = input("Type 'yes' to restore: ")
    except EOFError:  # Ctrl-D
        answer = ""
    if answer.strip().lower() != "yes":
        raise Exit(f"{action}: cancelled, nothing was changed")


def server_identity(c, db: Database) -> tuple[str, str] | None:
    """(cluster system identifier, database name) that `db` leads to; None if unreachable.

    The identifier is unique per PostgreSQL cluster, and the name is the one the server
    reports, so URLs spelled differently (localhost vs 127.0.0.1, a socket path, a
    tunnel, a pooler's alias) still compare equal. A database that does not exist yet
    is named as its URL names it, on the cluster its server belongs to.
    """
    def ask(candidate: Database, query: str):
        result = c.run(psql_command(candidate, "-At", "-c", query),
                       env=candidate.child_env(), hide=True, warn=True, in_stream=False)
        return result.stdout.strip() if result.ok else None

    reached = ask(db, "select system_identifier, current_database() from pg_control_system()")
    if reached:
        cluster, _, name = reached.partition("|")
        return cluster, name
    for maintenance in (db.on_database("postgres"), db.on_database("template1")):
        cluster = ask(maintenance, "select system_identifier from pg_control_system()")
        if cluster:
            return cluster, db.name
    return None


def refuse_if_reaches_prod(c, target: Database, action: str) -> None:
    prod = database("prod")
    target_identity = server_identity(c, target)
    if target_identity is None:
        raise Exit(f"{action}: cannot connect to the server of {target.uri}"
                   f" (check {target.variable})")
    prod_identity = server_identity(c, prod)
    if prod_identity is None and os.environ.get(prod.variable):
        # A configured prod we cannot reach might be this very server under another
        # route: refuse rather than guess. (Unset, prod is just not on this machine.)
        raise Exit(f"{action} refused: cannot reach the prod database to check that"
                   f" {target.variable} does not lead to it; fix {prod.variable}"
                   " or unset it if prod is not reachable from here")
    if prod_identity == target_identity:
        raise Exit(f"{action} refused: {target.variable} leads to the prod database"
                   f" ({prod.uri}); restore into prod only with: invoke backup.restore prod"
                   " FILE --i-know")


def run_sql_with_name(c, server: Database, sql: str, name: str):
    """Run `sql` on `server`, where :'name' / :"name" is `name` quoted by psql itself.

    psql interpolates variables only in scripts it reads, hence the printf pipe.
    """
    command = pipeline(
        quoted("printf", "%s\n", sql),
        psql_command(server, "-At", "--set", f"name={name}"),
    )
    return c.run(command, env=server.child_env(), hide=True, warn=True, in_stream=False)


def create_database_if_missing(c, target: Database, action: str) -> bool:
    """Create the target database if it does not exist; True if this call created it."""
    maintenance = target.on_database("postgres")
    probe = run_sql_with_name(
        c, maintenance, "select count(*) from pg_database where datname = :'name'", target.name
    )
    if not probe.ok:
        raise Exit(f"{action}: cannot connect to the server of {target.uri}: "
                   f"{explain_pipeline_failure(probe, target)}")
    if probe.stdout.strip() != "0":
        return False
    create = run_sql_with_name(c, maintenance, 'create database :"name"', target.name)
    if not create.ok:
        raise Exit(f"{action}: cannot create database {target.name}: "
                   f"{explain_pipeline_failure(create, target)}")
    return True


def drop_database(c, target: Database) -> None:
    """Undo create_database_if_missing after a failed restore."""
    # FORCE: the backend of a psql we just stopped may still be finishing.
    run_sql_with_name(c, target.on_database("postgres"),
                      'drop database if exists :"name" with (force)', target.name)


@task(
    help={
        "env": "the env whose database receives the backup (dev, staging, prod)",
        "file": "the .sql.gz.enc backup to restore",
        "yes": "do not ask for confirmation",
        "i-know": "required to restore into prod (or CARABASE_I_KNOW=1)",
    }
)
def restore(c, env, file, yes=False, i_know=False):
    """Restore a backup into an env's database, in one transaction."""
    run_restore(c, env, file, yes, i_know)


# --- retention and status -------------------------------------------------------------


def run_prune(env: str, dry_run: bool) -> None:
    """Apply `retention.plan` to env's backups, one line per backup; see README."""
    root = env_dir(env)  # checks env
    if not root.is_dir():
        print(f"{env}: nothing to prune: {root} does not exist")
        return
    with os_errors_reported(f"prune {env}"):
        if dry_run:  # deletes nothing, so it needs no lock and leaves partial files alone
            prune_backups(env, dry_run=True)
            return
        with env_lock(env, "prune"):  # no backup of env can start or finish meanwhile
            remove_stale_partials(env)
            prune_backups(env, dry_run=False)


def prune_backups(env: str, dry_run: bool) -> None:
    backups = list_backups(env)
    if not backups:
        print(f"{env}: no backups, nothing to prune")
        return
    decided = retention.plan([stamp for stamp, _ in backups], datetime.now(timezone.utc))
    delete_word = "would delete" if dry_run else "delete"
    width = len(delete_word)
    for stamp, path in backups:  # oldest first
        label = f"{path.parent.name}/{path.name}"
        if stamp in decided.keep:
            print(f"{'keep':<{width}}  {label}  {decided.why(stamp)}")
            continue
        if not dry_run:
            try:
                path.unlink(missing_ok=True)
            except OSError as error:
                raise Exit(f"prune {env}: cannot delete {path}: {error.strerror}") from None
            remove_if_empty(path.parent)
        print(f"{delete_word:<{width}}  {label}")
    kept, deleted = len(decided.keep), len(decided.delete)
    if dry_run:
        print(f"{env}: would keep {kept}, would delete {deleted} (dry run: nothing deleted)")
    else:
        print(f"{env}: kept {kept}, deleted {deleted}")


FRESH_FOR = timedelta(hours=30)  # PASS while the newest backup is younger than this
STALE_AFTER = timedelta(hours=72)  # FAIL from this age on; WARN in between
SMALLEST_PLAUSIBLE_BACKUP = 1024  # bytes; the encrypted gzip of an empty dump is smaller
SEVERITY = {"PASS": 0, "WARN": 1, "FAIL": 2}  # also the exit status of `backup.status`


@dataclass(frozen=True)
class Freshness:
    """How one env's newest backup looks: what `backup.status` prints for it."""

    env: str
    status: str  # PASS, WARN or FAIL
    latest: datetime | None = None  # the newest backup's start (UTC), from its name
    age: timedelta | None = None
    path: Path | None = None
    warning: str | None = None  # what makes it worse than its age alone says

    def line(self) -> str:
        head = f"[{self.env:<7}] {self.status}"
        if self.latest is None:
            return f"{head} {self.warning or 'no backups'}"
        # Rounded down, so that the age shown never reaches a threshold before the status.
        tenths = self.age // timedelta(minutes=6)
        text = f"{head} latest={utc_text(self.latest)} age={tenths / 10:.1f}h ago"
        return f"{text} ({self.warning})" if self.warning else text

    def as_json(self) -> dict:
        return {
            "env": self.env,
            "status": self.status,
            "latest": utc_text(self.latest) if self.latest else None,
            "age_hours": self.age / timedelta(hours=1) if self.age is not None else None,
            "path": str(self.path) if self.path else None,
            "warning": self.warning,
        }


def utc_text(stamp: datetime) -> str:
    return stamp.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def assess_freshness(env: str, backups: list[tuple[datetime, Path, int]],
                     now: datetime) -> Freshness:
    """Judge env at `now` from its backups: (UTC start, path, size in bytes), oldest first.

    Only the last two matter: the newest's age, and its size against the one before it.
    """
    if not backups:
        return Freshness(env, "FAIL")
    latest, path, size = backups[-1]
    age = now - latest
    status = "PASS" if age < FRESH_FOR else "WARN" if age < STALE_AFTER else "FAIL"
    warnings = []
    if latest > now:  # would pass forever, however stale the env really is
        warnings.append("newest backup is dated in the future: check the clock")
    # An empty or truncated dump is fresh by its name; its size gives it away.
    if size < SMALLEST_PLAUSIBLE_BACKUP:
        warnings.append(f"newest backup is {size} B, under 1 KiB")
    elif len(backups) > 1 and size * 2 < backups[-2][2]:
        percent = size * 100 // backups[-2][2]
        warnings.append(f"newest backup is {percent}% the size of the one before it")
    if warnings and status == "PASS":
        status = "WARN"
    return Freshness(env, status, latest, age, path, "; ".join(warnings) or None)


def freshness_of(env: str, now: datetime) -> Freshness:
    """assess_freshness on env's backups as they are on disk (names and sizes only)."""
    try:
        sized = []
        for stamp, path in list_backups(env)[-2:]:
            try:
                sized.append((stamp, path, path.stat().st_size))
            except FileNotFoundError:  # pruned between listing and stat
                continue
    except OSError as error:
        return Freshness(env, "FAIL", warning=f"cannot read {env_dir(env)}: {error.strerror}")
    return assess_freshness(env, sized, now)


def worst_status(reports: list[Freshness]) -> str:
    return max((report.status for report in reports), key=SEVERITY.__getitem__, default="PASS")


@task(help={"env": "dev, staging or prod",
            "dry-run": "print what would be kept and deleted; delete nothing"})
def prune(c, env, dry_run=False):
    """Apply retention to an env's backups: the last 7 days, 4 weekly, 3 monthly."""
    run_prune(env, dry_run)


@task(help={"json": "print one JSON object (for a health endpoint) instead of lines"})
def status(c, json=False):
    """Freshness of every env: exit 0 all PASS, 1 worst is WARN, 2 any FAIL."""
    now = datetime.now(timezone.utc)
    reports = [freshness_of(env, now) for env in ENVS]
    worst = worst_status(reports)
    if json:
        print(status_json(worst, reports))
    else:
        for report in reports:
            print(report.line())
    if SEVERITY[worst]:
        raise Exit(code=SEVERITY[worst])


def status_json(worst: str, reports: list[Freshness]) -> str:
    return json.dumps({"status": worst, "envs": [report.as_json() for report in reports]},
                      indent=2)


# --- schedule -------------------------------------------------------------------------

PLATFORMS = ("launchd", "systemd")


def default_platform() -> str:
    return "launchd" if sys.platform == "darwin" else "systemd"


@dataclass(frozen=True)
class ScheduleFile:
    path: Path
    content: bytes
    mode: int = 0o644


def launch_agent_path(env: str) -> Path:
    return Path.home() / "Library" / "LaunchAgents" / launchd.plist_name(env)


def systemd_user_dir() -> Path:
    configured = os.environ.get("XDG_CONFIG_HOME")
    absolute = configured and os.path.isabs(configured)
    base = Path(configured) if absolute else Path.home() / ".config"
    return base / "systemd" / "user"


def schedule_log(env: str) -> Path:
    """Where the scheduled runs of `env` write what they print."""
    return Path(os.path.abspath(env_dir(env) / "cron.log"))


def schedule_inputs(env: str, action: str) -> dict:
    """The inputs of the schedule files, checked now so that no schedule is installed
    that would fail every night: a key file that loads, a database URL without a
    password, pg_dump and invoke where the job will look for them."""
    if os.environ.get("HOST_MASTER_KEY") and not os.environ.get("HOST_MASTER_KEY_FILE"):
        raise Exit(
            f"{action}: refusing to write HOST_MASTER_KEY into a schedule file; keep the key"
            " in a 0600 file instead: mkdir -p ~/.carabase && (umask 077; printenv"
            " HOST_MASTER_KEY > ~/.carabase/master.key), then export"
            " HOST_MASTER_KEY_FILE=~/.carabase/master.key, unset HOST_MASTER_KEY and run"
            " this again"
        )
    try:
        crypto.load_key(os.environ)
    except crypto.MasterKeyError as error:
        raise Exit(f"{action}: refusing to install a schedule that would fail: {error}") from None
    key_file = os.path.abspath(os.environ["HOST_MASTER_KEY_FILE"])

    db = database(env)
    if db.password is not None:
        raise Exit(
            f"{action}: {db.variable} holds a password, which would be written into the"
            " schedule file: take it out of the URL and put it in ~/.pgpass (chmod 600)"
        )
    ignored = sorted(name for name in os.environ if name.startswith("PG") and name != "PGAPPNAME")
    if ignored:
        warn(f"NOTE: the nightly job will not see {', '.join(ignored)}: name the server, port"
             f" and user in {db.variable}, and keep a password in ~/.pgpass (chmod 600)")
    variables = {}
    if os.environ.get(db.variable):
        variables[db.variable] = os.environ[db.variable]
    variables["HOST_MASTER_KEY_FILE"] = key_file
    for setting in ("CARABASE_COMPRESSOR", "CARABASE_COMPRESS_THREADS"):
        if os.environ.get(setting):
            variables[setting] = os.environ[setting]

    pg_dump = shutil.which("pg_dump")
    if pg_dump is None:
        raise Exit(
            f"{action}: pg_dump is not on PATH: install the PostgreSQL client tools"
            " (or add their directory to PATH) and run this again"
        )
    invoke = Path(sys.executable).parent / "invoke"
    if not os.access(invoke, os.X_OK):
        raise Exit(
            f"{action}: no invoke program next to {sys.executable}:"
            " install this project into that environment (pip install -e .)"
        )
    return {
        "env": env,
        "invoke": os.path.abspath(invoke),
        "repo": str(REPO),
        "backup_dir": os.path.abspath(backup_root()),
        "log_path": str(schedule_log(env)),
        # pigz too, when it lives elsewhere (Homebrew): else the job quietly uses gzip.
        "path": schedule.job_path(*(os.path.dirname(os.path.abspath(tool))
                                    for tool in (pg_dump, shutil.which("pigz")) if tool)),
        "variables": variables,
    }


def schedule_files(env: str, platform: str, action: str) -> list[ScheduleFile]:
    inputs = schedule_inputs(env, action)
    try:
        if platform == "launchd":
            warn_if_macos_protected(inputs)
            return [ScheduleFile(launch_agent_path(env), launchd.render_plist(**inputs))]
        units = systemd.render_units(**inputs)
    except schedule.UnsafeSchedule as error:
        raise Exit(f"{action}: {error}") from None
    return [ScheduleFile(systemd_user_dir() / name, text.encode()) for name, text in units.items()]


def check_platform(platform: str | None) -> str:
    platform = platform or default_platform()
    if platform not in PLATFORMS:
        raise Exit(f"unknown platform {platform!r}: expected launchd or systemd")
    return platform


def write_atomically(file: ScheduleFile, action: str) -> None:
    """Replace `file.path` in one step: a reader sees the old file or the new, whole."""
    partial = file.path.with_name(f".{file.path.name}.{os.getpid()}.tmp")
    try:
        file.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, file.mode)
        try:
            os.fchmod(fd, file.mode)
            with os.fdopen(os.dup(fd), "wb") as stream:
                stream.write(file.content)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(partial, file.path)
    except OSError as error:
        try:
            partial.unlink(missing_ok=True)
        except OSError:  # its folder is what failed
            pass
        raise Exit(f"{action}: cannot write {file.path}: {error.strerror or error}") from None


def prepare_log(env: str, action: str) -> Path:
    """The env's directory (0700) and its cron.log (0600): launchd and systemd create
    neither the directory nor, with our modes, the file."""
    log = schedule_log(env)
    try:
        ensure_private_dir(env_dir(env))
        os.close(os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
    except OSError as error:
        raise Exit(f"{action}: cannot create {log}: {error.strerror or error}") from None
    return log


def warn(message: str) -> None:
    print(message, file=sys.stderr)


# Folders macOS keeps from background jobs that were never granted access to them.
MACOS_PROTECTED = ("Desktop", "Documents", "Downloads", "Library/Mobile Documents")


def warn_if_macos_protected(inputs: dict) -> None:
    home = Path.home()
    paths = [inputs["repo"], inputs["backup_dir"], inputs["variables"]["HOST_MASTER_KEY_FILE"]]
    for path in paths:
        for folder in MACOS_PROTECTED:
            if Path(path).is_relative_to(home / folder):
                warn(f"WARNING: {path} is inside ~/{folder}, which macOS may not let a"
                     " launchd job read: if cron.log shows 'Operation not permitted', move it"
                     " elsewhere or give the job's python Full Disk Access")
                break


def last_line(result) -> str:
    text = (result.stderr or result.stdout or "").strip()
    return text.splitlines()[-1] if text else f"exit status {result.exited}"


def launchctl_commands(env: str, plist: Path) -> tuple[str, str]:
    domain = f"gui/{os.getuid()}"
    return (quoted("launchctl", "bootout", f"{domain}/{launchd.label(env)}"),
            quoted("launchctl", "bootstrap", domain, plist))


def systemd_user_manager(c) -> str | None:
    """None when `systemctl --user` reaches a user manager, else why not."""
    if shutil.which("systemctl") is None:
        return "systemctl is not installed"
    probe = c.run("systemctl --user show --property=Version", warn=True, hide=True, in_stream=False)
    return None if probe.ok else f"systemctl --user failed: {last_line(probe)}"


def load_launchd(c, env: str, plist: Path, action: str) -> None:
    bootout, bootstrap = launchctl_commands(env, plist)
    if shutil.which("launchctl") is None:
        warn(f"WARNING: launchctl not found, so the job is written but not loaded;"
             f" on the Mac, run: {bootstrap}")
        return
    c.run(bootout, warn=True, hide=True, in_stream=False)  # fails when not loaded: fine
    result = c.run(bootstrap, warn=True, hide=True, in_stream=False)
    if result.failed:
        raise Exit(f"{action}: wrote {plist} but could not load it ({last_line(result)});"
                   f" run: {bootstrap}")
    print(f"loaded {launchd.label(env)} into launchd")


def load_systemd(c, env: str, action: str) -> None:
    timer = systemd.unit_name(env, "timer")
    enable = f"systemctl --user daemon-reload && systemctl --user enable --now {timer}"
    absent = systemd_user_manager(c)
    if absent is not None:
        warn(f"WARNING: no systemd user manager ({absent}), so the timer is written but"
             f" not enabled; in a session with one, run: {enable}")
        return
    for command in ("systemctl --user daemon-reload", f"systemctl --user enable --now {timer}"):
        result = c.run(command, warn=True, hide=True, in_stream=False)
        if result.failed:
            raise Exit(f"{action}: {command} failed ({last_line(result)}); run: {enable}")
    print(f"enabled {timer}")
    linger = c.run(quoted("loginctl", "show-user", os.getuid(), "--property=Linger", "--value"),
                   warn=True, hide=True, in_stream=False)
    if linger.ok and linger.stdout.strip() == "no":
        warn("NOTE: the timer runs only while you are logged in;"
             " to run it at night regardless, run: loginctl enable-linger $USER")


@task(
    help={
        "env": "dev, staging or prod",
        "platform": "launchd or systemd (default: launchd on macOS, systemd elsewhere)",
        "dry-run": "print what would be written and run, and change nothing",
    }
)
def install_cron(c, env, platform=None, dry_run=False):
    """Run backup.<env> then backup.prune <env> every night at 03:17 local time."""
    action = f"install-cron {check_env(env)}"
    platform = check_platform(platform)
    files = schedule_files(env, platform, action)
    log = schedule_log(env)
    if dry_run:
        for file in files:
            print(f"would write {file.path} (mode {file.mode:04o}):")
            print(file.content.decode(), end="" if file.content.endswith(b"\n") else "\n")
        print(f"would create {log} (mode 0600) for the output of the nightly runs")
        if platform == "launchd":
            print("would run: " + "; ".join(launchctl_commands(env, files[0].path)))
        else:
            timer = systemd.unit_name(env, "timer")
            print(f"would run: systemctl --user daemon-reload;"
                  f" systemctl --user enable --now {timer}")
        print("dry run: nothing written")
        return
    prepare_log(env, action)
    for file in files:
        write_atomically(file, action)
        print(f"wrote {file.path}")
    if platform == "launchd":
        load_launchd(c, env, files[0].path, action)
    else:
        load_systemd(c, env, action)
    print(f"{env}: backup then prune every night at"
          f" {schedule.HOUR:02d}:{schedule.MINUTE:02d} local time; output in {log}")


@task(
    help={
        "env": "dev, staging or prod",
        "platform": "launchd or systemd (default: launchd on macOS, systemd elsewhere)",
        "dry-run": "print what would be removed and run, and change nothing",
    }
)
def uninstall_cron(c, env, platform=None, dry_run=False):
    """Remove the nightly schedule of an env (its backups and cron.log stay)."""
    action = f"uninstall-cron {check_env(env)}"
    platform = check_platform(platform)
    if platform == "launchd":
        paths = [launch_agent_path(env)]
        bootout = launchctl_commands(env, paths[0])[0]
        commands = [bootout] if shutil.which("launchctl") else []
    else:
        timer = systemd.unit_name(env, "timer")
        paths = [systemd_user_dir() / systemd.unit_name(env, kind) for kind in ("timer", "service")]
        # `enable` links the timer here; `disable` unlinks it, even with no manager running.
        paths.append(systemd_user_dir() / "timers.target.wants" / timer)
        commands = [f"systemctl --user disable --now {timer}"] if shutil.which("systemctl") else []
    present = [path for path in paths if path.is_symlink() or path.exists()]
    if dry_run:
        for command in commands:
            print(f"would run: {command}")
        for path in present:
            print(f"would remove {path}")
        print("dry run: nothing removed")
        return
    unloaded = False
    for command in commands:
        unloaded |= c.run(command, warn=True, hide=True, in_stream=False).ok
    removed = []
    for path in paths:
        if path.is_symlink() or path.exists():
            try:
                path.unlink()
            except OSError as error:
                raise Exit(f"{action}: cannot remove {path}: {error.strerror or error}") from None
            removed.append(path)
            print(f"removed {path}")
    if platform == "systemd" and removed and systemd_user_manager(c) is None:
        c.run("systemctl --user daemon-reload", warn=True, hide=True, in_stream=False)
        c.run(f"systemctl --user reset-failed {systemd.unit_name(env, 'service')}",
              warn=True, hide=True, in_stream=False)
    if not removed and not unloaded:
        print(f"{env}: no nightly schedule was installed ({platform})")
        return
    print(f"{env}: nightly schedule removed; the backups and {schedule_log(env)} stay")


# --- the namespace --------------------------------------------------------------------


ns = Collection()
backup_tasks = Collection("backup")
ns.add_collection(backup_tasks)
for _task in (backup_dev, backup_staging, backup_prod, restore):
    backup_tasks.add_task(_task)
backup_tasks.add_task(prune)
backup_tasks.add_task(status)
backup_tasks.add_task(install_cron)
backup_tasks.add_task(uninstall_cron)
