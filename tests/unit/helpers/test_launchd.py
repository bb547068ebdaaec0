"""helpers.launchd: the plist, read back with plistlib and checked key by key."""
from __future__ import annotations

import os
import plistlib
from pathlib import Path

import pytest

from helpers import launchd, schedule

REPO = Path(__file__).resolve().parents[3]
EXAMPLE_FILE = REPO / "launchd" / "com.carabase.backup.prod.plist"

INPUTS = {
    "env": "staging",
    "invoke": "/Users/ann/src/carabase/.venv/bin/invoke",
    "repo": "/Users/ann/src/carabase",
    "backup_dir": "/Users/ann/.carabase/backups",
    "log_path": "/Users/ann/.carabase/backups/staging/cron.log",
    "path": "/Applications/Postgres.app/Contents/Versions/latest/bin:/usr/bin:/bin",
    "variables": {"HOST_MASTER_KEY_FILE": "/Users/ann/.carabase/master.key"},
}


def rendered(**changes) -> dict:
    return plistlib.loads(launchd.render_plist(**{**INPUTS, **changes}))


def test_plist_has_exactly_the_expected_keys():
    assert set(rendered()) == {
        "Label", "ProgramArguments", "WorkingDirectory", "EnvironmentVariables",
        "StartCalendarInterval", "RunAtLoad", "StandardOutPath", "StandardErrorPath",
    }


def test_label_names_the_env():
    assert rendered()["Label"] == "com.carabase.backup.staging"
    assert launchd.plist_name("staging") == "com.carabase.backup.staging.plist"


def test_program_runs_the_nightly_task_through_the_installed_invoke_in_one_call():
    assert rendered()["ProgramArguments"] == [
        "/Users/ann/src/carabase/.venv/bin/invoke", "--search-root", "/Users/ann/src/carabase",
        "backup.nightly", "staging",
    ]


def test_job_starts_at_03_17_every_day_and_not_when_loaded():
    job = rendered()
    assert job["StartCalendarInterval"] == {"Hour": 3, "Minute": 17}
    assert job["RunAtLoad"] is False


def test_output_and_errors_go_to_the_env_cron_log():
    job = rendered()
    assert job["StandardOutPath"] == "/Users/ann/.carabase/backups/staging/cron.log"
    assert job["StandardErrorPath"] == job["StandardOutPath"]


def test_working_directory_is_the_repository():
    assert rendered()["WorkingDirectory"] == "/Users/ann/src/carabase"


def test_environment_holds_path_backup_dir_and_key_file_only():
    assert rendered()["EnvironmentVariables"] == {
        "PATH": "/Applications/Postgres.app/Contents/Versions/latest/bin:/usr/bin:/bin",
        "CARABASE_BACKUP_DIR": "/Users/ann/.carabase/backups",
        "HOST_MASTER_KEY_FILE": "/Users/ann/.carabase/master.key",
    }


def test_database_url_variable_is_passed_when_given():
    variables = {**INPUTS["variables"],
                 "CARABASE_STAGING_DATABASE_URL": "postgresql://app@db.lan/carabase_staging"}
    environment = rendered(variables=variables)["EnvironmentVariables"]
    assert environment["CARABASE_STAGING_DATABASE_URL"] == \
        "postgresql://app@db.lan/carabase_staging"


def test_xml_special_characters_in_paths_survive_the_round_trip():
    repo = "/Users/ann/R&D <carabase> \"x\""
    job = rendered(repo=repo, invoke=repo + "/.venv/bin/invoke")
    assert job["WorkingDirectory"] == repo
    assert job["ProgramArguments"][:3] == [repo + "/.venv/bin/invoke", "--search-root", repo]


def test_inline_key_is_refused_and_never_rendered():
    key = os.urandom(32).hex()
    with pytest.raises(schedule.UnsafeSchedule, match="HOST_MASTER_KEY") as raised:
        rendered(variables={"HOST_MASTER_KEY": key})
    assert key not in str(raised.value)


def test_database_url_with_a_password_is_refused():
    password = os.urandom(8).hex()
    url = f"postgresql://app:{password}@db.lan/carabase_staging"
    with pytest.raises(schedule.UnsafeSchedule, match="pgpass") as raised:
        rendered(variables={"CARABASE_STAGING_DATABASE_URL": url})
    assert password not in str(raised.value)


def test_relative_log_path_is_refused():
    with pytest.raises(schedule.UnsafeSchedule, match="log file"):
        rendered(log_path="cron.log")


@pytest.mark.parametrize("env", ["", "Prod", "prod/../x", "prod.x"])
def test_env_that_is_not_a_plain_name_is_refused(env):
    with pytest.raises(ValueError):
        launchd.label(env)


def test_example_plist_in_the_repository_is_what_the_renderer_produces():
    assert EXAMPLE_FILE.read_bytes() == launchd.render_example(), (
        "launchd/ is out of date: python -m helpers.launchd > "
        + str(EXAMPLE_FILE.relative_to(REPO))
    )


def test_example_plist_is_for_prod_with_the_key_and_notify_url_by_file_and_homebrew_on_path():
    job = plistlib.loads(EXAMPLE_FILE.read_bytes())
    assert job["Label"] == "com.carabase.backup.prod"
    assert job["ProgramArguments"][-2:] == ["backup.nightly", "prod"]
    assert "CARABASE_NOTIFY_URL" not in job["EnvironmentVariables"]
    assert os.path.isabs(job["EnvironmentVariables"]["CARABASE_NOTIFY_URL_FILE"])
    assert job["EnvironmentVariables"]["PATH"].split(":")[0] == "/opt/homebrew/bin"
    assert "HOST_MASTER_KEY" not in job["EnvironmentVariables"]
    assert os.path.isabs(job["EnvironmentVariables"]["HOST_MASTER_KEY_FILE"])
