"""invoke backup.nightly, as the schedule runs it: the steps, the pings to a real HTTP
server on 127.0.0.1, the URL kept secret, and cron.log rotation with the job's output
going where launchd and systemd point it (a file opened before the job starts)."""
from __future__ import annotations

import os
import plistlib
import stat
import subprocess
import time
from pathlib import Path

import pytest

from tests.backup_tree import seed_old_backups
from tests.ping_server import closed_port, ping_server, silent_endpoint, trickling_endpoint
from tests.support import run_invoke, write_script

CHECK = "3c9e51f0-7b2a-4e8d-a6c1-secret-check"
PG_DUMP_ERROR = "pg_dump: error: connection to server failed"


def notify_file(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "notify.url"
    path.write_text(url + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def keyed_environ(keyed_environ):
    """No drill unless a test asks for one (the drill's own tests are elsewhere)."""
    return {**keyed_environ, "CARABASE_DRILL": "off"}


@pytest.fixture
def failing_pg_dump(tmp_path):
    """A PATH directory whose pg_dump fails the way a down server makes it fail."""
    tools = tmp_path / "failing-tools"
    tools.mkdir()
    write_script(tools / "pg_dump", f'echo "{PG_DUMP_ERROR}" >&2; exit 1\n')
    return tools


@pytest.fixture
def failing_environ(keyed_environ, failing_pg_dump):
    return {**keyed_environ, "PATH": f"{failing_pg_dump}:{keyed_environ['PATH']}"}


def run_logged(args: list[str], environ: dict[str, str], log: Path, **kwargs):
    """Run `invoke args` with stdout and stderr appended to `log`, opened before the
    process starts, as launchd's StandardOutPath and systemd's append: do."""
    from tests.support import INVOKE, REPO

    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        return subprocess.run([INVOKE, "--search-root", str(REPO), *args], env=environ,
                              stdin=subprocess.DEVNULL, stdout=fd, stderr=fd, timeout=120,
                              **kwargs)
    finally:
        os.close(fd)


# --- the steps and the pings ------------------------------------------------------------


def test_good_night_backs_up_prunes_and_pings_start_then_success(dev_environ, backup_dir,
                                                                  tmp_path):
    seeded = seed_old_backups(backup_dir)
    with ping_server() as (base, received):
        url = f"{base}/{CHECK}"
        environ = {**dev_environ, "CARABASE_NOTIFY_URL_FILE": str(notify_file(tmp_path, url))}
        result = run_invoke("backup.nightly", "dev", env=environ)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert "backup dev: wrote " in result.stdout
    assert not seeded[0].exists() and seeded[-1].exists()  # prune ran, after the backup
    assert [ping.path for ping in received] == [f"/{CHECK}/start", f"/{CHECK}"]
    assert "backup dev: wrote " in received[1].body and "dev: kept " in received[1].body


def test_night_with_a_drill_due_backs_up_prunes_then_drills_the_new_backup(
        dev_environ, backup_dir, pg):
    environ = {**dev_environ, "CARABASE_DRILL": "nightly",
               "CARABASE_DRILL_DATABASE_URL": pg.url("carabase_drill_nightly")}
    result = run_invoke("backup.nightly", "dev", env=environ)
    assert result.returncode == 0, result.stderr
    backup = result.stdout.split("backup dev: wrote ", 1)[1].split(" (", 1)[0]
    assert f"drill dev: PASS {backup} restored in " in result.stdout
    assert (backup_dir / "dev" / ".drill.json").exists()
    assert not pg.database_exists("carabase_drill_nightly")


def test_night_without_a_drill_due_says_so_and_drills_nothing(dev_environ, backup_dir):
    result = run_invoke("backup.nightly", "dev", env=dev_environ)  # CARABASE_DRILL=off
    assert result.returncode == 0, result.stderr
    assert "nightly dev: no drill tonight (CARABASE_DRILL=off)" in result.stdout
    assert not (backup_dir / "dev" / ".drill.json").exists()


def test_failing_night_stops_before_prune_and_pings_start_then_fail_with_the_error(
        failing_environ, backup_dir, tmp_path):
    seeded = seed_old_backups(backup_dir)
    with ping_server() as (base, received):
        environ = {**failing_environ,
                   "CARABASE_NOTIFY_URL_FILE": str(notify_file(tmp_path, f"{base}/{CHECK}"))}
        result = run_invoke("backup.nightly", "dev", env=environ)
    assert result.returncode == 1
    error = result.stderr.strip().splitlines()
    assert len(error) == 1 and error[0].startswith(f"backup dev failed: {PG_DUMP_ERROR}")
    assert "Traceback" not in result.stderr
    assert all(path.exists() for path in seeded)  # prune never runs after a failed backup
    assert [ping.path for ping in received] == [f"/{CHECK}/start", f"/{CHECK}/fail"]
    assert received[1].body.startswith("nightly dev: started ")
    assert received[1].body.endswith(error[0] + "\n")


def test_without_a_notify_url_the_night_runs_and_sends_nothing(failing_environ):
    result = run_invoke("backup.nightly", "dev", env=failing_environ)
    assert result.returncode == 1
    assert "ping" not in result.stdout + result.stderr


@pytest.mark.parametrize("night_fails", [False, True])
def test_dead_notify_endpoint_keeps_the_exit_status_and_costs_at_most_the_timeouts(
        night_fails, dev_environ, failing_environ, tmp_path):
    environ = failing_environ if night_fails else dev_environ
    timeout = 0.3
    environ = {**environ, "CARABASE_NOTIFY_TIMEOUT": str(timeout)}
    started = time.monotonic()
    baseline = run_invoke("backup.nightly", "dev", env=environ)
    unnotified = time.monotonic() - started
    with silent_endpoint() as base:
        url_file = notify_file(tmp_path, f"{base}/{CHECK}")
        started = time.monotonic()
        result = run_invoke("backup.nightly", "dev",
                            env={**environ, "CARABASE_NOTIFY_URL_FILE": str(url_file)})
        elapsed = time.monotonic() - started
    assert result.returncode == baseline.returncode == (1 if night_fails else 0), result.stderr
    signal = "fail" if night_fails else "success"
    assert "nightly dev: start ping to 127.0.0.1 failed: timed out" in result.stderr
    assert f"nightly dev: {signal} ping to 127.0.0.1 failed: timed out" in result.stderr
    # Two pings, each one try that waits the whole timeout; a second backup of dev in the
    # same second waits for the next one.
    assert elapsed < unnotified + 2 * timeout + 2
    assert CHECK not in result.stdout + result.stderr


def test_notify_endpoint_with_nothing_listening_changes_nothing(
        failing_environ, tmp_path):
    url_file = notify_file(tmp_path, f"http://127.0.0.1:{closed_port()}/{CHECK}")
    result = run_invoke("backup.nightly", "dev",
                        env={**failing_environ, "CARABASE_NOTIFY_URL_FILE": str(url_file),
                             "CARABASE_NOTIFY_TIMEOUT": "0.2"})  # shortens the retry pauses
    assert result.returncode == 1
    assert "fail ping to 127.0.0.1 failed after 3 tries: Connection refused" in result.stderr
    assert CHECK not in result.stdout + result.stderr


def test_a_monitor_that_trickles_its_answer_costs_the_night_each_pings_deadline_only(
        failing_environ, tmp_path):
    # A byte every 0.2 s: no read ever waits the 1.5 s a try may take, so only a deadline
    # on the whole ping ends it (the status line takes 3.4 s, the whole answer 38 s).
    deadline = 1.5
    environ = {**failing_environ, "CARABASE_NOTIFY_TIMEOUT": str(deadline)}
    started = time.monotonic()
    baseline = run_invoke("backup.nightly", "dev", env=environ)
    unnotified = time.monotonic() - started
    with trickling_endpoint(interval=0.2, response_bytes=150) as (base, paths):
        url_file = notify_file(tmp_path, f"{base}/{CHECK}")
        started = time.monotonic()
        result = run_invoke("backup.nightly", "dev",
                            env={**environ, "CARABASE_NOTIFY_URL_FILE": str(url_file)})
        elapsed = time.monotonic() - started
    assert result.returncode == baseline.returncode == 1
    assert f"backup dev failed: {PG_DUMP_ERROR}" in result.stderr  # the backup did run
    assert "nightly dev: start ping to 127.0.0.1 failed: timed out" in result.stderr
    assert "nightly dev: fail ping to 127.0.0.1 failed: timed out" in result.stderr
    assert paths == [f"/{CHECK}/start", f"/{CHECK}/fail"]  # one try each: the deadline
    assert elapsed < unnotified + 2 * deadline + 1.5
    assert CHECK not in result.stdout + result.stderr


def test_unusable_notify_setting_is_logged_and_the_night_still_runs(dev_environ, tmp_path,
                                                                     backup_dir):
    url_file = notify_file(tmp_path, f"https://hc-ping.example/{CHECK}")
    url_file.chmod(0o644)
    result = run_invoke("backup.nightly", "dev",
                        env={**dev_environ, "CARABASE_NOTIFY_URL_FILE": str(url_file)})
    assert result.returncode == 0, result.stderr
    assert f"nightly dev: not notifying: CARABASE_NOTIFY_URL_FILE {url_file} is readable by" \
        " others" in result.stderr
    assert "backup dev: wrote " in result.stdout
    assert CHECK not in result.stdout + result.stderr


def test_unknown_env_is_refused_with_one_line(dev_environ):
    result = run_invoke("backup.nightly", "qa", env=dev_environ)
    assert result.returncode == 1
    assert result.stderr.strip() == "unknown env 'qa': expected one of dev, staging, prod"


# --- the URL is a secret ----------------------------------------------------------------


def test_installed_job_keeps_the_url_out_of_argv_cron_log_and_schedule_files(
        dev_environ, tmp_path, home, backup_dir):
    """Install for real (launchd files, no launchctl here), then run the job exactly as
    the plist says, its output appended to cron.log, sampling every process's argv."""
    with ping_server() as (base, received):
        url = f"{base}/{CHECK}"
        installed = run_invoke(
            "backup.install-cron", "dev", "--platform", "launchd",
            env={**dev_environ, "CARABASE_NOTIFY_URL_FILE": str(notify_file(tmp_path, url))})
        assert installed.returncode == 0, installed.stderr
        plist = home / "Library" / "LaunchAgents" / "com.carabase.backup.dev.plist"
        job = plistlib.loads(plist.read_bytes())
        assert job["ProgramArguments"][-2:] == ["backup.nightly", "dev"]
        # Slow the dump down so that the sampling sees the whole process tree at work.
        slow = tmp_path / "slow-tools"
        slow.mkdir()
        real_pg_dump = next(Path(d) / "pg_dump" for d in job["EnvironmentVariables"]["PATH"]
                            .split(":") if (Path(d) / "pg_dump").exists())
        write_script(slow / "pg_dump", f'sleep 1; exec "{real_pg_dump}" "$@"\n')
        job_environ = {"HOME": str(home), **job["EnvironmentVariables"]}
        job_environ["PATH"] = f"{slow}:{job_environ['PATH']}"
        log = Path(job["StandardOutPath"])
        with open(log, "ab") as out:
            process = subprocess.Popen(job["ProgramArguments"], cwd=job["WorkingDirectory"],
                                       env=job_environ, stdin=subprocess.DEVNULL, stdout=out,
                                       stderr=out)
        seen_in_argv, samples = [], 0
        while process.poll() is None:
            for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
                try:
                    argv = cmdline.read_bytes()
                except OSError:  # the process ended meanwhile
                    continue
                if CHECK.encode() in argv:
                    seen_in_argv.append(argv)
            samples += 1
        assert process.wait(timeout=60) == 0, log.read_text()
    assert samples > 5
    assert seen_in_argv == []
    assert [ping.path for ping in received] == [f"/{CHECK}/start", f"/{CHECK}"]
    assert "nightly dev: done in " in log.read_text()
    for path in [plist, log]:
        assert CHECK.encode() not in path.read_bytes(), path
        assert b"127.0.0.1:" not in path.read_bytes(), path


# --- cron.log rotation ------------------------------------------------------------------


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def big_log(log: Path, marker: str) -> bytes:
    """Fill `log` past 1 MiB (as a year of nights would), ending with `marker`."""
    content = (b"an old night's line\n" * 53_000) + marker.encode() + b"\n"
    assert len(content) > 1024 * 1024
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_bytes(content)
    log.chmod(0o600)
    return content


def test_log_past_1_mib_rotates_and_the_running_job_writes_into_the_new_log(
        failing_environ, backup_dir):
    log = backup_dir / "dev" / "cron.log"
    first = big_log(log, "end of the first year")
    result = run_logged(["backup.nightly", "dev"], failing_environ, log)
    assert result.returncode == 1
    # The old lines, and only they, are in cron.log.1: the job's own output followed it
    # to the new cron.log, although its stdout and stderr were opened on the old file.
    assert (log.parent / "cron.log.1").read_bytes() == first
    tonight = log.read_text()
    assert tonight.startswith("nightly dev: started ")
    assert "cron.log passed 1 MiB, kept as cron.log.1" in tonight
    assert tonight.endswith(f"{PG_DUMP_ERROR} (check CARABASE_DEV_DATABASE_URL:"
                            f" postgresql:///carabase_dev)\n")
    assert mode_of(log) == mode_of(log.parent / "cron.log.1") == 0o600

    # A small log stays where it is; a big one again replaces the one old copy.
    run_logged(["backup.nightly", "dev"], failing_environ, log)
    assert log.read_text().count("nightly dev: started ") == 2
    second = big_log(log, "end of the second year")
    run_logged(["backup.nightly", "dev"], failing_environ, log)
    assert (log.parent / "cron.log.1").read_bytes() == second
    assert log.read_text().count("nightly dev: started ") == 1
    assert sorted(path.name for path in log.parent.glob("cron.log*")) == [
        "cron.log", "cron.log.1"]


def test_an_unreadable_pitr_record_fails_the_night_with_a_fail_ping_not_a_traceback(
        dev_environ, backup_dir, tmp_path):
    (backup_dir / "dev").mkdir(parents=True, mode=0o700)
    (backup_dir / "dev" / "pitr.json").write_text("{not json")
    with ping_server() as (base, received):
        environ = {**dev_environ,
                   "CARABASE_NOTIFY_URL_FILE": str(notify_file(tmp_path, f"{base}/{CHECK}"))}
        result = run_invoke("backup.nightly", "dev", env=environ)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().startswith("cannot read ")
    assert [ping.path for ping in received] == [f"/{CHECK}/start", f"/{CHECK}/fail"]
