"""The freshness judgement: thresholds, line format, the shrunken-backup warning, JSON.

`assess_freshness(env, backups, now)` is pure; tests/unit/test_tasks_status.py runs the
task around it.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from helpers import freshness
from helpers.config import ENVS

LATEST = datetime(2026, 4, 9, 3, 17, 12, tzinfo=timezone.utc)
PATH = Path("/backups/dev/2026-04-09/2026-04-09T031712.sql.gz.enc")
HOUR = timedelta(hours=1)


def assess(age: timedelta, size: int = 50_000, previous_size: int | None = None,
           env: str = "dev") -> freshness.Freshness:
    backups = [(LATEST - timedelta(days=1), Path("previous"), previous_size)] \
        if previous_size is not None else []
    backups.append((LATEST, PATH, size))
    return freshness.assess_freshness(env, backups, LATEST + age)


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


def test_env_without_backups_fails_and_says_how_to_take_one():
    report = freshness.assess_freshness("prod", [], LATEST)
    assert report.status == "FAIL"
    assert report.line() == "[prod   ] FAIL no backups (take one: invoke backup.prod)"
    assert report.as_json() == {"env": "prod", "status": "FAIL", "latest": None,
                                "age_hours": None, "path": None, "warning": None,
                                "drill": None}


def test_json_of_a_backup_gives_time_age_in_hours_and_path():
    report = assess(timedelta(hours=7, minutes=12))
    assert report.as_json() == {"env": "dev", "status": "PASS",
                                "latest": "2026-04-09T03:17:12Z", "age_hours": 7.2,
                                "path": str(PATH), "warning": None, "drill": None}


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
    assert "dated in the future" in report.warning


def test_backup_dated_in_the_future_says_so_instead_of_a_negative_age():
    report = assess(-timedelta(hours=4462, minutes=42))
    assert report.line() == ("[dev    ] WARN latest=2026-04-09T03:17:12Z in the future"
                             " (check the clock)")
    assert report.as_json()["age_hours"] is None
    assert report.as_json()["warning"] == "newest backup is dated in the future: check the clock"


def test_backup_dated_in_the_future_keeps_its_other_warnings():
    report = assess(-HOUR, size=100)
    assert report.line().endswith(
        " in the future (check the clock; newest backup is 100 B, under 1 KiB)")


@pytest.mark.parametrize("age, hours", [
    (timedelta(seconds=1), 0.0),  # not 0.000277...
    (timedelta(minutes=12, seconds=59), 0.2),
    (timedelta(hours=29, minutes=59, seconds=59), 29.9),  # as the line: never 30.0 on a PASS
    (timedelta(hours=55, minutes=12, seconds=30), 55.2),
])
def test_json_age_is_rounded_down_to_a_tenth_of_an_hour_as_the_line_shows_it(age, hours):
    report = assess(age)
    assert report.as_json()["age_hours"] == hours
    assert report.line().endswith(f"age={hours:.1f}h ago")


def test_worst_status_orders_fail_over_warn_over_pass():
    def reports(*statuses):
        return [freshness.Freshness(env, status) for env, status in zip(ENVS, statuses)]
    assert freshness.worst_status(reports("PASS", "PASS", "PASS")) == "PASS"
    assert freshness.worst_status(reports("PASS", "WARN", "PASS")) == "WARN"
    assert freshness.worst_status(reports("WARN", "FAIL", "PASS")) == "FAIL"
    assert freshness.worst_status(reports("FAIL", "WARN", "WARN")) == "FAIL"


# --- the last restore drill ---------------------------------------------------------------

DRILL = {"schema": 1, "result": "PASS", "file": str(PATH), "finished": "2026-04-09T03:25:40Z",
         "seconds": 12.3, "tables": 42, "rows": 1234567, "problems": []}


def test_passed_drill_adds_its_stamp_and_keeps_pass():
    report = freshness.assess_freshness("dev", [(LATEST, PATH, 50_000)], LATEST + HOUR, DRILL)
    assert report.status == "PASS"
    assert report.line() == ("[dev    ] PASS latest=2026-04-09T03:17:12Z age=1.0h ago"
                             " drill=2026-04-09T03:25:40Z")
    assert report.as_json()["drill"] == DRILL


@pytest.mark.parametrize("result", ["WARN", "FAIL"])
def test_failed_drill_turns_pass_into_warn_and_says_why(result):
    drill = {**DRILL, "result": result, "problems": ["1 tables of the live database missing"
                                                     " from the backup: public.orders"]}
    report = freshness.assess_freshness("dev", [(LATEST, PATH, 50_000)], LATEST + HOUR, drill)
    assert report.status == "WARN"
    assert report.line().endswith(f"drill=2026-04-09T03:25:40Z (last drill {result}: 1 tables"
                                  " of the live database missing from the backup: public.orders)")


def test_failed_drill_keeps_fail_as_it_is():
    drill = {**DRILL, "result": "FAIL"}
    report = freshness.assess_freshness("dev", [(LATEST, PATH, 50_000)], LATEST + 80 * HOUR,
                                        drill)
    assert report.status == "FAIL"


def test_unreadable_drill_record_warns():
    report = freshness.assess_freshness("dev", [(LATEST, PATH, 50_000)], LATEST + HOUR,
                                        drill_unreadable="cannot read .drill.json: bad")
    assert (report.status, report.warning) == ("WARN", "cannot read .drill.json: bad")
