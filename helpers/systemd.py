"""The systemd user service and timer of the nightly schedule (Linux hosts).

`render_units` is pure: every path and variable is an argument, it refuses to write a
secret (see helpers.schedule) and it quotes each value the way systemd parses it:

- ExecStart= splits on whitespace, unquotes and C-unescapes each word and expands `%`
  specifiers, and `$VAR` in the arguments: a word is double-quoted when needed, `\\`
  and `"` escaped, `%` written `%%` and, in an argument, `$` written `$$`;
- Environment= unquotes and C-unescapes but expands only `%` specifiers;
- WorkingDirectory= and StandardOutput=append: take the rest of the line verbatim
  except for `%` specifiers.

The timer fires at 03:17 local time; Persistent=true makes a run missed while the
machine was off happen at the next boot (or login, without lingering).
"""
from __future__ import annotations

import re
from collections.abc import Mapping

from helpers import schedule

UNIT_PREFIX = "carabase-backup-"
_ENV_NAME = re.compile(r"^[a-z][a-z0-9_-]*$")
_NEEDS_QUOTES = re.compile(r"""[\s"'\\;]""")
_UNSAFE_PROGRAM = re.compile(r"""["'\\]""")


def unit_name(env: str, kind: str) -> str:
    """`carabase-backup-<env>.service` or `.timer`."""
    if not _ENV_NAME.match(env):
        raise ValueError(f"not an env name: {env!r}")
    if kind not in ("service", "timer"):
        raise ValueError(f"not a unit kind: {kind!r}")
    return f"{UNIT_PREFIX}{env}.{kind}"


def on_calendar() -> str:
    return f"*-*-* {schedule.HOUR:02d}:{schedule.MINUTE:02d}:00"


def render_units(
    env: str,
    *,
    invoke: str,
    repo: str,
    backup_dir: str,
    log_path: str,
    path: str,
    variables: Mapping[str, str],
) -> dict[str, str]:
    """{file name: text} for the service (`backup.nightly <env>`) and the timer that
    starts it nightly. Same inputs as launchd.render_plist."""
    schedule.require_absolute("the log file", log_path)
    service, timer = unit_name(env, "service"), unit_name(env, "timer")
    command = schedule.command(invoke, repo, env)
    environment = schedule.environment(path=path, backup_dir=backup_dir, variables=variables)
    for what, value in (("the repository", repo), ("the log file", log_path)):
        if value != value.strip():
            raise schedule.UnsafeSchedule(f"{what} ends in whitespace: {value!r}")
    header = (f"# Written by `invoke backup.install-cron {env}`;"
              f" remove with `invoke backup.uninstall-cron {env}`.")
    service_lines = [
        header,
        "[Unit]",
        f"Description=Carabase backup of {env}, then prune",
        "",
        "[Service]",
        "Type=oneshot",
        f"WorkingDirectory={_specifiers(repo)}",
        *(f"Environment={environment_assignment(name, value)}"
          for name, value in environment.items()),
        f"ExecStart={exec_line(command)}",
        f"StandardOutput=append:{_specifiers(log_path)}",
        f"StandardError=append:{_specifiers(log_path)}",
    ]
    timer_lines = [
        header,
        "[Unit]",
        f"Description=Nightly Carabase backup of {env}",
        "",
        "[Timer]",
        f"OnCalendar={on_calendar()}",
        "Persistent=true",
        f"Unit={service}",
        "",
        "[Install]",
        "WantedBy=timers.target",
    ]
    return {
        service: "\n".join(service_lines) + "\n",
        timer: "\n".join(timer_lines) + "\n",
    }


def exec_line(argv: list[str]) -> str:
    """The value of ExecStart= that runs exactly `argv`.

    systemd substitutes `$VAR` in the arguments but not in the program's path, and
    refuses a program path holding a quote or a backslash.
    """
    program, *args = argv
    if _UNSAFE_PROGRAM.search(program):
        raise schedule.UnsafeSchedule(
            f"systemd cannot run a program whose path holds a quote or a backslash: {program!r}"
        )
    return " ".join([_quoted(program), *(_quoted(arg).replace("$", "$$") for arg in args)])


def _quoted(word: str) -> str:
    if word == "" or _NEEDS_QUOTES.search(word):
        word = '"' + word.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return _specifiers(word)


def environment_assignment(name: str, value: str) -> str:
    """`"NAME=value"` for Environment=, quoted and escaped for systemd."""
    escaped = f"{name}={value}".replace("\\", "\\\\").replace('"', '\\"')
    return '"' + _specifiers(escaped) + '"'


def _specifiers(text: str) -> str:
    return text.replace("%", "%%")
