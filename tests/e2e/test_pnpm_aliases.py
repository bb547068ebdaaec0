"""The pnpm aliases in package.json, run for real through pnpm, reach invoke with their
arguments, and pnpm adds nothing to their standard output. Skipped when pnpm is not
installed, except under CI: .ci/run installs the version package.json pins (devEngines).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

from helpers import retention
from tests.support import REPO, clean_environ, run_invoke

# The pinned pnpm .ci/run installs into the project, else the one on PATH.
PNPM = (shutil.which("pnpm", path=str(REPO / ".tools" / "pnpm" / "node_modules" / ".bin"))
        or shutil.which("pnpm"))
needs_pnpm = pytest.mark.skipif(
    PNPM is None, reason="pnpm is not installed (.ci/run installs the pinned version)"
)
PINNED_PNPM = json.loads((REPO / "package.json").read_text())["devEngines"]["packageManager"]

ALIASES = {
    "backup:dev": "invoke backup.dev",
    "backup:staging": "invoke backup.staging",
    "backup:prod": "invoke backup.prod",
    "backup:prune": "invoke backup.prune",
    "backup:status": "invoke backup.status",
    "backup:restore": "invoke backup.restore",
    "backup:install-cron": "invoke backup.install-cron",
    "backup:uninstall-cron": "invoke backup.uninstall-cron",
}


@pytest.fixture
def pnpm_environ(home, backup_dir, tmp_path):
    """A clean environment where `invoke` is this virtualenv's, as after activating it.

    pnpm 12 keeps temporary files under $XDG_DATA_HOME/pnpm (~/.local/share/pnpm by
    default): they go outside HOME, so that a test can tell a task wrote nothing there.
    """
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return clean_environ(home, backup_dir, PATH=path, npm_config_update_notifier="false",
                         XDG_DATA_HOME=str(tmp_path / "xdg-data"))


def pnpm(*args: str, env: dict[str, str], cwd: Path = REPO) -> subprocess.CompletedProcess:
    """`pnpm <args>` in the repository, which must not install anything first (pnpm 12
    does unless pnpm-workspace.yaml says verifyDepsBeforeRun: false)."""
    installed = [REPO / "pnpm-lock.yaml", REPO / "node_modules"]
    absent = [path for path in installed if not path.exists()]
    result = subprocess.run([PNPM, *args], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, timeout=120, check=False)
    made = [path for path in absent if path.exists()]
    for path in made:  # this run made them: remove them, so the next run is checked too
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    assert made == [], f"pnpm {' '.join(args)} installed first:\n{result.stderr}"
    return result


def test_package_json_is_private_and_aliases_exactly_the_backup_tasks():
    package = json.loads((REPO / "package.json").read_text())
    assert package["private"] is True
    assert package["scripts"] == ALIASES
    # The pin is exact (.ci/run installs it) and enforced by nothing else: with a
    # `packageManager` field or another onFail, pnpm 12 asks the registry and writes
    # pnpm-lock.yaml on every run, and pnpm 10 tries to switch to the pinned version.
    assert "packageManager" not in package
    assert PINNED_PNPM["name"] == "pnpm" and PINNED_PNPM["onFail"] == "ignore"
    assert re.fullmatch(r"\d+\.\d+\.\d+", PINNED_PNPM["version"])


@pytest.mark.skipif(not os.environ.get("CI"), reason="only CI must have the pinned pnpm")
def test_ci_runs_the_pinned_pnpm():
    assert PNPM is not None, ".ci/run should have installed pnpm"
    # In the project's own folder, ignored by git: never over the machine's pnpm.
    assert Path(PNPM).is_relative_to(REPO / ".tools" / "pnpm"), PNPM
    version = subprocess.run([PNPM, "--version"], cwd=REPO, stdin=subprocess.DEVNULL,
                             capture_output=True, text=True, timeout=60, check=True)
    assert version.stdout.strip() == PINNED_PNPM["version"]


def test_every_alias_names_a_task_that_invoke_lists(environ):
    listed = run_invoke("--list", env=environ)
    assert listed.returncode == 0, listed.stderr
    tasks = {line.split()[0] for line in listed.stdout.splitlines() if line.startswith("  ")}
    assert {command.split()[1] for command in ALIASES.values()} <= tasks


@needs_pnpm
def test_status_alias_runs_invoke_and_keeps_its_exit_status(pnpm_environ):
    result = pnpm("backup:status", env=pnpm_environ)
    assert result.returncode == 2, result.stdout + result.stderr
    for env in ("dev    ", "staging", "prod   "):
        assert f"[{env}] FAIL no backups" in result.stdout


@needs_pnpm
def test_status_alias_passes_an_option_through(pnpm_environ):
    result = pnpm("backup:status", "--json", env=pnpm_environ)
    assert result.returncode == 2, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["status"] == "FAIL"
    assert [entry["env"] for entry in report["envs"]] == ["dev", "staging", "prod"]


@needs_pnpm
def test_status_alias_json_is_exactly_invokes_when_status_fails(pnpm_environ):
    # With no backups status exits 2: pnpm must still add nothing to stdout (pnpm 9 and
    # 10 print their ELIFECYCLE line and a node_modules warning there unless .npmrc
    # says reporter=silent).
    direct = run_invoke("backup.status", "--json", env=pnpm_environ)
    result = pnpm("backup:status", "--json", env=pnpm_environ)
    assert direct.returncode == 2, direct.stdout + direct.stderr
    assert result.returncode == 2, result.stdout + result.stderr
    assert json.loads(result.stdout)["status"] == "FAIL"
    assert result.stdout == direct.stdout


@needs_pnpm
def test_prune_alias_passes_env_and_dry_run_through_so_nothing_is_deleted(
        pnpm_environ, backup_dir):
    day = backup_dir / "prod" / "2020-01-01"
    day.mkdir(parents=True)
    seeded = [day / retention.backup_name(datetime(2020, 1, 1, hour, tzinfo=timezone.utc))
              for hour in (1, 2, 3)]
    for path in seeded:
        path.write_bytes(b"\x01" + os.urandom(2048))
    result = pnpm("backup:prune", "prod", "--dry-run", env=pnpm_environ)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "would delete" in result.stdout
    assert all(path.exists() for path in seeded)


@needs_pnpm
def test_install_cron_alias_passes_several_options_through(pnpm_environ, home, tmp_path):
    tools = tmp_path / "tools"  # a stand-in pg_dump: install-cron needs one on PATH
    tools.mkdir()
    (tools / "pg_dump").write_text("#!/bin/sh\nexit 1\n")
    (tools / "pg_dump").chmod(0o755)
    key_file = tmp_path / "master.key"
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, os.urandom(32).hex().encode())
    os.close(fd)
    result = pnpm("backup:install-cron", "staging", "--platform", "launchd", "--dry-run",
                  env={**pnpm_environ, "HOST_MASTER_KEY_FILE": str(key_file),
                       "PATH": f"{tools}{os.pathsep}{pnpm_environ['PATH']}"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "com.carabase.backup.staging.plist (mode 0644):" in result.stdout
    assert list(home.iterdir()) == []


@needs_pnpm
def test_alias_of_a_failing_task_fails_with_invoke_message(pnpm_environ):
    result = pnpm("backup:prune", "qa", env=pnpm_environ)
    assert result.returncode == 1
    assert "unknown env 'qa': expected one of dev, staging, prod\n" in result.stderr
    assert result.stdout == ""


@needs_pnpm
def test_restore_alias_reads_a_relative_path_from_where_pnpm_was_run(pnpm_environ, tmp_path):
    # pnpm runs the script from the repository; the file is relative to the user's cwd.
    elsewhere = tmp_path / "where-the-user-is"
    elsewhere.mkdir()
    key = tmp_path / "key"
    key.write_text(os.urandom(32).hex())
    key.chmod(0o600)

    result = pnpm("--dir", str(REPO), "backup:restore", "dev", "copied.sql.gz.enc", "--yes",
                  env={**pnpm_environ, "HOST_MASTER_KEY_FILE": str(key)}, cwd=elsewhere)

    assert result.returncode != 0
    assert f"no such backup file: {elsewhere / 'copied.sql.gz.enc'}" in result.stderr
