"""invoke backup.install-cron / uninstall-cron, run as a user types them.

HOME and the backup directory are temporary, and PATH holds only a stand-in pg_dump
and, where a test wants one, stand-in launchctl/systemctl/loginctl that record their
arguments: no test touches the real service managers of the machine running it.
"""
from __future__ import annotations

import base64
import os
import plistlib
import shutil
import stat
import subprocess
import textwrap
from pathlib import Path

import pytest

from tests.backup_tree import seed_old_backups
from tests.support import INVOKE, REPO, run_invoke, write_script

PLIST = "Library/LaunchAgents/com.carabase.backup.{env}.plist"
UNIT_DIR = ".config/systemd/user"


@pytest.fixture
def tools(tmp_path):
    """A PATH directory with a stand-in pg_dump, and bash (invoke runs commands with the
    `bash` found on PATH), and nothing else."""
    path = tmp_path / "tools"
    path.mkdir()
    (path / "bash").symlink_to(shutil.which("bash"))
    write_script(path / "pg_dump", 'echo "pg_dump: error: stand-in" >&2; exit 1\n')
    return path


@pytest.fixture
def calls(tmp_path):
    return tmp_path / "calls.log"


@pytest.fixture
def managers(tools, calls):
    """Stand-in launchctl, systemctl and loginctl that log each call and succeed, except
    `launchctl bootout` of a job that is not loaded (as on a first install)."""
    log = f'echo "${{0##*/}} $*" >> "{calls}"\n'
    write_script(tools / "launchctl", log + textwrap.dedent("""\
        case "$1" in
          bootout) echo "Boot-out failed: 3: No such process" >&2; exit 3 ;;
          bootstrap) if [ -n "$FAKE_BOOTSTRAP_FAILS" ]; then
                       echo "Bootstrap failed: 5: Input/output error" >&2; exit 5
                     fi ;;
        esac
        exit 0
        """))
    write_script(tools / "systemctl", log + textwrap.dedent("""\
        if [ -n "$FAKE_NO_USER_MANAGER" ]; then
          echo "Failed to connect to bus: No medium found" >&2; exit 1
        fi
        [ "$2" = show ] && echo "Version=252"
        exit 0
        """))
    write_script(tools / "loginctl", log + "echo no\n")
    return tools


@pytest.fixture
def key_file(tmp_path):
    path = tmp_path / "secrets" / "master.key"
    path.parent.mkdir(mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, os.urandom(32).hex().encode() + b"\n")
    os.close(fd)
    return path


@pytest.fixture
def setup(environ, tools, key_file):
    """The environment of a user with a key file and pg_dump: ready to install."""
    return {**environ, "PATH": str(tools), "HOST_MASTER_KEY_FILE": str(key_file)}


def calls_made(calls: Path) -> list[str]:
    return calls.read_text().splitlines() if calls.exists() else []


def tree(*roots: Path) -> dict[str, tuple[int, bytes]]:
    """Every path under the roots, with its mode and content (files): a snapshot."""
    found = {}
    for root in roots:
        for path in [root, *root.rglob("*")] if root.exists() else []:
            info = path.lstat()
            found[str(path)] = (info.st_mode, path.read_bytes() if path.is_file() else b"")
    return found


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- dry run ----------------------------------------------------------------------------


@pytest.mark.parametrize("platform", ["launchd", "systemd"])
def test_dry_run_prints_the_files_and_commands_and_writes_nothing(
        platform, setup, managers, calls, home, backup_dir):
    before = tree(home, backup_dir)
    result = run_invoke("backup.install-cron", "prod", "--platform", platform, "--dry-run",
                        env=setup)
    assert result.returncode == 0, result.stderr
    assert tree(home, backup_dir) == before
    assert calls_made(calls) == []
    if platform == "launchd":
        assert f"would write {home / PLIST.format(env='prod')} (mode 0644):" in result.stdout
        assert "<key>StartCalendarInterval</key>" in result.stdout
        assert "would run: launchctl bootout" in result.stdout
    else:
        assert f"would write {home / UNIT_DIR / 'carabase-backup-prod.timer'} (mode 0644):" \
            in result.stdout
        assert "OnCalendar=*-*-* 03:17:00" in result.stdout
        assert "systemctl --user enable --now carabase-backup-prod.timer" in result.stdout
    assert "nothing written" in result.stdout


def test_dry_run_shows_the_plist_byte_for_byte_as_install_writes_it(setup, managers, home):
    dry = run_invoke("backup.install-cron", "dev", "--platform", "launchd", "--dry-run",
                     env=setup)
    run_invoke("backup.install-cron", "dev", "--platform", "launchd", env=setup)
    assert (home / PLIST.format(env="dev")).read_text() in dry.stdout


# --- launchd ----------------------------------------------------------------------------


def test_launchd_install_writes_the_plist_0644_and_reloads_the_job(
        setup, managers, calls, home, backup_dir, key_file, tools):
    result = run_invoke("backup.install-cron", "prod", "--platform", "launchd", env=setup)
    assert result.returncode == 0, result.stderr
    plist = home / PLIST.format(env="prod")
    assert mode_of(plist) == 0o644
    job = plistlib.loads(plist.read_bytes())
    assert job["Label"] == "com.carabase.backup.prod"
    assert job["ProgramArguments"] == [
        os.path.abspath(INVOKE), "--search-root", str(REPO), "backup.nightly", "prod",
    ]
    assert job["StartCalendarInterval"] == {"Hour": 3, "Minute": 17}
    log = str(backup_dir / "prod" / "cron.log")
    assert job["StandardOutPath"] == job["StandardErrorPath"] == log
    assert job["WorkingDirectory"] == str(REPO)
    assert job["EnvironmentVariables"] == {
        "PATH": f"{tools}:/usr/bin:/bin:/usr/sbin:/sbin",
        "CARABASE_BACKUP_DIR": str(backup_dir),
        "HOST_MASTER_KEY_FILE": str(key_file),
        "CARABASE_DRILL": "weekly",
    }
    uid = os.getuid()
    assert calls_made(calls) == [
        f"launchctl bootout gui/{uid}/com.carabase.backup.prod",
        f"launchctl bootstrap gui/{uid} {plist}",
    ]
    assert mode_of(backup_dir / "prod") == 0o700
    assert mode_of(backup_dir / "prod" / "cron.log") == 0o600


def test_launchd_install_that_launchctl_refuses_fails_with_the_command_to_retry(
        setup, managers, home):
    result = run_invoke("backup.install-cron", "prod", "--platform", "launchd",
                        env={**setup, "FAKE_BOOTSTRAP_FAILS": "1"})
    assert result.returncode == 1
    assert "Input/output error" in result.stderr
    assert f"run: launchctl bootstrap gui/{os.getuid()} {home / PLIST.format(env='prod')}" \
        in result.stderr
    assert "Traceback" not in result.stderr


def test_launchd_install_without_launchctl_writes_the_plist_and_says_it_is_not_loaded(
        setup, home):
    result = run_invoke("backup.install-cron", "prod", "--platform", "launchd", env=setup)
    assert result.returncode == 0, result.stderr
    assert (home / PLIST.format(env="prod")).is_file()
    assert "WARNING: launchctl not found" in result.stderr
    assert "launchctl bootstrap gui/" in result.stderr


def test_launchd_install_twice_leaves_one_plist_with_the_second_settings(
        setup, managers, home):
    first = {**setup, "CARABASE_STAGING_DATABASE_URL": "postgresql://a@first/carabase_staging"}
    second = {**setup, "CARABASE_STAGING_DATABASE_URL": "postgresql://a@second/carabase_staging"}
    for environ in (first, second):
        result = run_invoke("backup.install-cron", "staging", "--platform", "launchd", env=environ)
        assert result.returncode == 0, result.stderr
    agents = home / "Library" / "LaunchAgents"
    assert [path.name for path in agents.iterdir()] == ["com.carabase.backup.staging.plist"]
    job = plistlib.loads((agents / "com.carabase.backup.staging.plist").read_bytes())
    assert job["EnvironmentVariables"]["CARABASE_STAGING_DATABASE_URL"] == \
        "postgresql://a@second/carabase_staging"


def test_launchd_uninstall_unloads_and_removes_the_plist_and_keeps_the_log(
        setup, managers, calls, home, backup_dir):
    run_invoke("backup.install-cron", "dev", "--platform", "launchd", env=setup)
    calls.unlink()
    result = run_invoke("backup.uninstall-cron", "dev", "--platform", "launchd", env=setup)
    assert result.returncode == 0, result.stderr
    assert list((home / "Library" / "LaunchAgents").iterdir()) == []
    assert calls_made(calls) == [f"launchctl bootout gui/{os.getuid()}/com.carabase.backup.dev"]
    assert (backup_dir / "dev" / "cron.log").exists()


# --- systemd ----------------------------------------------------------------------------


def test_systemd_install_writes_both_units_0644_and_enables_the_timer(
        setup, managers, calls, home, backup_dir, key_file):
    result = run_invoke("backup.install-cron", "prod", "--platform", "systemd", env=setup)
    assert result.returncode == 0, result.stderr
    unit_dir = home / UNIT_DIR
    assert sorted(path.name for path in unit_dir.iterdir()) == [
        "carabase-backup-prod.service", "carabase-backup-prod.timer",
    ]
    for unit in unit_dir.iterdir():
        assert mode_of(unit) == 0o644
    service = (unit_dir / "carabase-backup-prod.service").read_text()
    assert f"ExecStart={INVOKE} --search-root {REPO} backup.nightly prod\n" in service
    assert f"StandardOutput=append:{backup_dir / 'prod' / 'cron.log'}\n" in service
    assert f'Environment="HOST_MASTER_KEY_FILE={key_file}"\n' in service
    assert "OnCalendar=*-*-* 03:17:00\n" in (unit_dir / "carabase-backup-prod.timer").read_text()
    assert calls_made(calls)[:3] == [
        "systemctl --user show --property=Version",
        "systemctl --user daemon-reload",
        "systemctl --user enable --now carabase-backup-prod.timer",
    ]
    assert "loginctl enable-linger" in result.stderr  # the stand-in says Linger=no
    assert mode_of(backup_dir / "prod" / "cron.log") == 0o600


def test_install_records_its_env_beside_the_one_set_up_so_status_checks_both(
        setup, managers, home):
    (home / ".carabase").mkdir()
    (home / ".carabase" / "env").write_text("CARABASE_ENVS=dev\n")  # as setup.sh left it

    result = run_invoke("backup.install-cron", "prod", "--platform", "systemd", env=setup)

    assert result.returncode == 0, result.stderr
    assert (home / ".carabase" / "env").read_text() == "CARABASE_ENVS=dev,prod\n"
    status = run_invoke("backup.status", env=setup)
    assert [line[:9] for line in status.stdout.splitlines()] == ["[dev    ]", "[prod   ]"]


def test_systemd_install_respects_xdg_config_home(setup, managers, tmp_path, home):
    config = tmp_path / "config"
    result = run_invoke("backup.install-cron", "dev", "--platform", "systemd",
                        env={**setup, "XDG_CONFIG_HOME": str(config)})
    assert result.returncode == 0, result.stderr
    assert (config / "systemd" / "user" / "carabase-backup-dev.timer").is_file()
    assert not (home / ".config").exists()


def test_systemd_install_without_a_user_manager_writes_the_units_warns_and_exits_0(
        setup, managers, calls, home):
    result = run_invoke("backup.install-cron", "prod", "--platform", "systemd",
                        env={**setup, "FAKE_NO_USER_MANAGER": "1"})
    assert result.returncode == 0, result.stderr
    assert (home / UNIT_DIR / "carabase-backup-prod.timer").is_file()
    assert "WARNING: no systemd user manager (systemctl --user failed: Failed to connect to bus" \
        in result.stderr
    assert ("run: systemctl --user daemon-reload && systemctl --user enable --now"
            " carabase-backup-prod.timer") in result.stderr
    assert calls_made(calls) == ["systemctl --user show --property=Version"]


def test_systemd_install_without_systemctl_writes_the_units_and_warns(setup, home):
    result = run_invoke("backup.install-cron", "prod", "--platform", "systemd", env=setup)
    assert result.returncode == 0, result.stderr
    assert (home / UNIT_DIR / "carabase-backup-prod.service").is_file()
    assert "systemctl is not installed" in result.stderr


def test_systemd_install_twice_leaves_one_service_and_one_timer(setup, managers, home):
    for _ in range(2):
        result = run_invoke("backup.install-cron", "dev", "--platform", "systemd", env=setup)
        assert result.returncode == 0, result.stderr
    assert sorted(path.name for path in (home / UNIT_DIR).iterdir()) == [
        "carabase-backup-dev.service", "carabase-backup-dev.timer",
    ]


def test_systemd_uninstall_disables_and_removes_units_and_the_enable_link(
        setup, managers, calls, home):
    run_invoke("backup.install-cron", "dev", "--platform", "systemd", env=setup)
    unit_dir = home / UNIT_DIR
    wants = unit_dir / "timers.target.wants"  # what `systemctl enable` creates
    wants.mkdir()
    (wants / "carabase-backup-dev.timer").symlink_to(unit_dir / "carabase-backup-dev.timer")
    calls.unlink()
    result = run_invoke("backup.uninstall-cron", "dev", "--platform", "systemd", env=setup)
    assert result.returncode == 0, result.stderr
    assert [path for path in unit_dir.rglob("*") if "carabase" in path.name] == []
    assert calls_made(calls)[0] == "systemctl --user disable --now carabase-backup-dev.timer"
    assert "systemctl --user daemon-reload" in calls_made(calls)


@pytest.mark.parametrize("platform", ["launchd", "systemd"])
def test_uninstall_when_nothing_is_installed_says_so_and_exits_0(platform, setup, home):
    result = run_invoke("backup.uninstall-cron", "prod", "--platform", platform, env=setup)
    assert result.returncode == 0, result.stderr
    assert "no nightly schedule was installed" in result.stdout


def test_uninstall_dry_run_removes_nothing(setup, managers, calls, home):
    run_invoke("backup.install-cron", "dev", "--platform", "launchd", env=setup)
    calls.unlink()
    result = run_invoke("backup.uninstall-cron", "dev", "--platform", "launchd", "--dry-run",
                        env=setup)
    assert result.returncode == 0, result.stderr
    assert (home / PLIST.format(env="dev")).is_file()
    assert calls_made(calls) == []
    assert f"would remove {home / PLIST.format(env='dev')}" in result.stdout


# --- refusals ---------------------------------------------------------------------------


def assert_refused_and_nothing_written(result, home, backup_dir, *fragments):
    assert result.returncode == 1
    for fragment in fragments:
        assert fragment in result.stderr
    assert "Traceback" not in result.stderr
    assert list(home.iterdir()) == []
    assert not backup_dir.exists()


@pytest.mark.parametrize("platform", ["launchd", "systemd"])
def test_inline_key_only_is_refused_with_how_to_make_a_key_file(
        platform, environ, tools, home, backup_dir):
    key = os.urandom(32).hex()
    result = run_invoke("backup.install-cron", "prod", "--platform", platform,
                        env={**environ, "PATH": str(tools), "HOST_MASTER_KEY": key})
    assert_refused_and_nothing_written(
        result, home, backup_dir, "refusing to write HOST_MASTER_KEY", "umask 077",
        "> ~/.carabase/master.key), then unset HOST_MASTER_KEY",
    )
    assert key not in result.stdout + result.stderr


def test_group_readable_key_file_is_refused(setup, key_file, home, backup_dir):
    key_file.chmod(0o640)
    result = run_invoke("backup.install-cron", "prod", "--platform", "launchd", env=setup)
    assert_refused_and_nothing_written(result, home, backup_dir, "readable by others",
                                       f"chmod 600 {key_file}")


def test_missing_key_file_is_refused(setup, tmp_path, home, backup_dir):
    missing = tmp_path / "nowhere" / "master.key"
    result = run_invoke("backup.install-cron", "prod", "--platform", "systemd",
                        env={**setup, "HOST_MASTER_KEY_FILE": str(missing)})
    assert_refused_and_nothing_written(result, home, backup_dir,
                                       f"cannot read HOST_MASTER_KEY_FILE {missing}")


def test_database_url_with_a_password_is_refused_without_showing_it(setup, home, backup_dir):
    password = os.urandom(8).hex()
    url = f"postgresql://carabase:{password}@db.lan/carabase_prod"
    result = run_invoke("backup.install-cron", "prod", "--platform", "launchd",
                        env={**setup, "CARABASE_PROD_DATABASE_URL": url})
    assert_refused_and_nothing_written(result, home, backup_dir,
                                       "CARABASE_PROD_DATABASE_URL holds a password", "~/.pgpass")
    assert password not in result.stdout + result.stderr


def test_missing_pg_dump_is_refused(setup, tmp_path, home, backup_dir):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_invoke("backup.install-cron", "prod", "--platform", "launchd",
                        env={**setup, "PATH": str(empty)})
    assert_refused_and_nothing_written(result, home, backup_dir, "pg_dump is not on PATH")


@pytest.mark.parametrize("args, message", [
    (["backup.install-cron", "qa"], "unknown env 'qa'"),
    (["backup.install-cron", "dev", "--platform", "cron"], "unknown platform 'cron'"),
    (["backup.uninstall-cron", "dev", "--platform", "cron"], "unknown platform 'cron'"),
])
def test_unknown_env_or_platform_is_refused(args, message, setup, home, backup_dir):
    assert_refused_and_nothing_written(run_invoke(*args, env=setup), home, backup_dir, message)


def test_launch_agents_folder_that_cannot_be_written_fails_with_one_line(setup, home):
    (home / "Library").mkdir()
    (home / "Library" / "LaunchAgents").write_text("not a folder")
    result = run_invoke("backup.install-cron", "prod", "--platform", "launchd", env=setup)
    assert result.returncode == 1
    assert f"cannot write {home / PLIST.format(env='prod')}" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("platform, schedule_dir", [("launchd", "Library/LaunchAgents"),
                                                    ("systemd", UNIT_DIR)])
def test_under_umask_000_the_folders_made_are_0700_and_the_job_files_0644(
        platform, schedule_dir, setup, managers, home, backup_dir):
    result = run_invoke("backup.install-cron", "dev", "--platform", platform, env=setup,
                        umask=0)
    assert result.returncode == 0, result.stderr
    made = [home / schedule_dir, *(home / schedule_dir).parents]
    for folder in made[:made.index(home)]:
        assert mode_of(folder) == 0o700, folder
    assert [mode_of(path) for path in (home / schedule_dir).iterdir()] \
        == [0o644] * (1 if platform == "launchd" else 2)
    assert mode_of(backup_dir / "dev") == 0o700
    assert mode_of(backup_dir / "dev" / "cron.log") == 0o600


@pytest.mark.parametrize("platform, schedule_dir", [("launchd", "Library/LaunchAgents"),
                                                    ("systemd", UNIT_DIR)])
@pytest.mark.parametrize("shared", ["schedule folder", "its parent"])
def test_a_schedule_folder_others_may_write_to_is_refused_naming_the_chmod(
        platform, schedule_dir, shared, setup, managers, home, backup_dir):
    folder = home / schedule_dir
    folder.mkdir(parents=True)
    loose = folder if shared == "schedule folder" else folder.parent
    loose.chmod(0o777)
    result = run_invoke("backup.install-cron", "dev", "--platform", platform, env=setup)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"install-cron dev refused: others may write to {loose} (mode 0777) and could"
        f" replace the job: chmod go-w {loose}"]
    assert list(folder.iterdir()) == [] and not backup_dir.exists()


@pytest.mark.parametrize("platform, warned", [("launchd", True), ("systemd", False)])
def test_backups_inside_documents_are_warned_about_for_launchd_only(
        platform, warned, setup, home):
    environ = {**setup, "CARABASE_BACKUP_DIR": str(home / "Documents" / "backups")}
    result = run_invoke("backup.install-cron", "prod", "--platform", platform, "--dry-run",
                        env=environ)
    assert result.returncode == 0, result.stderr
    assert ("inside ~/Documents" in result.stderr) is warned


def install_everywhere(environ: dict[str, str]) -> str:
    """install-cron prod on both platforms, dry run then for real; all it printed."""
    outputs = ""
    for platform in ("launchd", "systemd"):
        for extra in (["--dry-run"], []):
            result = run_invoke("backup.install-cron", "prod", "--platform", platform, *extra,
                                env=environ)
            assert result.returncode == 0, result.stderr
            outputs += result.stdout + result.stderr
    return outputs


# --- secrets ----------------------------------------------------------------------------


def test_no_secret_reaches_any_written_file_or_the_output(
        setup, managers, key_file, home, backup_dir):
    key = key_file.read_text().strip()
    password = os.urandom(8).hex()
    environ = {**setup, "PGPASSWORD": password,
               "CARABASE_PROD_DATABASE_URL": "postgresql://carabase@db.lan/carabase_prod"}
    outputs = install_everywhere(environ)
    written = [path for path in [*home.rglob("*"), *backup_dir.rglob("*")] if path.is_file()]
    assert len(written) == 5  # plist, service, timer, cron.log, ~/.carabase/env
    raw = bytes.fromhex(key)
    secrets = [key.encode(), key.upper().encode(), raw, base64.b64encode(raw), password.encode()]
    for path in written:
        content = path.read_bytes()
        for secret in secrets:
            assert secret not in content, path
    assert key not in outputs and password not in outputs
    assert "will not see PGPASSWORD" in outputs


NOTIFY_URL = "https://hc-ping.example/6f1e0a52-secret-check-4d2b"


@pytest.mark.parametrize("platform", ["launchd", "systemd"])
def test_inline_notify_url_only_is_refused_with_how_to_make_a_file_and_not_shown(
        platform, setup, home, backup_dir):
    result = run_invoke("backup.install-cron", "prod", "--platform", platform,
                        env={**setup, "CARABASE_NOTIFY_URL": NOTIFY_URL})
    assert_refused_and_nothing_written(
        result, home, backup_dir, "refusing to write CARABASE_NOTIFY_URL", "umask 077",
        "CARABASE_NOTIFY_URL_FILE=",
    )
    assert NOTIFY_URL not in result.stdout + result.stderr


def test_group_readable_notify_url_file_is_refused(setup, tmp_path, home, backup_dir):
    url_file = tmp_path / "notify.url"
    url_file.write_text(NOTIFY_URL + "\n")
    url_file.chmod(0o644)
    result = run_invoke("backup.install-cron", "prod", "--platform", "systemd",
                        env={**setup, "CARABASE_NOTIFY_URL_FILE": str(url_file)})
    assert_refused_and_nothing_written(result, home, backup_dir, "readable by others",
                                       f"chmod 600 {url_file}")
    assert NOTIFY_URL not in result.stdout + result.stderr


def test_notify_url_file_goes_into_the_schedule_by_path_and_the_url_nowhere(
        setup, managers, tmp_path, home, backup_dir):
    url_file = tmp_path / "secrets" / "notify.url"
    url_file.write_text(NOTIFY_URL + "\n")
    url_file.chmod(0o600)
    environ = {**setup, "CARABASE_NOTIFY_URL_FILE": "~/../secrets/notify.url"}
    outputs = install_everywhere(environ)
    job = plistlib.loads((home / PLIST.format(env="prod")).read_bytes())
    assert job["EnvironmentVariables"]["CARABASE_NOTIFY_URL_FILE"] == str(url_file)
    service = (home / UNIT_DIR / "carabase-backup-prod.service").read_text()
    assert f'Environment="CARABASE_NOTIFY_URL_FILE={url_file}"\n' in service
    written = [path for path in [*home.rglob("*"), *backup_dir.rglob("*")] if path.is_file()]
    assert len(written) == 5  # plist, service, timer, cron.log, ~/.carabase/env
    for path in written:
        assert b"hc-ping.example" not in path.read_bytes(), path
    assert "hc-ping.example" not in outputs


def test_relative_key_file_is_written_as_an_absolute_path(setup, managers, key_file, home):
    environ = {**setup, "HOST_MASTER_KEY_FILE": os.path.join("secrets", key_file.name)}
    result = run_invoke("backup.install-cron", "prod", "--platform", "launchd", env=environ,
                        cwd=key_file.parent.parent)
    assert result.returncode == 0, result.stderr
    job = plistlib.loads((home / PLIST.format(env="prod")).read_bytes())
    assert job["EnvironmentVariables"]["HOST_MASTER_KEY_FILE"] == str(key_file)


# --- the installed job: prune only after a successful backup ------------------------------


def test_installed_job_whose_backup_fails_leaves_the_backups_unpruned(
        setup, managers, home, backup_dir):
    """Run the job exactly as the plist says, with pg_dump failing: prune must not run."""
    installed = run_invoke("backup.install-cron", "dev", "--platform", "launchd", env=setup)
    assert installed.returncode == 0, installed.stderr
    job = plistlib.loads((home / PLIST.format(env="dev")).read_bytes())
    seeded = seed_old_backups(backup_dir)
    job_environ = {"HOME": str(home), **job["EnvironmentVariables"]}
    result = subprocess.run(job["ProgramArguments"], cwd=job["WorkingDirectory"], env=job_environ,
                            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode != 0
    assert "pg_dump" in result.stderr  # it failed where it should: at the dump
    assert all(path.exists() for path in seeded), result.stdout + result.stderr
    # The control: the same prune on its own does delete them.
    pruned = run_invoke("backup.prune", "dev", env=job_environ)
    assert pruned.returncode == 0, pruned.stderr
    assert not seeded[0].exists() and seeded[-1].exists(), pruned.stdout


def test_schedule_finds_pigz_where_it_was_found_and_keeps_compressor_settings(
        setup, managers, home, tmp_path, tools):
    elsewhere = tmp_path / "homebrew-bin"  # pigz installed apart from pg_dump
    elsewhere.mkdir()
    write_script(elsewhere / "pigz", "exit 0\n")
    environ = {**setup, "PATH": f"{setup['PATH']}:{elsewhere}",
               "CARABASE_COMPRESSOR": "pigz", "CARABASE_COMPRESS_THREADS": "2"}

    result = run_invoke("backup.install-cron", "prod", "--platform", "launchd", env=environ)

    assert result.returncode == 0, result.stderr
    variables = plistlib.loads((home / PLIST.format(env="prod")).read_bytes())[
        "EnvironmentVariables"]
    assert variables["PATH"].split(":")[:2] == [str(tools), str(elsewhere)]
    assert variables["CARABASE_COMPRESSOR"] == "pigz"
    assert variables["CARABASE_COMPRESS_THREADS"] == "2"


@pytest.mark.parametrize("args, expected", [((), "weekly"), (("--drill", "nightly"), "nightly"),
                                            (("--drill", "off"), "off")])
def test_drill_choice_reaches_the_job_as_carabase_drill(setup, managers, home, args, expected):
    result = run_invoke("backup.install-cron", "prod", "--platform", "launchd", *args, env=setup)
    assert result.returncode == 0, result.stderr
    variables = plistlib.loads((home / PLIST.format(env="prod")).read_bytes())[
        "EnvironmentVariables"]
    assert variables["CARABASE_DRILL"] == expected
    assert f"prod: restore drill {expected}" in result.stdout


def test_unknown_drill_choice_is_refused_before_anything_is_written(setup, managers, home):
    result = run_invoke("backup.install-cron", "prod", "--drill", "daily", env=setup)
    assert result.returncode == 1
    assert result.stderr == ("install-cron prod: --drill must be weekly, nightly or off,"
                             " not 'daily'\n")
    assert not (home / PLIST.format(env="prod")).exists()
    assert not (home / UNIT_DIR).exists()
