"""What a new user, or a careless one, runs into (issue #11), through the real command line:
a shared backup root, a machine that backs up one env, a ~ the shell did not expand, a
file where a directory should be, a clock that is wrong, a typo in setup.sh.
"""
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from tests.backup_tree import write_backup
from tests.support import REPO, run_invoke, take_backup

HOUR = timedelta(hours=1)


def ago(delta: timedelta) -> datetime:
    return (datetime.now(timezone.utc) - delta).replace(microsecond=0)


# --- the backup root keeps its own mode ---------------------------------------------


@pytest.mark.parametrize("root_mode", [0o1777, 0o2770], ids=["sticky-1777", "group-2770"])
def test_backup_and_prune_into_a_shared_root_leave_its_mode_alone(dev_environ, tmp_path,
                                                                  root_mode):
    shared = tmp_path / "srv-shared"
    shared.mkdir()
    shared.chmod(root_mode)
    environ = {**dev_environ, "CARABASE_BACKUP_DIR": str(shared)}

    backup = take_backup(environ)
    pruned = run_invoke("backup.prune", "dev", env=environ)

    assert pruned.returncode == 0, pruned.stderr
    assert stat.S_IMODE(shared.stat().st_mode) == root_mode
    for directory in (shared / "dev", backup.parent):  # made by the backup: private
        assert directory.stat().st_mode & 0o777 == 0o700


# --- a machine that backs up one env ------------------------------------------------


def test_status_on_a_machine_that_backs_up_only_prod_passes(environ, backup_dir):
    write_backup(backup_dir / "prod", ago(3 * HOUR))
    environ = {**environ, "CARABASE_ENVS": "prod"}

    result = run_invoke("backup.status", env=environ)
    as_json = run_invoke("backup.status", "--json", env=environ)

    assert (result.returncode, result.stderr) == (0, "")
    assert len(result.stdout.splitlines()) == 1
    assert result.stdout.startswith("[prod   ] PASS latest=")
    assert as_json.returncode == 0
    assert [env["env"] for env in json.loads(as_json.stdout)["envs"]] == ["prod"]


def test_status_with_a_misspelt_carabase_envs_fails_in_one_line(environ):
    result = run_invoke("backup.status", env={**environ, "CARABASE_ENVS": "dev,prdo"})

    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr == ("CARABASE_ENVS must list some of dev, staging, prod separated by"
                             " commas, not 'dev,prdo'\n")


# --- HOST_MASTER_KEY_FILE=~/... as a .env file writes it -----------------------------


def test_backup_finds_a_key_file_named_with_an_unexpanded_tilde(dev_environ, home, key_file):
    (home / ".carabase").mkdir(mode=0o700)
    shutil.copy2(key_file, home / ".carabase" / "master.key")
    environ = {**dev_environ, "HOST_MASTER_KEY_FILE": "~/.carabase/master.key"}

    backup = take_backup(environ)

    assert backup.exists()


# --- a file where a directory should be ---------------------------------------------


@pytest.mark.parametrize("suffix", [" ", "\n", "\t"], ids=["space", "newline", "tab"])
def test_a_backup_dir_with_trailing_whitespace_is_refused_and_no_second_tree_appears(
        dev_environ, backup_dir, suffix):
    environ = {**dev_environ, "CARABASE_BACKUP_DIR": str(backup_dir) + suffix}
    for args in (["backup.dev"], ["backup.status"], ["backup.prune", "dev"]):
        result = run_invoke(*args, env=environ)
        assert result.returncode == 1
        assert result.stderr.splitlines() == [
            "CARABASE_BACKUP_DIR has a space, tab or control character at its start or end,"
            f" or a control character inside: {str(backup_dir) + suffix!r}; set it to the"
            " folder's path alone"]
    assert not backup_dir.exists() and not Path(str(backup_dir) + suffix).exists()


def test_status_and_prune_say_the_backup_dir_is_a_file(environ, backup_dir):
    backup_dir.write_text("oops: not a directory\n")

    status = run_invoke("backup.status", env=environ)
    prune = run_invoke("backup.prune", "dev", env=environ)

    expected = f"{backup_dir} is not a directory (check CARABASE_BACKUP_DIR)"
    assert status.returncode == 2
    assert status.stdout.splitlines() == [f"[{env:<7}] FAIL {expected}"
                                          for env in ("dev", "staging", "prod")]
    assert (prune.returncode, prune.stdout, prune.stderr) == (1, "", f"prune dev: {expected}\n")
    assert backup_dir.read_text() == "oops: not a directory\n"


def test_status_and_prune_say_an_env_dir_is_a_file(environ, backup_dir):
    backup_dir.mkdir()
    (backup_dir / "dev").write_text("oops\n")

    status = run_invoke("backup.status", env={**environ, "CARABASE_ENVS": "dev"})
    prune = run_invoke("backup.prune", "dev", env=environ)

    expected = f"{backup_dir / 'dev'} is not a directory (move it aside: dev's backups go there)"
    assert (status.returncode, status.stdout) == (2, f"[dev    ] FAIL {expected}\n")
    assert (prune.returncode, prune.stderr) == (1, f"prune dev: {expected}\n")


# --- ages: rounded as shown, never negative -------------------------------------------


def test_status_json_age_is_rounded_to_a_tenth_as_the_line_shows_it(environ, backup_dir):
    write_backup(backup_dir / "dev", ago(timedelta(seconds=1)))
    environ = {**environ, "CARABASE_ENVS": "dev"}

    line = run_invoke("backup.status", env=environ).stdout
    [dev] = json.loads(run_invoke("backup.status", "--json", env=environ).stdout)["envs"]

    assert line.endswith(" age=0.0h ago\n")
    assert dev["age_hours"] == 0.0  # not 0.000277...


def test_status_of_a_backup_dated_in_the_future_says_so_instead_of_a_negative_age(
        environ, backup_dir):
    future = ago(-4462 * HOUR)
    write_backup(backup_dir / "dev", future)
    environ = {**environ, "CARABASE_ENVS": "dev"}

    result = run_invoke("backup.status", env=environ)
    [dev] = json.loads(run_invoke("backup.status", "--json", env=environ).stdout)["envs"]

    assert result.returncode == 1
    assert result.stdout == (f"[dev    ] WARN latest={future:%Y-%m-%dT%H:%M:%SZ} in the future"
                             " (check the clock)\n")
    assert dev["status"] == "WARN" and dev["age_hours"] is None
    assert "in the future" in dev["warning"]


# --- scripts/setup.sh with a typo ---------------------------------------------------


def test_setup_script_with_a_misspelt_env_stops_before_installing_anything(tmp_path, home):
    # A copy of the script in a bare clone-like directory: nothing there may change.
    clone = tmp_path / "clone"
    (clone / "scripts").mkdir(parents=True)
    shutil.copy2(REPO / "scripts" / "setup.sh", clone / "scripts" / "setup.sh")
    environ = {key: value for key, value in os.environ.items()
               if not key.startswith(("HOST_MASTER_KEY", "CARABASE_"))}

    result = subprocess.run([str(clone / "scripts" / "setup.sh"), "prdo"], capture_output=True,
                            text=True, env={**environ, "HOME": str(home)}, timeout=60)

    assert result.returncode == 1
    assert result.stderr == ("scripts/setup.sh: unknown env 'prdo': expected one of dev,"
                             " staging, prod\n")
    assert sorted(path.name for path in clone.iterdir()) == ["scripts"]  # no .venv
    assert list(home.iterdir()) == []  # no key made for a run that cannot back up
