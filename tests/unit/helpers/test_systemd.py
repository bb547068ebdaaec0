"""helpers.systemd: the user service and timer, parsed back and checked by systemd."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers import schedule, systemd
from tests.support import INVOKE, REPO

INPUTS = {
    "env": "prod",
    "invoke": "/home/ann/carabase/.venv/bin/invoke",
    "repo": "/home/ann/carabase",
    "backup_dir": "/home/ann/.carabase/backups",
    "log_path": "/home/ann/.carabase/backups/prod/cron.log",
    "path": "/usr/lib/postgresql/16/bin:/usr/bin:/bin",
    "variables": {"HOST_MASTER_KEY_FILE": "/home/ann/.carabase/master.key"},
}
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


def parse_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    """{section: [(key, value), ...]} in file order; keys may repeat (Environment=)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for line in text.splitlines():
        if not line.strip() or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), [])
            continue
        key, _, value = line.partition("=")
        current.append((key, value))
    return sections


def values(section: list[tuple[str, str]], key: str) -> list[str]:
    return [value for name, value in section if name == key]


def systemd_words(line: str) -> list[str]:
    """Split an ExecStart= value as systemd documents it: whole-word double quotes with
    C escapes, `%%` for `%`, and `$$` for `$` in the arguments."""
    words = []
    for match in re.finditer(r'"((?:[^"\\]|\\.)*)"(?=\s|$)|(\S+)', line):
        quoted, bare = match.groups()
        word = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else bare
        word = word.replace("%%", "%")
        words.append(word if not words else word.replace("$$", "$"))
    return words


def environment_value(assignment: str) -> tuple[str, str]:
    assert assignment.startswith('"') and assignment.endswith('"'), assignment
    name, _, value = re.sub(r"\\(.)", r"\1", assignment[1:-1]).replace("%%", "%").partition("=")
    return name, value


def render(**changes) -> dict[str, str]:
    return systemd.render_units(**{**INPUTS, **changes})


def service_of(units: dict[str, str]) -> list[tuple[str, str]]:
    return parse_unit(units["carabase-backup-prod.service"])["Service"]


def test_units_are_a_service_and_a_timer_named_after_the_env():
    assert sorted(render()) == ["carabase-backup-prod.service", "carabase-backup-prod.timer"]


def test_timer_fires_at_03_17_every_day_catches_up_after_downtime_and_is_enabled_by_timers():
    timer = parse_unit(render()["carabase-backup-prod.timer"])
    assert values(timer["Timer"], "OnCalendar") == ["*-*-* 03:17:00"]
    assert values(timer["Timer"], "Persistent") == ["true"]
    assert values(timer["Timer"], "Unit") == ["carabase-backup-prod.service"]
    assert values(timer["Install"], "WantedBy") == ["timers.target"]


def test_service_runs_the_nightly_task_once_through_the_installed_invoke():
    service = service_of(render())
    assert values(service, "Type") == ["oneshot"]
    [exec_start] = values(service, "ExecStart")
    assert systemd_words(exec_start) == [
        "/home/ann/carabase/.venv/bin/invoke", "--search-root", "/home/ann/carabase",
        "backup.nightly", "prod",
    ]
    assert values(service, "WorkingDirectory") == ["/home/ann/carabase"]


def test_service_appends_output_and_errors_to_the_env_cron_log():
    service = service_of(render())
    assert values(service, "StandardOutput") == ["append:/home/ann/.carabase/backups/prod/cron.log"]
    assert values(service, "StandardError") == ["append:/home/ann/.carabase/backups/prod/cron.log"]


def test_service_environment_holds_path_backup_dir_and_key_file_only():
    environment = dict(environment_value(v) for v in values(service_of(render()), "Environment"))
    assert environment == {
        "PATH": "/usr/lib/postgresql/16/bin:/usr/bin:/bin",
        "CARABASE_BACKUP_DIR": "/home/ann/.carabase/backups",
        "HOST_MASTER_KEY_FILE": "/home/ann/.carabase/master.key",
    }


def test_awkward_characters_in_paths_are_quoted_so_systemd_reads_them_back_unchanged():
    repo = '/home/ann/my "repo" 100% $HOME\\x;y'
    key_file = '/home/ann/100% "key" $HOME\\k'
    units = render(repo=repo, invoke="/home/ann/dir with space %n $HOME/invoke",
                   variables={"HOST_MASTER_KEY_FILE": key_file})
    service = service_of(units)
    [exec_start] = values(service, "ExecStart")
    assert systemd_words(exec_start)[:3] == [
        "/home/ann/dir with space %n $HOME/invoke", "--search-root", repo,
    ]
    environment = dict(environment_value(v) for v in values(service, "Environment"))
    assert environment["HOST_MASTER_KEY_FILE"] == key_file
    assert values(service, "WorkingDirectory") == [repo.replace("%", "%%")]


@pytest.mark.parametrize("character", ['"', "'", "\\"])
def test_program_path_that_systemd_refuses_to_run_is_refused(character):
    with pytest.raises(schedule.UnsafeSchedule, match="quote or a backslash"):
        render(invoke=f"/home/ann/we{character}ird/invoke")


def test_inline_key_is_refused():
    with pytest.raises(schedule.UnsafeSchedule, match="HOST_MASTER_KEY"):
        render(variables={"HOST_MASTER_KEY": os.urandom(32).hex()})


def test_database_url_with_a_password_is_refused():
    password = os.urandom(8).hex()
    with pytest.raises(schedule.UnsafeSchedule, match="pgpass") as raised:
        url = f"postgresql://a:{password}@h/carabase_prod"
        render(variables={"CARABASE_PROD_DATABASE_URL": url})
    assert password not in str(raised.value)


def test_log_path_ending_in_whitespace_is_refused():
    with pytest.raises(schedule.UnsafeSchedule, match="whitespace"):
        render(log_path="/home/ann/cron.log ")


# --- checked by systemd itself -----------------------------------------------------------

needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed"
)


def verify(tmp_path: Path, units: dict[str, str]) -> str:
    """What `systemd-analyze --user verify` says about the units (empty: all good)."""
    unit_dir = tmp_path / "units"
    unit_dir.mkdir()
    for name, text in units.items():
        (unit_dir / name).write_text(text)
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "--user", "verify", *(str(unit_dir / name) for name in units)],
        env={**os.environ, "HOME": str(tmp_path), "XDG_RUNTIME_DIR": str(runtime)},
        capture_output=True, text=True, timeout=60, check=False,
    )
    complaints = [line for line in (result.stdout + result.stderr).splitlines()
                  if "carabase-backup" in line]
    assert result.returncode == 0 or complaints, result.stderr
    return "\n".join(complaints)


def real_inputs(tmp_path: Path, **changes) -> dict:
    return {**INPUTS, "invoke": INVOKE, "repo": str(REPO),
            "backup_dir": str(tmp_path / "backups"),
            "log_path": str(tmp_path / "backups" / "prod" / "cron.log"), **changes}


@needs_systemd_analyze
def test_units_pass_systemd_analyze_verify(tmp_path):
    assert verify(tmp_path, systemd.render_units(**real_inputs(tmp_path))) == ""


@needs_systemd_analyze
def test_units_with_awkward_paths_pass_systemd_analyze_verify(tmp_path):
    program_dir = tmp_path / "with space 100% $HOME;x" / "bin"
    program_dir.mkdir(parents=True)
    shutil.copy2(INVOKE, program_dir / "invoke")
    units = systemd.render_units(**real_inputs(
        tmp_path, invoke=str(program_dir / "invoke"),
        log_path=str(tmp_path / "log dir 100%" / "cron.log"),
    ))
    assert verify(tmp_path, units) == ""


@needs_systemd_analyze
def test_systemd_analyze_verify_check_reports_a_broken_unit(tmp_path):
    units = systemd.render_units(**real_inputs(tmp_path))
    name = "carabase-backup-prod.service"
    units[name] = units[name].replace("StandardOutput=append:/", "StandardOutput=append:")
    assert "not absolute" in verify(tmp_path, units)
