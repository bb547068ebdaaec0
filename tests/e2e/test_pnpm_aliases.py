"""The pnpm aliases in package.json, run for real through pnpm, reach invoke with their
arguments. Skipped when pnpm is not installed (.ci/run installs it: npm install -g pnpm).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

from helpers import retention
from tests.support import REPO, clean_environ, run_invoke

PNPM = shutil.which("pnpm")
needs_pnpm = pytest.mark.skipif(
    PNPM is None, reason="pnpm is not installed (.ci/run installs it: npm install -g pnpm)"
)

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
def pnpm_environ(home, backup_dir):
    """A clean environment where `invoke` is this virtualenv's, as after activating it."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return clean_environ(home, backup_dir, PATH=path, npm_config_update_notifier="false")


def pnpm(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([PNPM, *args], cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=120, check=False)


def test_package_json_is_private_and_aliases_exactly_the_backup_tasks():
    package = json.loads((REPO / "package.json").read_text())
    assert package["private"] is True
    assert package["scripts"] == ALIASES


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
    report = json.loads(result.stdout[result.stdout.index("{"):])
    assert report["status"] == "FAIL"
    assert [entry["env"] for entry in report["envs"]] == ["dev", "staging", "prod"]


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
    assert "unknown env 'qa'" in result.stderr


@needs_pnpm
def test_restore_alias_reads_a_relative_path_from_where_pnpm_was_run(pnpm_environ, tmp_path):
    # pnpm runs the script from the repository; the file is relative to the user's cwd.
    elsewhere = tmp_path / "where-the-user-is"
    elsewhere.mkdir()
    key = tmp_path / "key"
    key.write_text(os.urandom(32).hex())
    key.chmod(0o600)

    result = subprocess.run(
        [PNPM, "--dir", str(REPO), "backup:restore", "dev", "copied.sql.gz.enc", "--yes"],
        cwd=elsewhere, env={**pnpm_environ, "HOST_MASTER_KEY_FILE": str(key)},
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120, check=False)

    assert result.returncode != 0
    assert f"no such backup file: {elsewhere / 'copied.sql.gz.enc'}" in result.stderr
