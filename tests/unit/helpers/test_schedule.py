"""helpers.schedule: the command, PATH and environment every schedule shares."""
from __future__ import annotations

import pytest

from helpers import schedule


def test_command_runs_the_nightly_task_of_the_env_in_one_invoke_call():
    assert schedule.command("/v/bin/invoke", "/repo", "staging") == [
        "/v/bin/invoke", "--search-root", "/repo", "backup.nightly", "staging",
    ]


@pytest.mark.parametrize("invoke, repo", [("invoke", "/repo"), ("/v/bin/invoke", "repo")])
def test_command_with_a_relative_path_is_refused(invoke, repo):
    with pytest.raises(schedule.UnsafeSchedule, match="absolute"):
        schedule.command(invoke, repo, "dev")


def test_job_path_puts_tool_directories_first_then_the_system_ones_each_once():
    assert schedule.job_path("/opt/homebrew/bin", "/usr/bin", "/opt/homebrew/bin") == (
        "/opt/homebrew/bin:/usr/bin:/bin:/usr/sbin:/sbin"
    )


@pytest.mark.parametrize("directory", ["bin", "/a:b", "/a\nb"])
def test_job_path_with_a_relative_or_unsplittable_directory_is_refused(directory):
    with pytest.raises(schedule.UnsafeSchedule):
        schedule.job_path(directory)


def test_environment_holds_path_backup_dir_then_the_variables_in_that_order():
    environment = schedule.environment(
        path="/usr/bin", backup_dir="/b",
        variables={"CARABASE_DEV_DATABASE_URL": "postgresql:///x", "HOST_MASTER_KEY_FILE": "/k"},
    )
    assert list(environment.items()) == [
        ("PATH", "/usr/bin"),
        ("CARABASE_BACKUP_DIR", "/b"),
        ("CARABASE_DEV_DATABASE_URL", "postgresql:///x"),
        ("HOST_MASTER_KEY_FILE", "/k"),
    ]


@pytest.mark.parametrize("name", ["HOST_MASTER_KEY", "PGPASSWORD", "CARABASE_NOTIFY_URL"])
def test_environment_with_a_secret_variable_is_refused(name):
    with pytest.raises(schedule.UnsafeSchedule, match=name):
        schedule.environment(path="/usr/bin", backup_dir="/b", variables={name: "x" * 64})


@pytest.mark.parametrize("url", [
    "postgresql://carabase:hunter2@db.example/carabase_prod",
    "postgres://carabase:hunter2@db.example:5432/carabase_prod?sslmode=require",
    "postgresql://db.example/carabase_prod?user=carabase&password=hunter2",
    "host=db.example password=hunter2 dbname=carabase_prod",
])
def test_environment_with_a_database_password_is_refused_without_echoing_it(url):
    with pytest.raises(schedule.UnsafeSchedule, match="pgpass") as raised:
        schedule.environment(
            path="/usr/bin", backup_dir="/b", variables={"CARABASE_PROD_DATABASE_URL": url}
        )
    assert "hunter2" not in str(raised.value)


@pytest.mark.parametrize("url", [
    "postgresql:///carabase_prod",
    "postgresql://carabase@db.example:5432/carabase_prod?sslmode=require",
    "postgresql://carabase:@db.example/carabase_prod",  # empty password: libpq sends none
])
def test_has_password_is_false_for_a_url_without_one(url):
    assert not schedule.has_password(url)


@pytest.mark.parametrize("name", ["HOST_MASTER_KEY_FILE", "CARABASE_NOTIFY_URL_FILE"])
def test_environment_with_a_relative_secret_file_is_refused(name):
    with pytest.raises(schedule.UnsafeSchedule, match=name):
        schedule.environment(path="/usr/bin", backup_dir="/b", variables={name: "secret.file"})


def test_environment_with_a_control_character_in_a_value_is_refused():
    with pytest.raises(schedule.UnsafeSchedule, match="control character"):
        schedule.environment(path="/usr/bin", backup_dir="/b",
                             variables={"CARABASE_DEV_DATABASE_URL": "postgresql:///x\ny"})
