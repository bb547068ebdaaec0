"""helpers.retention: backup names <-> UTC times, and plan() rule by rule, at its edges."""
from __future__ import annotations

import random
from collections import Counter
from datetime import datetime, timedelta, timezone

import pytest

from helpers import retention
from helpers.retention import plan

DAY = timedelta(days=1)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)


def nightly(first: datetime, last: datetime) -> list[datetime]:
    """One stamp a day at first's time of day, from first to last inclusive."""
    stamps = []
    while first <= last:
        stamps.append(first)
        first += DAY
    return stamps


def kinds(decided: retention.Plan) -> Counter:
    """How many kept stamps each rule kept first: daily, weekly, monthly, ..."""
    return Counter(reasons[0].split()[0] for reasons in decided.reasons.values())


# --- names ----------------------------------------------------------------------------


def test_backup_name_round_trips_to_the_same_utc_second():
    stamp = utc(2026, 4, 9, 3, 17, 12)
    name = retention.backup_name(stamp)
    assert name == "2026-04-09T031712.sql.gz.enc"
    assert retention.date_dir_name(stamp) == "2026-04-09"
    assert retention.parse_backup_name(name) == stamp


def test_backup_name_of_a_non_utc_time_is_its_utc_time():
    evening_in_new_york = datetime(2026, 4, 8, 23, 30, tzinfo=timezone(timedelta(hours=-4)))
    assert retention.backup_name(evening_in_new_york) == "2026-04-09T033000.sql.gz.enc"
    assert retention.date_dir_name(evening_in_new_york) == "2026-04-09"


@pytest.mark.parametrize("name", [
    "2026-04-09T031712.sql.gz",  # no .enc
    "2026-04-09T031712.sql.gz.enc.bak",
    "2026-04-09 031712.sql.gz.enc",
    "2026-13-09T031712.sql.gz.enc",  # month 13
    "2023-02-29T031712.sql.gz.enc",  # 2023 has no leap day
    ".2026-04-09T031712.sql.gz.enc.partial",  # a backup being written
    "notes.txt",
    "cron.log",
])
def test_parse_backup_name_rejects_what_is_not_a_backup_name(name):
    assert retention.parse_backup_name(name) is None


def test_leap_day_name_parses():
    assert retention.parse_backup_name("2024-02-29T031700.sql.gz.enc") == utc(2024, 2, 29, 3, 17)


def test_partial_name_is_recognised_and_never_parses_as_a_backup():
    name = retention.partial_name(utc(2026, 4, 9, 3, 17))
    assert retention.is_partial_name(name)
    assert retention.parse_backup_name(name) is None
    assert not retention.is_partial_name("2026-04-09T031700.sql.gz.enc")


# --- plan: shape ----------------------------------------------------------------------


def test_plan_of_no_backups_keeps_and_deletes_nothing():
    decided = plan([], utc(2026, 4, 9))
    assert decided.keep == frozenset() and decided.delete == frozenset()


@pytest.mark.parametrize("age", [timedelta(0), timedelta(days=3), timedelta(days=400)])
def test_single_backup_is_always_kept(age):
    now = utc(2026, 4, 9, 12)
    decided = plan([now - age], now)
    assert decided.keep == {now - age}
    assert "newest" in decided.reasons[now - age]


@pytest.mark.parametrize("seed", range(20))
def test_keep_and_delete_partition_the_input_and_every_keeper_has_a_reason(seed):
    rng = random.Random(seed)
    now = utc(2026, 4, 9, 12)
    stamps = {now - timedelta(seconds=rng.randrange(-3 * 86400, 500 * 86400))
              for _ in range(rng.randrange(1, 300))}
    decided = plan(stamps, now)
    assert decided.keep | decided.delete == stamps
    assert not decided.keep & decided.delete
    assert set(decided.reasons) == decided.keep
    assert all(decided.why(stamp) for stamp in decided.keep)
    assert all(decided.why(stamp) == "" for stamp in decided.delete)


@pytest.mark.parametrize("seed", range(20))
def test_planning_the_kept_set_again_deletes_nothing(seed):
    rng = random.Random(seed)
    now = utc(2026, 4, 9, 12) + timedelta(seconds=rng.randrange(86400 * 7))
    stamps = {now - timedelta(seconds=rng.randrange(-86400, 400 * 86400))
              for _ in range(rng.randrange(1, 300))}
    first = plan(stamps, now)
    again = plan(first.keep, now)
    assert again.delete == frozenset()
    assert again.reasons == first.reasons


def test_naive_datetimes_are_refused():
    with pytest.raises(ValueError, match="time zone"):
        plan([datetime(2026, 4, 1)], utc(2026, 4, 9))
    with pytest.raises(ValueError, match="time zone"):
        plan([utc(2026, 4, 1)], datetime(2026, 4, 9))


def test_buckets_are_utc_whatever_zone_the_stamps_carry():
    # 23:30 on 31 March at UTC-2 is 01:30 on 1 April UTC: April's month, not March's.
    minus_two = timezone(timedelta(hours=-2))
    april_in_utc = datetime(2026, 3, 31, 23, 30, tzinfo=minus_two)
    weekly = [utc(2026, 4, day) for day in (6, 13, 20, 27)]  # W15..W18, Mondays
    decided = plan([april_in_utc, utc(2026, 3, 15), *weekly], utc(2026, 5, 20))
    assert decided.reasons[april_in_utc] == ("monthly 2026-04",)
    assert decided.reasons[utc(2026, 3, 15)] == ("monthly 2026-03",)


# --- rule 1: the last 7 days ------------------------------------------------------------


def test_backup_exactly_seven_days_old_is_no_longer_daily():
    now = utc(2026, 4, 9, 3, 17)  # a Thursday, ISO week 2026-W14 began on 30 March
    seven_days = now - 7 * DAY
    day_before = now - 8 * DAY
    decided = plan([day_before, seven_days, now], now)
    # Older than the window: it competes for its week, and wins as the week's newest.
    assert decided.reasons[seven_days] == ("weekly 2026-W14",)
    # ...and the day before lost its week to it (it is only kept as April's monthly).
    assert decided.reasons[day_before] == ("monthly 2026-04",)


def test_backup_a_microsecond_under_seven_days_old_is_daily():
    now = utc(2026, 4, 9, 3, 17)
    just_inside = now - 7 * DAY + timedelta(microseconds=1)
    day_before = now - 8 * DAY
    decided = plan([day_before, just_inside, now], now)
    assert decided.reasons[just_inside] == ("daily",)
    # Now the day before is the newest of its week among the older ones.
    assert decided.reasons[day_before] == ("weekly 2026-W14",)
    assert decided.delete == frozenset()


def test_every_backup_of_the_last_seven_days_is_kept_however_many():
    now = utc(2026, 4, 9, 12)
    hourly = [now - timedelta(hours=hours) for hours in range(7 * 24)]
    decided = plan(hourly, now)
    assert decided.keep == set(hourly)
    assert kinds(decided) == {"daily": 7 * 24}


# --- rule 2: 4 weeks ----------------------------------------------------------------------


def test_weekly_keeps_the_newest_of_each_of_the_four_most_recent_weeks_that_have_one():
    now = utc(2026, 6, 1)
    # Backups in every other ISO week: the empty weeks between do not use up a slot.
    mondays = [utc(2026, 1, 5) + 14 * DAY * n for n in range(10)]  # W02, W04, ..., W20
    tuesdays = [monday + DAY for monday in mondays]
    decided = plan([*mondays, *tuesdays], now)
    weekly = {stamp: reasons for stamp, reasons in decided.reasons.items()
              if reasons[0].startswith("weekly")}
    assert weekly == {
        tuesdays[-1]: ("weekly 2026-W20", "newest"),
        tuesdays[-2]: ("weekly 2026-W18",),
        tuesdays[-3]: ("weekly 2026-W16",),
        tuesdays[-4]: ("weekly 2026-W14",),
    }


def test_iso_week_53_runs_across_new_year_as_one_week():
    # 2020-W53 is Monday 28 December 2020 to Sunday 3 January 2021.
    stamps = nightly(utc(2020, 12, 1, 3, 17), utc(2021, 1, 3, 3, 17))
    decided = plan(stamps, utc(2021, 1, 20))
    assert decided.reasons[utc(2021, 1, 3, 3, 17)] == ("weekly 2020-W53", "newest")
    assert decided.reasons[utc(2020, 12, 27, 3, 17)] == ("weekly 2020-W52",)
    assert decided.reasons[utc(2020, 12, 20, 3, 17)] == ("weekly 2020-W51",)
    assert decided.reasons[utc(2020, 12, 13, 3, 17)] == ("weekly 2020-W50",)
    assert decided.reasons[utc(2020, 12, 12, 3, 17)] == ("monthly 2020-12",)
    # 28 December to 2 January share a week with 3 January, which is newer.
    assert set(nightly(utc(2020, 12, 28, 3, 17), utc(2021, 1, 2, 3, 17))) <= decided.delete
    assert len(decided.keep) == 5


def test_week_52_is_followed_by_week_1_that_starts_in_december():
    # 2025 has 52 ISO weeks; Monday 29 December 2025 begins 2026-W01.
    sunday_w52 = utc(2025, 12, 28, 3, 17)
    wednesday_w01 = utc(2025, 12, 31, 3, 17)
    thursday_w01 = utc(2026, 1, 1, 3, 17)
    decided = plan([sunday_w52, wednesday_w01, thursday_w01], utc(2026, 2, 1))
    assert decided.reasons[thursday_w01] == ("weekly 2026-W01", "newest")
    assert decided.reasons[sunday_w52] == ("weekly 2025-W52",)
    assert decided.delete == {wednesday_w01}


# --- rule 3: 3 months ---------------------------------------------------------------------


def test_monthly_only_considers_backups_older_than_every_weekly_keeper():
    now = utc(2026, 4, 30)
    sunday_w13 = utc(2026, 3, 29)
    monday_w14 = utc(2026, 3, 30)  # March's newest, but newer than the oldest weekly
    weekly = [sunday_w13, utc(2026, 4, 5), utc(2026, 4, 12), utc(2026, 4, 19)]
    decided = plan([monday_w14, *weekly], now)
    assert decided.keep == set(weekly)
    assert decided.delete == {monday_w14}


def test_monthly_keeps_the_newest_of_each_of_three_months_behind_the_weeks():
    weekly = [utc(2024, 3, 18), utc(2024, 3, 25), utc(2024, 4, 1), utc(2024, 4, 8)]
    candidates = {
        utc(2023, 12, 31, 23, 59, 59): None,  # a fourth month: too old
        utc(2024, 1, 15): None,
        utc(2024, 1, 31, 23, 59, 59): "monthly 2024-01",  # last second of January
        utc(2024, 2, 1, 0, 0, 0): None,  # first second of February
        utc(2024, 2, 28, 12): None,
        utc(2024, 2, 29, 23, 59, 59): "monthly 2024-02",  # leap day, last second
        utc(2024, 3, 1, 0, 0, 0): "monthly 2024-03",  # March's only one behind the weeks
    }
    decided = plan([*weekly, *candidates], utc(2024, 4, 20))
    for stamp, reason in candidates.items():
        assert decided.reasons.get(stamp, (None,))[0] == reason, stamp
    assert decided.keep == set(weekly) | {s for s, r in candidates.items() if r}


def test_months_without_backups_do_not_use_up_a_slot():
    weekly = [utc(2026, 6, day) for day in (1, 8, 15, 22)]
    old = [utc(2025, 9, 10), utc(2025, 12, 10), utc(2026, 3, 10), utc(2025, 6, 10)]
    decided = plan([*weekly, *old], utc(2026, 7, 15))
    assert {decided.reasons[s][0] for s in old if s in decided.keep} == {
        "monthly 2026-03", "monthly 2025-12", "monthly 2025-09"}
    assert decided.delete == {utc(2025, 6, 10)}


# --- rule 4: newest and future ------------------------------------------------------------


def test_future_dated_backups_are_kept_as_future_not_daily():
    now = utc(2026, 4, 9, 12)
    tomorrow, next_year = now + DAY, now + 365 * DAY
    decided = plan([now - 30 * DAY, now, tomorrow, next_year], now)
    assert decided.reasons[tomorrow] == ("future",)
    assert decided.reasons[next_year] == ("newest", "future")
    assert decided.reasons[now] == ("daily",)
    assert decided.delete == frozenset()


def test_future_dated_backup_does_not_shield_the_past_from_retention():
    now = utc(2026, 4, 9, 12)
    nights = nightly(utc(2025, 1, 1, 3, 17), utc(2026, 4, 9, 3, 17))
    with_future = plan([*nights, now + 1000 * DAY], now)
    without = plan(nights, now)
    assert with_future.delete == without.delete


def test_backups_that_stopped_six_months_ago_keep_four_weekly_and_three_monthly():
    last_night = utc(2025, 10, 1, 3, 17)  # then the backups stopped
    nights = nightly(last_night - 365 * DAY, last_night)
    now = last_night + 182 * DAY
    decided = plan(nights, now)
    assert last_night in decided.keep
    assert decided.reasons[last_night] == ("weekly 2025-W40", "newest")
    assert kinds(decided) == {"weekly": 4, "monthly": 3}
    # Pruning again and again while the env stays stalled never loses another backup.
    for months_later in range(1, 13):
        assert plan(decided.keep, now + 30 * DAY * months_later).delete == frozenset()


# --- a year of nightly backups --------------------------------------------------------


def test_nightly_backup_and_prune_for_400_nights_settles_at_7_daily_4_weekly_3_monthly():
    # Starts on New Year's Day of a leap year; crosses 29 February and 2025-W01,
    # which begins on 30 December 2024.
    first_night = utc(2024, 1, 1, 3, 17)
    on_disk: set[datetime] = set()
    counts = []
    for night in range(400):
        now = first_night + night * DAY
        on_disk.add(now)  # the backup of the night, then the prune
        decided = plan(on_disk, now + timedelta(seconds=40))
        on_disk = set(decided.keep)
        counts.append(kinds(decided))
    settled = {"daily": 7, "weekly": 4, "monthly": 3}
    assert counts[-1] == settled
    assert len(on_disk) == 14
    # Settled long before the end, and stays settled night after night.
    assert all(count == settled for count in counts[120:])
    assert min(on_disk) > now - 100 * DAY  # about three months back, never more
