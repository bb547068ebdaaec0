"""~/.carabase/env: the settings this machine recorded for itself, `.env`-style
(`NAME=value` lines). Today one is read: CARABASE_ENVS, the envs this machine backs up,
which scripts/setup.sh and install-cron add their env to, so that `backup.status` shows
and counts those without an export line. The variable, when set, wins over the file.

    python -m helpers.settings add-env dev

Recording merges: other lines, comments and other envs are kept as they were.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from helpers.errors import UserError

ENVS_SETTING = "CARABASE_ENVS"


def settings_file() -> Path:
    return Path.home() / ".carabase" / "env"


def recorded(name: str) -> str:
    """The value the settings file gives `name` (quotes removed), or "" without one."""
    try:
        lines = settings_file().read_text().splitlines()
    except FileNotFoundError:
        return ""
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"cannot read {settings_file()}: {getattr(error, 'strerror', error)}") \
            from None
    value = ""
    for line in lines:
        key, equals, text = line.strip().removeprefix("export ").partition("=")
        if equals and key.strip() == name:
            value = text.strip().strip("'\"")  # the last one wins, as in a shell
    return value


def add_env(env: str, order: tuple[str, ...]) -> list[str]:
    """Record `env` among the envs this machine backs up (kept in `order`); return them."""
    named = recorded(ENVS_SETTING).replace(",", " ").split()  # a file it cannot read: refused
    path = settings_file()
    lines = path.read_text().splitlines() if path.exists() else []
    envs = [name for name in order if name in named or name == env]
    envs += [name for name in named if name not in order]  # a typo stays to be seen
    setting = f"{ENVS_SETTING}={','.join(envs)}"
    kept = [line for line in lines
            if line.strip().removeprefix("export ").partition("=")[0].strip() != ENVS_SETTING]
    write_private(path, "\n".join([*kept, setting]) + "\n")
    return envs


def write_private(path: Path, text: str) -> None:
    """Replace `path` whole (0600, in a 0700 folder when it makes one): a reader never sees
    half a file. A failure is a UserError naming the file."""
    try:
        replace_private(path, text)
    except OSError as error:
        raise UserError(f"cannot write {path}: {error.strerror or error}") from None


def replace_private(path: Path, text: str) -> None:
    """write_private for callers that report an OSError themselves: no temporary file is
    left behind when it fails."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with os.fdopen(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") \
                as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(partial, path)
    except OSError:
        partial.unlink(missing_ok=True)
        raise


def main(argv: list[str]) -> int:
    from helpers.config import ENVS, check_env  # config reads this module

    if len(argv) != 2 or argv[0] != "add-env":
        print("usage: python -m helpers.settings add-env dev|staging|prod", file=sys.stderr)
        return 2
    try:
        envs = add_env(check_env(argv[1]), ENVS)
    except UserError as error:
        print(error.message, file=sys.stderr)
        return 1
    print(f"{settings_file()}: {ENVS_SETTING}={','.join(envs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
