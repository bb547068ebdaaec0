"""install-cron's inputs and files: platform choice, where files go, atomic writes."""
from __future__ import annotations

import os
import stat

import pytest

from helpers import install
from helpers.errors import UserError


def test_unknown_platform_is_refused():
    with pytest.raises(UserError, match="unknown platform 'cron'"):
        install.check_platform("cron")


def test_systemd_files_live_in_the_xdg_user_unit_directory(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    paths = install.schedule_paths("prod", "systemd")
    assert [path.relative_to(tmp_path) for path in paths] == [
        install.Path("config/systemd/user/carabase-backup-prod.timer"),
        install.Path("config/systemd/user/carabase-backup-prod.service"),
        install.Path("config/systemd/user/timers.target.wants/carabase-backup-prod.timer"),
    ]


def test_schedule_without_a_key_file_is_refused_before_anything_is_written(monkeypatch):
    monkeypatch.delenv("HOST_MASTER_KEY_FILE", raising=False)
    monkeypatch.setenv("HOST_MASTER_KEY", "ab" * 32)
    with pytest.raises(UserError, match="refusing to write HOST_MASTER_KEY into a schedule"):
        install.schedule_inputs("prod", "install-cron prod")


def test_schedule_with_only_an_inline_notify_url_is_refused_with_how_to_make_a_file(
        monkeypatch):
    url = "https://hc-ping.example/0f6d3c1e-secret"
    monkeypatch.delenv("CARABASE_NOTIFY_URL_FILE", raising=False)
    monkeypatch.setenv("CARABASE_NOTIFY_URL", url)
    with pytest.raises(UserError, match="refusing to write CARABASE_NOTIFY_URL into a") as raised:
        install.notify_url_file("install-cron prod")
    assert "CARABASE_NOTIFY_URL_FILE=~/.carabase/notify.url" in raised.value.message
    assert url not in raised.value.message


def test_schedule_carries_the_notify_url_file_as_an_absolute_path(monkeypatch, tmp_path):
    path = tmp_path / "notify.url"
    path.write_text("https://hc-ping.example/0f6d3c1e\n")
    path.chmod(0o600)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CARABASE_NOTIFY_URL", raising=False)
    monkeypatch.setenv("CARABASE_NOTIFY_URL_FILE", "notify.url")
    assert install.notify_url_file("install-cron prod") == str(path)


def test_schedule_whose_notify_url_file_is_group_readable_is_refused(monkeypatch, tmp_path):
    path = tmp_path / "notify.url"
    path.write_text("https://hc-ping.example/0f6d3c1e\n")
    path.chmod(0o640)
    monkeypatch.delenv("CARABASE_NOTIFY_URL", raising=False)
    monkeypatch.setenv("CARABASE_NOTIFY_URL_FILE", str(path))
    with pytest.raises(UserError, match=f"could not ping: .*readable by others.*chmod 600 {path}"):
        install.notify_url_file("install-cron prod")


def test_schedule_without_a_notify_url_carries_none(monkeypatch):
    monkeypatch.delenv("CARABASE_NOTIFY_URL", raising=False)
    monkeypatch.delenv("CARABASE_NOTIFY_URL_FILE", raising=False)
    assert install.notify_url_file("install-cron prod") is None


def test_write_atomically_replaces_the_file_whole_with_its_mode(tmp_path):
    target = tmp_path / "units" / "x.timer"
    target.parent.mkdir()
    install.write_atomically(install.ScheduleFile(target, b"old"), "install-cron dev")
    install.write_atomically(install.ScheduleFile(target, b"new", 0o600), "install-cron dev")
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert sorted(path.name for path in target.parent.iterdir()) == ["x.timer"]


def test_schedule_folders_are_made_0700_whatever_the_umask(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    folder = tmp_path / ".config" / "systemd" / "user"
    old = os.umask(0o222)  # would leave a folder made 0700 unwritable (0500)
    try:
        install.prepare_schedule_dir(folder, "install-cron dev")
    finally:
        os.umask(old)
    modes = [stat.S_IMODE(path.stat().st_mode) for path in (folder, *folder.parents[:2])]
    assert modes == [0o700] * 3


def test_a_group_writable_schedule_folder_is_refused_with_the_chmod(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    folder = tmp_path / "Library" / "LaunchAgents"
    folder.mkdir(parents=True)
    folder.chmod(0o775)
    with pytest.raises(UserError, match=f"mode 0775.*: chmod go-w {folder}$"):
        install.prepare_schedule_dir(folder, "install-cron dev")


def test_inline_key_refusal_suggests_a_private_directory_for_the_key_file(monkeypatch):
    monkeypatch.delenv("HOST_MASTER_KEY_FILE", raising=False)
    monkeypatch.setenv("HOST_MASTER_KEY", "ab" * 32)
    with pytest.raises(UserError) as refused:
        install.schedule_inputs("prod", "install-cron prod")
    assert "mkdir -p -m 700 ~/.carabase &&" in refused.value.message


def test_key_file_under_an_unexpanded_tilde_goes_into_the_schedule_as_its_real_path(
        monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("CARABASE_BACKUP_DIR", str(tmp_path / "backups"))
    monkeypatch.delenv("HOST_MASTER_KEY", raising=False)
    monkeypatch.delenv("CARABASE_PROD_DATABASE_URL", raising=False)
    key = tmp_path / ".carabase" / "master.key"
    key.parent.mkdir()
    key.write_text("ab" * 32 + "\n")
    key.chmod(0o600)
    monkeypatch.setenv("HOST_MASTER_KEY_FILE", "~/.carabase/master.key")  # as a .env has it

    inputs = install.schedule_inputs("prod", "install-cron prod")

    assert inputs["variables"]["HOST_MASTER_KEY_FILE"] == str(key)


def test_key_found_by_default_goes_into_the_schedule_as_its_path(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("CARABASE_BACKUP_DIR", str(tmp_path / "backups"))
    for name in ("HOST_MASTER_KEY", "HOST_MASTER_KEY_FILE", "CARABASE_PROD_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    key = tmp_path / ".carabase" / "master.key"
    key.parent.mkdir()
    key.write_text("ab" * 32 + "\n")
    key.chmod(0o600)

    inputs = install.schedule_inputs("prod", "install-cron prod")

    assert inputs["variables"]["HOST_MASTER_KEY_FILE"] == str(key)


@pytest.fixture
def schedulable(monkeypatch, tmp_path):
    """A key file and a backup dir from which a prod schedule can be made."""
    monkeypatch.setenv("CARABASE_BACKUP_DIR", str(tmp_path / "backups"))
    monkeypatch.delenv("HOST_MASTER_KEY", raising=False)
    monkeypatch.delenv("CARABASE_PROD_DATABASE_URL", raising=False)
    key = tmp_path / "master.key"
    key.write_text("ab" * 32 + "\n")
    key.chmod(0o600)
    monkeypatch.setenv("HOST_MASTER_KEY_FILE", str(key))


def test_lock_wait_timeout_goes_into_the_schedule_as_set(monkeypatch, schedulable):
    monkeypatch.setenv("CARABASE_LOCK_WAIT_TIMEOUT", "900")

    inputs = install.schedule_inputs("prod", "install-cron prod")

    assert inputs["variables"]["CARABASE_LOCK_WAIT_TIMEOUT"] == "900"


def test_lock_wait_timeout_that_would_fail_every_night_is_refused_now(monkeypatch,
                                                                      schedulable):
    monkeypatch.setenv("CARABASE_LOCK_WAIT_TIMEOUT", "15min")

    with pytest.raises(UserError, match="CARABASE_LOCK_WAIT_TIMEOUT must be a whole number"):
        install.schedule_inputs("prod", "install-cron prod")


# --- the restore drill's schedule ---------------------------------------------------------


def test_drill_schedule_reaches_the_job_as_carabase_drill(monkeypatch):
    monkeypatch.delenv("CARABASE_DRILL_DATABASE_URL", raising=False)
    assert install.drill_variables("weekly", "install-cron dev") == {"CARABASE_DRILL": "weekly"}
    assert install.drill_variables("off", "install-cron dev") == {"CARABASE_DRILL": "off"}


def test_drill_scratch_url_is_carried_unless_it_holds_a_password(monkeypatch):
    monkeypatch.setenv("CARABASE_DRILL_DATABASE_URL", "postgresql://me@db/scratch")
    assert install.drill_variables("nightly", "install-cron dev") == {
        "CARABASE_DRILL": "nightly", "CARABASE_DRILL_DATABASE_URL": "postgresql://me@db/scratch"}
    monkeypatch.setenv("CARABASE_DRILL_DATABASE_URL", "postgresql://me:s3cret@db/scratch")
    with pytest.raises(UserError, match="holds a password") as error:
        install.drill_variables("weekly", "install-cron dev")
    assert "s3cret" not in str(error.value)


def test_unknown_drill_schedule_is_refused():
    with pytest.raises(UserError, match="--drill must be weekly, nightly or off, not 'daily'"):
        install.drill_variables("daily", "install-cron dev")
