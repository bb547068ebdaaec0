"""The launchd job of the nightly schedule, rendered with plistlib (never a string template).

`render_plist` is pure: every path and variable is an argument, and it refuses to write
a secret (see helpers.schedule). `invoke backup.install-cron <env>` gathers the inputs.

launchd/com.carabase.backup.prod.plist is the example rendered from EXAMPLE; a test
keeps it identical to what this module renders. After changing the rendering, run

    python -m helpers.launchd > launchd/com.carabase.backup.prod.plist
"""
from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping

from helpers import schedule

LABEL_PREFIX = "com.carabase.backup"
_ENV_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")

# The fixed inputs of the example plist in launchd/ (a Mac with Homebrew's PostgreSQL).
EXAMPLE = {
    "env": "prod",
    "invoke": "/Users/you/carabase/.venv/bin/invoke",
    "repo": "/Users/you/carabase",
    "backup_dir": "/Users/you/.carabase/backups",
    "log_path": "/Users/you/.carabase/backups/prod/cron.log",
    "path": schedule.job_path("/opt/homebrew/bin"),
    "variables": {
        "CARABASE_PROD_DATABASE_URL": "postgresql://carabase@localhost:5432/carabase_prod",
        "HOST_MASTER_KEY_FILE": "/Users/you/.carabase/master.key",
        "CARABASE_NOTIFY_URL_FILE": "/Users/you/.carabase/notify.url",
    },
}


def label(env: str) -> str:
    """The job's launchd label, which is also the plist's file name without `.plist`."""
    if not _ENV_NAME.match(env):
        raise ValueError(f"not an env name: {env!r}")
    return f"{LABEL_PREFIX}.{env}"


def plist_name(env: str) -> str:
    return label(env) + ".plist"


def render_plist(
    env: str,
    *,
    invoke: str,
    repo: str,
    backup_dir: str,
    log_path: str,
    path: str,
    variables: Mapping[str, str],
) -> bytes:
    """The LaunchAgent running `backup.nightly <env>` at 03:17 local time.

    `path` is the job's PATH (see schedule.job_path); `variables` are further environment
    variables (HOST_MASTER_KEY_FILE, the env's database URL, ...). Raises
    schedule.UnsafeSchedule if any input is a secret or a relative path.
    """
    schedule.require_absolute("the log file", log_path)
    job = {
        "Label": label(env),
        "ProgramArguments": schedule.command(invoke, repo, env),
        "WorkingDirectory": repo,
        "EnvironmentVariables": schedule.environment(
            path=path, backup_dir=backup_dir, variables=variables
        ),
        "StartCalendarInterval": {"Hour": schedule.HOUR, "Minute": schedule.MINUTE},
        # Loading the job (at install or login) must not start a backup by itself.
        "RunAtLoad": False,
        # launchd appends to both; the env's directory must exist (install-cron makes it).
        "StandardOutPath": log_path,
        "StandardErrorPath": log_path,
    }
    import plistlib  # only for install-cron; every other task starts without it

    return plistlib.dumps(job, fmt=plistlib.FMT_XML, sort_keys=False)


def render_example() -> bytes:
    """The example plist kept in launchd/."""
    return render_plist(**EXAMPLE)


def main() -> int:
    os.write(sys.stdout.fileno(), render_example())
    return 0


if __name__ == "__main__":
    sys.exit(main())
