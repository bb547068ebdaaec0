"""~/.carabase/env: what scripts/setup.sh and install-cron record, merged, never lost."""
from __future__ import annotations

import stat

import pytest

from helpers import settings
from helpers.config import ENVS


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def test_first_env_recorded_makes_a_private_file_with_that_env(home):
    assert settings.add_env("dev", ENVS) == ["dev"]

    path = home / ".carabase" / "env"
    assert path.read_text() == "CARABASE_ENVS=dev\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_recording_an_env_merges_it_and_keeps_every_other_line(home):
    (home / ".carabase").mkdir()
    (home / ".carabase" / "env").write_text(
        "# mine\nHOST_MASTER_KEY_FILE=~/keys/carabase.key\nexport CARABASE_ENVS='prod'\n"
        "CARABASE_OFFSITE=b2:bucket\n")

    assert settings.add_env("dev", ENVS) == ["dev", "prod"]

    assert (home / ".carabase" / "env").read_text() == (
        "# mine\nHOST_MASTER_KEY_FILE=~/keys/carabase.key\nCARABASE_OFFSITE=b2:bucket\n"
        "CARABASE_ENVS=dev,prod\n")
    assert settings.recorded("CARABASE_ENVS") == "dev,prod"


def test_recording_an_env_twice_lists_it_once(home):
    settings.add_env("staging", ENVS)
    settings.add_env("staging", ENVS)

    assert (home / ".carabase" / "env").read_text() == "CARABASE_ENVS=staging\n"


def test_a_misspelt_env_already_recorded_is_kept_for_status_to_report(home):
    (home / ".carabase").mkdir()
    (home / ".carabase" / "env").write_text("CARABASE_ENVS=prdo\n")

    assert settings.add_env("dev", ENVS) == ["dev", "prdo"]


def test_nothing_recorded_reads_as_empty(home):
    assert settings.recorded("CARABASE_ENVS") == ""


def test_add_env_command_refuses_an_unknown_env_and_records_nothing(home, capsys):
    assert settings.main(["add-env", "prdo"]) == 1

    assert "unknown env 'prdo'" in capsys.readouterr().err
    assert not (home / ".carabase" / "env").exists()
