"""The drill's judgement, its record and when the schedule runs it (all pure or on tmp)."""
from __future__ import annotations

import json
import stat
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from helpers import drill
from helpers.errors import UserError

ITEM = ("public", "item")
NOTE = ("public", "note")
ODD = ("odd schema", 'odd "name"')
DUMP = {ITEM: 3, NOTE: 2000, ODD: 0}


def judge(dump=DUMP, restored=None, live=None, dump_lo=0, restored_lo=0, **kwargs):
    live = drill.Live({ITEM: 3.0, NOTE: 2000.0, ODD: -1.0}) if live is None else live
    return drill.judge(dump, dump_lo, dict(DUMP) if restored is None else restored,
                       restored_lo, live, **kwargs)


def test_restore_equal_to_the_dump_holding_every_live_table_passes():
    proof = judge()
    assert (proof.result, proof.tables, proof.rows, proof.problems) == ("PASS", 3, 2003, [])


def test_table_of_the_live_database_missing_from_the_dump_fails_naming_it():
    proof = judge(live=drill.Live({ITEM: 3, NOTE: 2000, ("public", "orders"): 0}))
    assert proof.result == "FAIL"
    assert proof.problems == ["1 tables of the live database missing from the backup:"
                              " public.orders"]


def test_restored_rows_other_than_the_dump_carries_fail():
    proof = judge(restored={**DUMP, NOTE: 1999})
    assert proof.result == "FAIL"
    assert proof.problems == ["1 tables restored other rows than the dump carries:"
                              " public.note holds 1,999 rows, the dump carries 2,000"]


def test_restored_table_without_copy_block_fails_only_if_it_holds_rows():
    assert judge(restored={**DUMP, ("public", "extra"): 0}).result == "PASS"
    assert judge(restored={**DUMP, ("public", "extra"): 5}).result == "FAIL"


def test_far_fewer_rows_than_a_big_estimate_warns_with_the_names():
    proof = judge(live=drill.Live({ITEM: 3, NOTE: 4001, ODD: 0}))
    assert proof.result == "WARN"
    assert proof.problems == ["far fewer rows than the live database estimates:"
                              " public.note (2,000 rows, live ~4,001)"]


@pytest.mark.parametrize("item_estimate, note_estimate", [(999.0, 2000.0), (3.0, 4000.0),
                                                         (-1.0, -1.0)])
def test_small_or_close_or_missing_estimates_do_not_warn(item_estimate, note_estimate):
    live = drill.Live({ITEM: item_estimate, NOTE: note_estimate, ODD: 0})
    assert judge(live=live).result == "PASS"


def test_dump_ending_inside_a_copy_block_fails():
    proof = judge(unfinished_table=ODD)
    assert proof.result == "FAIL"
    assert proof.problems == ['the dump ends inside the data of "odd schema"."odd ""name"""']


def test_unreachable_live_database_warns_that_nothing_was_compared():
    proof = drill.judge(DUMP, 0, DUMP, 0, None, live_unreachable="connection refused")
    assert (proof.result, proof.problems) == (
        "WARN", ["not compared with the live database: connection refused"])


def test_large_objects_must_all_arrive_and_be_in_the_dump():
    assert judge(dump_lo=2, restored_lo=2, live=drill.Live(dict(DUMP), 2)).result == "PASS"
    assert judge(dump_lo=2, restored_lo=1).result == "FAIL"
    proof = judge(live=drill.Live(dict(DUMP), 5))
    assert (proof.result, proof.problems) == (
        "FAIL", ["the live database has 5 large objects, the backup none"])
    assert judge(dump_lo=400, restored_lo=400, live=drill.Live(dict(DUMP), 1000)).result \
        == "WARN"


def test_many_missing_tables_are_summed_up_after_five_names():
    live = drill.Live({("public", f"t{n}"): 0 for n in range(8)})
    [problem] = judge(dump={}, restored={}, live=live).problems
    assert problem.endswith("public.t0, public.t1, public.t2, public.t3, public.t4 and 3 more")


def test_summary_line_has_the_documented_shape():
    proof = drill.Proof("PASS", 42, 1234567)
    assert drill.summary("prod", proof, Path("/b/x.sql.gz.enc"), 12.34) == (
        "drill prod: PASS /b/x.sql.gz.enc restored in 12.3s: 42 tables, 1,234,567 rows")
    failed = drill.Proof("FAIL", problems=["the backup is damaged: gzip stream truncated"])
    assert drill.summary("dev", failed, Path("/b/x"), None) == (
        "drill dev: FAIL /b/x: the backup is damaged: gzip stream truncated")


# --- the record -----------------------------------------------------------------------


@pytest.fixture
def root(tmp_path, monkeypatch):
    monkeypatch.setenv("CARABASE_BACKUP_DIR", str(tmp_path))
    (tmp_path / "dev").mkdir()
    return tmp_path


def test_record_is_private_json_with_the_documented_fields(root):
    finished = datetime(2026, 4, 12, 3, 25, 10, 500, tzinfo=timezone.utc)
    path = drill.record("dev", drill.Proof("WARN", 2, 7, ["far fewer"]), Path("/b/f"), finished,
                        3.456)
    assert path == root / "dev" / ".drill.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == {
        "schema": 1, "result": "WARN", "file": "/b/f", "finished": "2026-04-12T03:25:10Z",
        "seconds": 3.5, "tables": 2, "rows": 7, "problems": ["far fewer"]}
    assert drill.last_drill("dev")["result"] == "WARN"
    assert [p.name for p in (root / "dev").iterdir()] == [".drill.json"]  # no temporary left


def test_no_record_means_no_drill_and_a_broken_one_is_an_error(root):
    assert drill.last_drill("dev") is None
    (root / "dev" / ".drill.json").write_text('{"result": "maybe"}')
    with pytest.raises(ValueError, match="not a drill record"):
        drill.last_drill("dev")


# --- the schedule -----------------------------------------------------------------------

LOCAL = timezone(timedelta(hours=2))
SUNDAY_NIGHT = datetime(2026, 4, 12, 3, 17, tzinfo=LOCAL)  # a Sunday
assert SUNDAY_NIGHT.weekday() == 6


@pytest.mark.parametrize("schedule, last, now, result, due", [
    ("off", None, SUNDAY_NIGHT, None, False),
    ("nightly", SUNDAY_NIGHT - timedelta(hours=1), SUNDAY_NIGHT, "PASS", True),
    ("weekly", None, SUNDAY_NIGHT + timedelta(days=2), None, True),  # never drilled yet
    ("weekly", SUNDAY_NIGHT - timedelta(days=7), SUNDAY_NIGHT, "PASS", True),
    ("weekly", SUNDAY_NIGHT - timedelta(days=3), SUNDAY_NIGHT, "PASS", True),  # Sunday
    ("weekly", SUNDAY_NIGHT - timedelta(hours=2), SUNDAY_NIGHT, "PASS", False),  # today
    ("weekly", SUNDAY_NIGHT, SUNDAY_NIGHT + timedelta(days=1), "PASS", False),  # Monday
    ("weekly", SUNDAY_NIGHT, SUNDAY_NIGHT + timedelta(days=6), "PASS", False),
    ("weekly", SUNDAY_NIGHT - timedelta(days=1), SUNDAY_NIGHT + timedelta(days=6), "PASS",
     True),  # a week since the last (the machine slept through Sunday)
    ("weekly", SUNDAY_NIGHT, SUNDAY_NIGHT + timedelta(days=1), "FAIL", True),
])
def test_drill_is_due_weekly_on_sundays_nightly_always_off_never(schedule, last, now, result,
                                                                 due):
    assert drill.is_due(schedule, last, now, result) is due


def test_sunday_is_judged_in_local_time():
    saturday_utc = datetime(2026, 4, 11, 23, 30, tzinfo=timezone.utc)  # Sunday 01:30 at +2
    last = saturday_utc - timedelta(days=2)
    assert drill.is_due("weekly", last, saturday_utc.astimezone(LOCAL), "PASS") is True
    assert drill.is_due("weekly", last, saturday_utc, "PASS") is False


def test_drill_schedule_comes_from_carabase_drill_defaulting_to_weekly():
    assert drill.drill_schedule({}) == "weekly"
    assert drill.drill_schedule({"CARABASE_DRILL": "off"}) == "off"
    with pytest.raises(UserError, match="CARABASE_DRILL must be weekly, nightly or off"):
        drill.drill_schedule({"CARABASE_DRILL": "daily"})


def test_drill_due_reads_the_schedule_and_the_last_record(root):
    monday = SUNDAY_NIGHT + timedelta(days=1)
    assert drill.drill_due("dev", {}, monday) is True  # never drilled
    drill.record("dev", drill.Proof("PASS"), Path("/b/f"), SUNDAY_NIGHT, 1.0)
    assert drill.drill_due("dev", {}, monday) is False
    assert drill.drill_due("dev", {"CARABASE_DRILL": "nightly"}, monday) is True
    (root / "dev" / ".drill.json").write_text("garbage")
    assert drill.drill_due("dev", {}, monday) is True
    assert drill.drill_due("dev", {"CARABASE_DRILL": "off"}, monday) is False


AUTH = "authentication failed: wrong key, or the file is damaged or truncated"


def test_unreadable_backup_whose_key_opens_another_backup_is_damaged():
    assert drill.unreadable_problem(AUTH, Path("/b/older.sql.gz.enc"), True) == \
        f"the backup is damaged: {AUTH}"


def test_unreadable_backup_whose_key_opens_no_other_backup_blames_the_key():
    problem = drill.unreadable_problem(AUTH, Path("/b/older.sql.gz.enc"), False)

    assert problem.startswith("the key is wrong: it opens neither this backup nor"
                              " older.sql.gz.enc (check HOST_MASTER_KEY_FILE")


def test_unreadable_backup_with_nothing_to_compare_names_both_causes_and_blames_neither():
    assert drill.unreadable_problem(AUTH, None, False) == \
        f"the key does not open the backup: {AUTH}"


def test_a_damaged_gzip_stream_is_damage_whatever_the_other_backups_say():
    assert drill.unreadable_problem("gzip stream truncated", Path("/b/x"), False) == \
        "the backup is damaged: gzip stream truncated"
