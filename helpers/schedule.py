"""What every nightly schedule shares, whatever runs it (launchd or systemd).

The scheduled job is one invoke call, `backup.nightly <env>`: backup, then prune (and
the steps tasks.nightly_steps lists), stopping at the first that fails, so prune never
runs after a failed backup. Its environment names the key and the notify URL by file and
never holds a secret.

Pure: every input is an argument. `launchd.py` and `systemd.py` render from these.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
from urllib.parse import parse_qsl, urlsplit

HOUR = 3
MINUTE = 17

# Where the job finds gzip, bash and friends; pg_dump's own directory goes first.
SYSTEM_PATH = ("/usr/bin", "/bin", "/usr/sbin", "/sbin")

# Never written into a schedule file: the key itself, a database password, the check URL.
SECRET_VARIABLES = frozenset({"HOST_MASTER_KEY", "PGPASSWORD", "CARABASE_NOTIFY_URL"})
_CONNINFO_PASSWORD = re.compile(r"(^|\s)password\s*=", re.IGNORECASE)


class UnsafeSchedule(ValueError):
    """A schedule file would hold a secret, or a path that is not absolute."""


def command(invoke: str, repo: str, env: str) -> list[str]:
    """The scheduled command line: `backup.nightly <env>` (backup, then prune only if the
    backup succeeded)."""
    require_absolute("the invoke program", invoke)
    require_absolute("the repository", repo)
    return [invoke, "--search-root", repo, "backup.nightly", env]


def job_path(*tool_dirs: str) -> str:
    """PATH for the job: the directories of the tools found at install time, then the
    system's, each once. A scheduler's default PATH finds no Homebrew or Postgres.app
    binary, so pg_dump's directory must be named explicitly."""
    ordered: list[str] = []
    for directory in (*tool_dirs, *SYSTEM_PATH):
        require_absolute("a PATH directory", directory)
        if ":" in directory:
            raise UnsafeSchedule(f"a PATH directory cannot contain ':': {directory!r}")
        if directory not in ordered:
            ordered.append(directory)
    return ":".join(ordered)


def environment(*, path: str, backup_dir: str, variables: Mapping[str, str]) -> dict[str, str]:
    """The job's environment: PATH, CARABASE_BACKUP_DIR, then `variables` (such as
    HOST_MASTER_KEY_FILE, CARABASE_NOTIFY_URL_FILE and the env's database URL). Raises
    UnsafeSchedule if any of it is a secret or a relative path."""
    require_absolute("CARABASE_BACKUP_DIR", backup_dir)
    merged = {"PATH": path, "CARABASE_BACKUP_DIR": backup_dir, **variables}
    check_no_secret(merged)
    for name, value in merged.items():
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise UnsafeSchedule(f"not an environment variable name: {name!r}")
        if _has_control_character(value):
            raise UnsafeSchedule(f"{name} contains a control character")
    for file_variable in ("HOST_MASTER_KEY_FILE", "CARABASE_NOTIFY_URL_FILE"):
        if merged.get(file_variable) is not None:
            require_absolute(file_variable, merged[file_variable])
    return merged


def check_no_secret(variables: Mapping[str, str]) -> None:
    """Refuse the key, the check URL and any database password: schedule files are not
    secret."""
    for name, value in variables.items():
        if name in SECRET_VARIABLES:
            raise UnsafeSchedule(f"{name} is a secret and is never written into a schedule")
        if has_password(value):
            raise UnsafeSchedule(
                f"{name} holds a database password, which is never written into a schedule:"
                " put the password in ~/.pgpass (chmod 600) and leave it out of the URL"
            )


def has_password(value: str) -> bool:
    """Whether a libpq URL (or keyword/value string) carries a password."""
    if _CONNINFO_PASSWORD.search(value):
        return True
    try:
        parts = urlsplit(value)
    except ValueError:
        return False
    if parts.scheme not in ("postgresql", "postgres"):
        return False
    userinfo = parts.netloc.rpartition("@")[0]
    return bool(userinfo.partition(":")[2]) or any(
        key == "password" for key, _ in parse_qsl(parts.query, keep_blank_values=True)
    )


def require_absolute(what: str, path: str) -> None:
    if not os.path.isabs(path):
        raise UnsafeSchedule(f"{what} must be an absolute path in a schedule, not {path!r}")
    if _has_control_character(path):
        raise UnsafeSchedule(f"{what} contains a control character: {path!r}")


def _has_control_character(text: str) -> bool:
    return any(ord(char) < 0x20 or char == "\x7f" for char in text)
