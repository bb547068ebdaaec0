"""What the environment variables say: the envs, the backup root, the key, each env's
database URL, the compressor. See the README's Configuration table.

Read from os.environ at call time (tests and pnpm change it); every bad value is a
UserError naming the variable, never quoting a secret.
"""
from __future__ import annotations

import functools
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

from helpers import crypto, settings
from helpers.errors import UserError

ENVS = ("dev", "staging", "prod")
COMPRESSORS = ("pigz", "gzip")
PROFILES = ("best", "fast")


def check_env(env: str) -> str:
    if env not in ENVS:
        raise UserError(f"unknown env {env!r}: expected one of {', '.join(ENVS)}")
    return env


def configured_envs() -> tuple[str, ...]:
    """The envs this machine backs up (CARABASE_ENVS, by commas or spaces; else as
    ~/.carabase/env records it), in ENVS order; all of them when neither says. Status
    shows and counts only these."""
    configured, source = os.environ.get("CARABASE_ENVS", ""), "CARABASE_ENVS"
    if not configured.strip():
        configured = settings.recorded(settings.ENVS_SETTING)
        source = f"CARABASE_ENVS in {settings.settings_file()}"
    if not configured.strip():
        return ENVS
    named = configured.replace(",", " ").split()
    unknown = [name for name in named if name not in ENVS]
    if unknown or not named:
        raise UserError(f"{source} must list some of {', '.join(ENVS)} separated by"
                        f" commas, not {configured!r}")
    return tuple(env for env in ENVS if env in named)


def backup_root() -> Path:
    configured = os.environ.get("CARABASE_BACKUP_DIR")
    if not configured:
        return Path.home() / ".carabase" / "backups"
    if configured != configured.strip() or any(ord(char) < 0x20 or ord(char) == 0x7f
                                               for char in configured):
        # "/srv/backups " is another folder than "/srv/backups": a second tree, silently.
        raise UserError(f"CARABASE_BACKUP_DIR has a space, tab or control character at its"
                        f" start or end, or a control character inside: {configured!r};"
                        " set it to the folder's path alone")
    root = Path(configured).expanduser()
    if not root.is_absolute():  # it would follow the current directory around
        raise UserError(f"CARABASE_BACKUP_DIR must be an absolute path, not {configured!r}")
    return root


def env_dir(env: str) -> Path:
    return backup_root() / check_env(env)


def require_key() -> bytes:
    """The master key, or a UserError saying what is wrong with it."""
    try:
        return crypto.load_key(os.environ)
    except crypto.MasterKeyError as error:
        raise UserError(f"refusing to run: {error}") from None


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


# --- databases ----------------------------------------------------------------------


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


def drill_database() -> Database:
    """The scratch database restore drills use (and drop): never any env's database."""
    variable = "CARABASE_DRILL_DATABASE_URL"
    return parse_database_url(os.environ.get(variable) or "postgresql:///carabase_drill",
                              variable)


def parse_database_url(url: str, variable: str) -> Database:
    """Split a libpq URL into a password-free URI and the password. Messages never quote
    the URL itself: it may hold a password."""
    try:
        parts = urlsplit(url)
    except ValueError:  # unbalanced IPv6 brackets
        raise UserError(f"{variable} is not a valid postgresql:// URL") from None
    if parts.scheme not in ("postgresql", "postgres"):
        raise UserError(f"{variable} is not a postgresql:// URL")
    if parts.fragment or ("@" not in parts.netloc and "@" in url[len(parts.scheme) + 3:]):
        # A password holding '/', '?' or '#' cuts the URL short before its '@': the
        # password would then be read as a host and port, and shown in argv.
        raise UserError(f"{variable} cannot be read as a URL: percent-encode special"
                        " characters in the user name and password (/ as %2F, ? as %3F,"
                        " # as %23)")
    userinfo, at, hostport = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    params = parse_qsl(parts.query, keep_blank_values=True)
    if any(key == "sslpassword" for key, _ in params):
        raise UserError(f"{variable}: sslpassword in the URL would show in process arguments;"
                        " use a client key without a passphrase, or libpq's service file")
    query_password = [value for key, value in params if key == "password"]
    query_dbname = [value for key, value in params if key == "dbname"]
    params = [(key, value) for key, value in params if key not in ("password", "dbname")]
    # In libpq a query parameter overrides the path, so the last dbname= wins.
    name = query_dbname[-1] if query_dbname else unquote(parts.path.lstrip("/"))
    if not name:
        raise UserError(f"{variable} names no database: end it with /<database name>")
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


# --- pg_dump ----------------------------------------------------------------------------

LOCK_WAIT_DEFAULT = 300  # seconds
LOCK_WAIT_MAX = 2_147_483  # seconds: pg_dump sets it as statement_timeout, at most 2^31-1 ms


def lock_wait_timeout() -> int:
    """CARABASE_LOCK_WAIT_TIMEOUT: how many seconds pg_dump waits for a table's lock."""
    configured = os.environ.get("CARABASE_LOCK_WAIT_TIMEOUT", "").strip()
    if not configured:
        return LOCK_WAIT_DEFAULT
    whole = configured.isascii() and configured.isdigit()
    if not whole or not 1 <= int(configured) <= LOCK_WAIT_MAX:
        raise UserError(f"CARABASE_LOCK_WAIT_TIMEOUT must be a whole number of seconds, from 1"
                        f" to {LOCK_WAIT_MAX}, not {configured!r}")
    return int(configured)


# --- compression ----------------------------------------------------------------------


def compression_program() -> str:
    """pigz or gzip: CARABASE_COMPRESSOR if set, else pigz when it is on PATH.

    Either writes the same gzip format, so restores never depend on which one made a
    backup; pigz is just faster (on every core for compression, zlib's inflate for -t).
    """
    chosen = os.environ.get("CARABASE_COMPRESSOR", "").strip()
    if chosen and chosen not in COMPRESSORS:
        raise UserError(f"CARABASE_COMPRESSOR must be pigz or gzip, not {chosen!r}")
    if chosen == "pigz" and shutil.which("pigz") is None:
        raise UserError("CARABASE_COMPRESSOR=pigz but pigz is not on PATH: install pigz"
                        " (apt-get install pigz, brew install pigz) or unset"
                        " CARABASE_COMPRESSOR")
    if chosen == "gzip" or shutil.which("pigz") is None:
        return "gzip"
    return "pigz"


def compression_profile() -> str:
    """CARABASE_COMPRESSION: `best` (level 9, the default) or `fast` (ISA-L level 2)."""
    chosen = os.environ.get("CARABASE_COMPRESSION", "").strip() or "best"
    if chosen not in PROFILES:
        raise UserError(f"CARABASE_COMPRESSION must be best or fast, not {chosen!r}")
    return chosen


@functools.cache
def isal_loads() -> bool:
    """Whether ISA-L (the isal package) loads here: its wheel ships a compiled library,
    and a platform without a wheel, or a broken install, must fall back to gzip."""
    try:
        import isal.isal_zlib  # noqa: F401
    except Exception:  # ImportError, or an OSError from a library that will not load
        return False
    return True


def compress_threads() -> int:
    configured = os.environ.get("CARABASE_COMPRESS_THREADS", "").strip()
    if not configured:
        return os.cpu_count() or 1
    # isascii: str.isdigit() also takes "²" and other digits int() refuses.
    if not (configured.isascii() and configured.isdigit()) or int(configured) < 1:
        raise UserError(f"CARABASE_COMPRESS_THREADS must be a whole number of threads, 1 or"
                        f" more, not {configured!r}")
    return int(configured)


# Below this many compressed bytes a restore applies in one session unless told how
# many: the parallel apply's Python and more psql sessions cost more to start than
# they save on so little SQL.
SMALL_RESTORE = 1024 * 1024


def restore_jobs(option: str | None = None) -> int | None:
    """How many sessions a restore loads the fresh database with, as asked: --jobs, else
    CARABASE_RESTORE_JOBS; None when neither says (see restore_sessions)."""
    source = "--jobs" if option is not None else "CARABASE_RESTORE_JOBS"
    configured = str(option if option is not None
                     else os.environ.get("CARABASE_RESTORE_JOBS", "")).strip()
    if not configured:
        return None
    # isascii: str.isdigit() also takes "²" and other digits int() refuses.
    if not (configured.isascii() and configured.isdigit()) or int(configured) < 1:
        raise UserError(f"{source} must be a whole number of sessions, 1 or more, not"
                        f" {configured!r}")
    return int(configured)


def restore_sessions(jobs: int | None, backup_size: int) -> int:
    """The sessions to use: as asked, else one per core (one for a small backup)."""
    if jobs is not None:
        return jobs
    return 1 if backup_size < SMALL_RESTORE else os.cpu_count() or 1
