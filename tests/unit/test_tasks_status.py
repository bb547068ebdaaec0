"""backup.status: thresholds, line format, the shrunken-backup warning, --json, exit status.

The judging is the pure `tasks.assess_freshness(env, backups, now)`; the task itself is
run in-process under freezegun for what it adds (reading the tree, exit status).
"""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from freezegun import freeze_time
from invoke import Context, Exit

import tasks
from tests.backup_tree import write_backup, write_partial

LATEST = datetime(2026, 4, 9, 3, 17, 12, tzinfo=timezone.utc)
PATH = Path("/backups/dev/2026-04-09/2026-04-09T031712.sql.gz.enc")
HOUR = timedelta(hours=1)


def assess(age: timedelta, size: int = 50_000, previous_size: int | None = None,
           env: str = "dev") -> tasks.Freshness:
    backups = [(LATEST - timedelta(days=1), Path("previous"), previous_size)] \
        if previous_size is not None else []
    backups.append((LATEST, PATH, size))
    return tasks.assess_freshness(env, backups, LATEST + age)


# --- the pure judgement -----------------------------------------------------------------


def test_line_has_the_documented_format():
    report = assess(timedelta(hours=7, minutes=12))
    assert report.line() == "[dev    ] PASS latest=2026-04-09T03:17:12Z age=7.2h ago"


@pytest.mark.parametrize("env, expected_prefix", [
    ("dev", "[dev    ] "), ("staging", "[staging] "), ("prod", "[prod   ] ")])
def test_env_name_is_padded_to_the_width_of_staging(env, expected_prefix):
    assert assess(HOUR, env=env).line().startswith(expected_prefix)


@pytest.mark.parametrize("age, status, shown", [
    (timedelta(hours=29, minutes=54), "PASS", "29.9h"),
    (timedelta(hours=30) - timedelta(seconds=1), "PASS", "29.9h"),  # never shows 30.0
    (timedelta(hours=30), "WARN", "30.0h"),
    (timedelta(hours=71, minutes=54), "WARN", "71.9h"),
    (timedelta(hours=72) - timedelta(seconds=1), "WARN", "71.9h"),
    (timedelta(hours=72), "FAIL", "72.0h"),
    (timedelta(days=200), "FAIL", "4800.0h"),
    (timedelta(0), "PASS", "0.0h"),
])
def test_status_follows_the_age_thresholds(age, status, shown):
    report = assess(age)
    assert report.status == status
    assert report.line().endswith(f"] {status} latest=2026-04-09T03:17:12Z age={shown} ago")


def test_env_without_backups_fails():
    report = tasks.assess_freshness("prod", [], LATEST)
    assert report.status == "FAIL"
    assert report.line() == "[prod   ] FAIL no backups"
    assert report.as_json() == {"env": "prod", "status": "FAIL", "latest": None,
                                "age_hours": None, "path": None, "warning": None}


def test_json_of_a_backup_gives_time_age_in_hours_and_path():
    report = assess(timedelta(hours=7, minutes=12))
    assert report.as_json() == {"env": "dev", "status": "PASS",
                                "latest": "2026-04-09T03:17:12Z", "age_hours": 7.2,
                                "path": str(PATH), "warning": None}


@pytest.mark.parametrize("size", [0, 29, 1023])
def test_newest_backup_under_1_kib_turns_pass_into_warn(size):
    report = assess(HOUR, size=size)
    assert report.status == "WARN"
    assert report.line().endswith(f"age=1.0h ago (newest backup is {size} B, under 1 KiB)")


def test_newest_backup_of_exactly_1_kib_passes():
    report = assess(HOUR, size=1024)
    assert (report.status, report.warning) == ("PASS", None)


def test_newest_backup_under_half_the_previous_one_turns_pass_into_warn():
    report = assess(HOUR, size=40_000, previous_size=100_000)
    assert report.status == "WARN"
    assert report.line().endswith("(newest backup is 40% the size of the one before it)")


@pytest.mark.parametrize("size, previous_size", [(50_000, 100_000), (50_001, 100_001),
                                                 (100_000, 100_000), (90_000, 20_000)])
def test_newest_backup_of_at_least_half_the_previous_one_passes(size, previous_size):
    report = assess(HOUR, size=size, previous_size=previous_size)
    assert (report.status, report.warning) == ("PASS", None)


def test_shrink_percentage_is_rounded_down_so_it_never_reads_50():
    report = assess(HOUR, size=49_999, previous_size=100_000)
    assert report.warning == "newest backup is 49% the size of the one before it"


def test_shrunken_backup_keeps_warn_and_fail_as_they_are():
    assert assess(40 * HOUR, size=10, previous_size=100_000).status == "WARN"
    report = assess(80 * HOUR, size=10)
    assert report.status == "FAIL"
    assert report.line().endswith("age=80.0h ago (newest backup is 10 B, under 1 KiB)")


def test_newest_backup_dated_in_the_future_warns_instead_of_passing_forever():
    report = assess(-5 * HOUR)
    assert report.status == "WARN"
    assert "dated in the future" in report.line()


def test_worst_status_orders_fail_over_warn_over_pass():
    def reports(*statuses):
        return [tasks.Freshness(env, status) for env, status in zip(tasks.ENVS, statuses)]
    assert tasks.worst_status(reports("PASS", "PASS", "PASS")) == "PASS"
    assert tasks.worst_status(reports("PASS", "WARN", "PASS")) == "WARN"
    assert tasks.worst_status(reports("WARN", "FAIL", "PASS")) == "FAIL"
    assert tasks.worst_status(reports("FAIL", "WARN", "WARN")) == "FAIL"


# --- the task, in-process, at a frozen time -----------------------------------------------


@pytest.fixture
def root(tmp_path, monkeypatch):
    path = tmp_path / "backups"
    monkeypatch.setenv("CARABASE_BACKUP_DIR", str(path))
    return path


def run_status(now: datetime, *flags: str) -> int:
    """`backup.status` at `now`; its exit status."""
    with freeze_time(now):
        try:
            tasks.status(Context(), json="--json" in flags)
        except Exit as exit:
            return exit.code
    return 0


def test_status_exits_0_when_every_env_passes(root, capsys):
    for env in tasks.ENVS:
        write_backup(root / env, LATEST)
    assert run_status(LATEST + 7.2 * HOUR) == 0
    assert capsys.readouterr().out.splitlines() == [
        "[dev    ] PASS latest=2026-04-09T03:17:12Z age=7.2h ago",
        "[staging] PASS latest=2026-04-09T03:17:12Z age=7.2h ago",
        "[prod   ] PASS latest=2026-04-09T03:17:12Z age=7.2h ago",
    ]


def test_status_exits_1_when_the_worst_is_warn(root, capsys):
    write_backup(root / "dev", LATEST)
    write_backup(root / "staging", LATEST - 30 * HOUR)
    write_backup(root / "prod", LATEST)
    assert run_status(LATEST) == 1
    assert capsys.readouterr().out.splitlines()[1] == (
        "[staging] WARN latest=2026-04-07T21:17:12Z age=30.0h ago")


def test_status_exits_2_when_any_env_fails(root, capsys):
    write_backup(root / "dev", LATEST)
    write_backup(root / "staging", LATEST - 40 * HOUR)
    assert run_status(LATEST) == 2
    assert capsys.readouterr().out.splitlines()[2] == "[prod   ] FAIL no backups"


def test_status_judges_the_newest_backup_by_its_name_and_the_size_of_the_one_before(root, capsys):
    write_backup(root / "dev", LATEST - 48 * HOUR, size=80_000)
    write_backup(root / "dev", LATEST - 24 * HOUR, size=100_000)
    write_backup(root / "dev", LATEST, size=30_000)
    for env in ("staging", "prod"):
        write_backup(root / env, LATEST)
    assert run_status(LATEST + HOUR) == 1
    assert capsys.readouterr().out.splitlines()[0] == (
        "[dev    ] WARN latest=2026-04-09T03:17:12Z age=1.0h ago"
        " (newest backup is 30% the size of the one before it)")


def test_status_ignores_a_backup_in_progress_and_files_that_are_not_backups(root, capsys):
    write_backup(root / "dev", LATEST - 50 * HOUR)
    write_partial(root / "dev", LATEST)  # being written: not a backup yet
    (root / "dev" / "2026-04-09").joinpath("2026-04-09T031712.sql.gz").write_bytes(b"x" * 9000)
    (root / "dev" / "cron.log").write_text("backup dev: ...\n")
    assert run_status(LATEST) == 2  # staging and prod have none
    assert capsys.readouterr().out.splitlines()[0] == (
        "[dev    ] WARN latest=2026-04-07T01:17:12Z age=50.0h ago")


def test_status_json_is_one_object_with_the_documented_shape(root, capsys):
    dev = write_backup(root / "dev", LATEST)
    write_backup(root / "staging", LATEST - 55 * HOUR)
    assert run_status(LATEST + 3 * HOUR, "--json") == 2
    report = json.loads(capsys.readouterr().out)
    assert report["status"] == "FAIL"
    assert [env["env"] for env in report["envs"]] == ["dev", "staging", "prod"]
    for env in report["envs"]:
        assert {"env", "status", "latest", "age_hours", "path"} <= set(env)
    assert report["envs"][0] == {"env": "dev", "status": "PASS",
                                 "latest": "2026-04-09T03:17:12Z", "age_hours": 3.0,
                                 "path": str(dev), "warning": None}
    assert report["envs"][1]["status"] == "WARN"
    assert report["envs"][1]["age_hours"] == pytest.approx(58.0)
    assert report["envs"][2] == {"env": "prod", "status": "FAIL", "latest": None,
                                 "age_hours": None, "path": None, "warning": None}


def test_status_json_exits_0_with_status_pass_when_all_pass(root, capsys):
    for env in tasks.ENVS:
        write_backup(root / env, LATEST)
    assert run_status(LATEST + HOUR, "--json") == 0
    assert json.loads(capsys.readouterr().out)["status"] == "PASS"


def test_status_reports_an_env_directory_it_cannot_read_as_fail(root, capsys, monkeypatch):
    for env in tasks.ENVS:
        write_backup(root / env, LATEST)

    def unreadable(env):
        if env == "staging":
            raise PermissionError(13, "Permission denied")
        return real_list_backups(env)

    real_list_backups = tasks.list_backups
    monkeypatch.setattr(tasks, "list_backups", unreadable)
    assert run_status(LATEST) == 2
    assert capsys.readouterr().out.splitlines()[1] == (
        f"[staging] FAIL cannot read {root / 'staging'}: Permission denied")
