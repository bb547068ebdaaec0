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
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

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
        uri = build_uri(parts.scheme, parts.netloc, name, parts.query)
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
    uri = build_uri(parts.scheme, netloc, name, urlencode(params))
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
        elif directory == root or root in directory.parents:
            if directory.stat().st_mode & 0o077:
                directory.chmod(0o700)
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


def compressor() -> str:
    """The compression stage of the backup pipeline."""
    return "gzip -9"


def run_backup(c, env: str) -> Path:
    """One encrypted backup of `env`, published only once complete and on disk."""
    action = f"backup {env}"
    require_key()
    db = database(env)
    started = time.monotonic()
    with env_lock(env, action):
        remove_stale_partials(env)
        stamp = fresh_stamp(env)
        day = ensure_private_dir(env_dir(env) / retention.date_dir_name(stamp))
        final = day / retention.backup_name(stamp)
        partial = day / retention.partial_name(stamp)
        os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        try:
            command = pipeline(
                quoted("pg_dump", *PG_DUMP_OPTIONS, "--dbname", db.uri),
                compressor(),
                helper_command("crypto", "encrypt") + " > " + quoted(partial),
            )
            with children_stop_on_signal() as caught:
                result = c.run(command, env=child_env(db.child_env()), hide=True,
                               warn=True, in_stream=False)
            if caught.signum:
                raise interrupted(action, caught.signum)
            if not result.ok:
                raise Exit(f"{action} failed: {explain_pipeline_failure(result, db)}")
            publish(partial, final, action)
        except BaseException:
            partial.unlink(missing_ok=True)
            remove_if_empty(day)
            raise
    size = final.stat().st_size
    elapsed = time.monotonic() - started
    print(f"{action}: wrote {final} ({human_size(size)}) in {elapsed:.1f}s")
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
    cause = next(
        (line for prefix in _STAGE_PREFIXES for line in lines if line.startswith(prefix)),
        lines[0] if lines else f"the pipeline exited with status {result.exited}",
    )
    text = result.stderr
    if "server version mismatch" in text:
        versions = next((line for line in lines if "server version:" in line), "")
        detail = versions.split("detail:", 1)[-1].strip()
        return (f"pg_dump is older than the server ({detail}): install a pg_dump at least"
                " as new as the server and put it first in PATH")
    if "No space left on device" in text or "Disk quota exceeded" in text:
        return f"{cause} (free some space in {backup_root()} and try again)"
    if cause.startswith("pg_dump:") and ("connection to server" in text or "does not exist" in text):
        return f"{cause} (check {db.variable}: {db.uri})"
    return cause


def human_size(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


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
    source = Path(file).expanduser().resolve()
    if not source.is_file():
        raise Exit(f"{action}: no such backup file: {source}")
    key = require_key()
    i_know = i_know or os.environ.get("CARABASE_I_KNOW") == "1"
    if env == "prod" and not i_know:
        raise Exit(f"{action} refused: restoring into prod needs --i-know (or CARABASE_I_KNOW=1)")
    target = database(env)
    if env != "prod":
        refuse_if_reaches_prod(c, target, action)

    fd, name = tempfile.mkstemp(prefix="carabase-restore-", suffix=".sql.gz")  # 0600
    plaintext = Path(name)
    created = False
    try:
        with open(source, "rb") as src, os.fdopen(fd, "wb") as dst:
            try:
                crypto.decrypt_to(key, src, dst)
            except crypto.InvalidEnvelope as error:
                raise Exit(f"{action} refused: {source.name}: {error}") from None
            except OSError as error:
                raise Exit(f"{action}: cannot decrypt {source}: {error.strerror}") from None
        check = c.run(quoted("gzip", "-t", plaintext), hide=True, warn=True, in_stream=False)
        if not check.ok:
            raise Exit(f"{action} refused: {source.name} decrypts but its gzip stream is damaged")

        confirm_restore(source, env, target, yes, action)
        started = time.monotonic()
        created = create_database_if_missing(c, target, action)
        command = pipeline(
            quoted("gzip", "-dc", plaintext),
            psql_command(target, "--single-transaction", "--file", "-") + " > /dev/null",
        )
        with children_stop_on_signal() as caught:
            result = c.run(command, env=child_env(target.child_env()), hide=True, warn=True,
                           in_stream=False)
        if caught.signum:
            raise interrupted(f"{action} (nothing was changed)", caught.signum)
        if not result.ok:
            raise Exit(f"{action} failed, nothing was changed: "
                       f"{explain_pipeline_failure(result, target)}")
        created = False  # the restore succeeded: the new database stays
    except KeyboardInterrupt:
        raise Exit(f"{action}: cancelled, nothing was changed", code=130) from None
    finally:
        plaintext.unlink(missing_ok=True)
        if created:
            drop_database(c, target)
    elapsed = time.monotonic() - started
    print(f"{action}: restored {source} into {target.uri} in {elapsed:.1f}s")


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
    answer = input("Type 'yes' to restore: ")
    if answer.strip().lower() != "yes":
        raise Exit(f"{action}: cancelled, nothing was changed")


def server_identity(c, db: Database) -> tuple[str, str] | None:
    """(cluster system identifier, database name) that `db` leads to; None if unreachable.

    The identifier is unique per PostgreSQL cluster, so two URLs spelled differently
    (localhost vs 127.0.0.1, a socket path, a tunnel) still compare equal.
    """
    query = "select system_identifier from pg_control_system()"
    for candidate in (db, db.on_database("postgres"), db.on_database("template1")):
        result = c.run(psql_command(candidate, "-At", "-c", query), env=candidate.child_env(),
                       hide=True, warn=True, in_stream=False)
        if result.ok:
            return result.stdout.strip(), db.name
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
    run_sql_with_name(c, target.on_database("postgres"), 'drop database if exists :"name"',
                      target.name)


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


# --- tasks ----------------------------------------------------------------------------


ns = Collection()
backup_tasks = Collection("backup")
ns.add_collection(backup_tasks)
for _task in (backup_dev, backup_staging, backup_prod, restore):
    backup_tasks.add_task(_task)
backup_tasks.add_task(prune)
backup_tasks.add_task(status)
