"""helpers.pitr: the passphrase derivation, the config, reading pgBackRest's answers,
the --to window, and status's judgement."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from helpers import pitr
from helpers.errors import UserError

UTC = timezone.utc
NOW = datetime(2026, 4, 9, 12, 0, tzinfo=UTC)
SERVER = pitr.Server(Path("/var/lib/postgresql/15/main"), 5432, "/var/run/postgresql",
                     "postgres", "postgres", Path("/usr/lib/postgresql/15/bin"))
SETUP = pitr.Setup("prod", Path("/srv/pitr/prod"), SERVER)


def test_passphrase_is_64_hex_characters_that_differ_with_the_key():
    passphrase = pitr.cipher_passphrase(bytes(range(32)))
    assert len(passphrase) == 64 and int(passphrase, 16) >= 0
    assert passphrase != pitr.cipher_passphrase(bytes(32))


def test_passphrase_matches_an_rfc5869_style_derivation_done_by_hand():
    import hashlib
    import hmac
    key = bytes(range(32))
    prk = hmac.new(b"\0" * 32, key, hashlib.sha256).digest()
    okm = hmac.new(prk, pitr.PASSPHRASE_LABEL + b"\x01", hashlib.sha256).hexdigest()
    assert pitr.cipher_passphrase(key) == okm


def test_config_names_repo_cipher_async_archiving_retention_and_the_server():
    text = pitr.render_config(SETUP, "p" * 64, 14)
    lines = text.splitlines()
    for expected in ("repo1-path=/srv/pitr/prod/repo", "repo1-cipher-type=aes-256-cbc",
                     "repo1-cipher-pass=" + "p" * 64, "repo1-retention-full-type=time",
                     "repo1-retention-full=14", "archive-async=y",
                     "spool-path=/srv/pitr/prod/spool", "[prod]",
                     "pg1-path=/var/lib/postgresql/15/main", "pg1-port=5432",
                     "pg1-socket-path=/var/run/postgresql", "pg1-user=postgres"):
        assert expected in lines
    assert pitr.config_passphrase(text) == "p" * 64


def test_archive_command_quotes_the_config_path_and_never_holds_the_passphrase():
    spaced = pitr.Setup("dev", Path("/srv/my pitr/dev"), SERVER)
    command = pitr.archive_command(spaced)
    assert command == ("pgbackrest --config='/srv/my pitr/dev/pgbackrest.conf' --stanza=dev"
                       " archive-push %p")


def test_settings_to_change_is_empty_when_archiving_is_already_right():
    command = pitr.archive_command(SETUP)
    right = {"wal_level": "replica", "archive_mode": "on", "archive_command": command,
             "archive_library": "", "archive_timeout": "5min"}
    assert pitr.settings_to_change(right, command) == {}


def test_settings_to_change_names_each_wrong_setting():
    wrong = {"wal_level": "minimal", "archive_mode": "off", "archive_command": "",
             "archive_library": "", "archive_timeout": "0"}
    changes = pitr.settings_to_change(wrong, "cmd")
    assert changes == {"wal_level": "replica", "archive_mode": "on", "archive_command": "cmd",
                       "archive_timeout": "5min"}


INFO = json.dumps([{
    "name": "prod", "status": {"code": 0, "message": "ok"},
    "archive": [{"id": "15-1", "min": "000000010000000000000002",
                 "max": "000000010000000000000009"}],
    "backup": [
        {"label": "20260409-031700F_20260410-031700D", "type": "diff",
         "timestamp": {"start": 1775790000, "stop": 1775790010}},
        {"label": "20260409-031700F", "type": "full",
         "timestamp": {"start": 1775703420, "stop": 1775703430},
         "info": {"size": 300 * 2**20, "repository": {"size": 40 * 2**20}}},
    ]}])


def test_parse_info_orders_backups_and_finds_the_newest_archived_segment():
    info = pitr.parse_info(INFO, "prod")
    assert [backup.type for backup in info.backups] == ["full", "diff"]
    assert info.oldest.stopped == datetime.fromtimestamp(1775703430, UTC)
    assert info.archive_max == "000000010000000000000009"


def test_parse_info_of_another_stanza_is_an_error():
    with pytest.raises(ValueError, match="stanza dev"):
        pitr.parse_info(INFO, "dev")


@pytest.mark.parametrize("text, expected", [
    ("2026-04-09 14:30:00+00", datetime(2026, 4, 9, 14, 30, tzinfo=UTC)),
    ("2026-04-09T14:30:00Z", datetime(2026, 4, 9, 14, 30, tzinfo=UTC)),
    ("2026-04-09 16:30:00+02", datetime(2026, 4, 9, 14, 30, tzinfo=UTC)),
    ("2026-04-09 16:30:00.250+0200", datetime(2026, 4, 9, 14, 30, 0, 250000, tzinfo=UTC)),
])
def test_parse_target_reads_times_with_zones(text, expected):
    assert pitr.parse_target(text) == expected


def test_parse_target_takes_a_time_without_zone_as_local_time():
    zone = timezone(timedelta(hours=-5))
    assert pitr.parse_target("2026-04-09 09:30:00", zone) == \
        datetime(2026, 4, 9, 14, 30, tzinfo=UTC)


def test_parse_target_latest_is_none_and_garbage_is_one_line():
    assert pitr.parse_target("latest") is None
    with pytest.raises(UserError, match="--to must be latest or a time"):
        pitr.parse_target("yesterday")
    with pytest.raises(UserError, match="not a valid time"):
        pitr.parse_target("2026-02-30 10:00:00")


def test_target_text_is_utc_for_postgres():
    assert pitr.target_text(datetime(2026, 4, 9, 16, 30, tzinfo=timezone(timedelta(hours=2)))) \
        == "2026-04-09 14:30:00.000000+00"


def test_check_target_refuses_outside_the_window_and_says_the_window():
    info = pitr.parse_info(INFO, "prod")
    start = info.oldest.stopped
    end = start + timedelta(days=2)
    pitr.check_target(start + timedelta(hours=1), info, end)
    pitr.check_target(None, info, end)
    with pytest.raises(UserError, match="before the oldest base backup ended: the window is"):
        pitr.check_target(start - timedelta(seconds=1), info, end)
    with pytest.raises(UserError, match="after the newest archived WAL: the window is"):
        pitr.check_target(end + timedelta(seconds=1), info, end)
    with pytest.raises(UserError, match="after the newest archived WAL"):
        pitr.check_target(end, info, end)  # recovery needs a commit after the time


def test_check_target_without_any_base_backup_says_take_one():
    empty = pitr.Info(2, "no valid backups", (), None)
    with pytest.raises(UserError, match="pitr-backup"):
        pitr.check_target(None, empty, None)


VERIFY_DAMAGED = """\
2026-12-03 13:25:03.016 P00   INFO: verify command begin 2.45: --stanza=dev
2026-12-03 13:25:18.472 P01   INFO: invalid result 15-1/0000000100000000/0000000100000006-69a0.zst: [29] zst error: [-20] Data corruption detected
2026-12-03 13:25:18.959 P00   INFO: stanza: dev
                                    status: error
                                      archiveId: 15-1, total WAL checked: 7, total valid WAL: 6
2026-12-03 13:25:18.959 P00   INFO: verify command end: completed successfully (15950ms)
"""  # noqa: E501


def test_verify_problems_reads_status_error_even_from_a_successful_run():
    problems = pitr.verify_problems(VERIFY_DAMAGED)
    assert len(problems) == 1
    assert problems[0].startswith("invalid result 15-1/") and "Data corruption" in problems[0]


def test_verify_problems_of_a_clean_run_is_empty():
    clean = VERIFY_DAMAGED.replace("status: error", "status: ok").replace("invalid", "valid")
    assert pitr.verify_problems(clean) == []


OURS = "pgbackrest --config=/srv/pitr/dev/pgbackrest.conf --stanza=dev archive-push %p"


def facts(**changes) -> pitr.Facts:
    values = dict(newest_base=NOW - timedelta(days=1), last_archived=NOW - timedelta(minutes=5),
                  last_archived_wal="000000010000000000000009", last_failed=None,
                  failed_count=0, ready=0, oldest_ready=None, archive_mode="on",
                  archive_command=OURS, archive_library="", expected_command=OURS)
    values.update(changes)
    return pitr.Facts(**values)


def test_judge_passes_a_healthy_env_and_fills_the_json_object():
    verdict, data, warnings = pitr.judge(facts(), NOW)
    assert (verdict, warnings) == ("PASS", [])
    assert data["status"] == "PASS"
    assert data["newest_base_backup"] == "2026-04-08T12:00:00Z"
    assert data["last_archived"] == "2026-04-09T11:55:00Z"
    assert pitr.status_part(data) == " pitr=wal:2026-04-09T11:55:00Z,base:2026-04-08T12:00:00Z"


@pytest.mark.parametrize("changes, said", [
    ({"oldest_ready": NOW - timedelta(minutes=61), "ready": 3}, "archiving is 1.0h behind"),
    ({"last_failed": NOW - timedelta(minutes=1)}, "archiving is failing"),
    ({"newest_base": NOW - timedelta(days=8, minutes=1)}, "newest base backup is 8 days old"),
    ({"newest_base": None}, "no base backup"),
    ({"drill": {"result": "FAIL"}}, "last drill FAIL"),
    ({"archive_mode": "off"}, "archive_mode is off"),
    ({"archive_command": "/bin/true"}, "archive_command is not pgBackRest's"),
    ({"archive_library": "basic_archive"}, "archive_library is set (basic_archive)"),
])
def test_judge_warns(changes, said):
    verdict, data, warnings = pitr.judge(facts(**changes), NOW)
    assert verdict == "WARN" and data["status"] == "WARN"
    assert any(said in warning for warning in warnings), warnings


def test_judge_does_not_warn_at_the_thresholds_or_for_a_failure_since_recovered():
    verdict, _, _ = pitr.judge(facts(oldest_ready=NOW - timedelta(minutes=59), ready=1,
                                     newest_base=NOW - timedelta(days=7, hours=23),
                                     last_failed=NOW - timedelta(minutes=10)), NOW)
    assert verdict == "PASS"


def test_nightly_type_is_full_weekly_and_diff_otherwise():
    assert pitr.nightly_type(None, NOW) == "full"
    assert pitr.nightly_type(NOW - timedelta(days=7), NOW) == "full"
    assert pitr.nightly_type(NOW - timedelta(days=6), NOW) == "diff"


def test_drill_problems_name_missing_and_empty_tables_only():
    live = {("public", "a"): 10.0, ("public", "b"): 5.0, ("public", "new"): -1.0}
    restored = {("public", "a"): 8, ("public", "new"): 0}
    assert pitr.drill_problems(live, restored) == ["public.b is missing"]
    assert pitr.drill_problems({("public", "a"): 10.0}, {("public", "a"): 0}) == [
        "public.a is empty (live: about 10 rows)"]


def test_check_port_refuses_what_is_not_a_port():
    assert pitr.check_port("5433") == 5433
    for bad in ("80", "70000", "x"):
        with pytest.raises(UserError, match="--port"):
            pitr.check_port(bad)


def test_cluster_url_uses_the_socket_directory_and_the_port():
    assert pitr.cluster_url(SERVER, 5499, "carabase_prod") == \
        "postgresql://postgres@/carabase_prod?host=%2Fvar%2Frun%2Fpostgresql&port=5499"


def test_chosen_dir_is_under_the_backup_dir_or_carabase_pitr_repo(monkeypatch, tmp_path):
    monkeypatch.setenv("CARABASE_BACKUP_DIR", str(tmp_path))
    monkeypatch.delenv("CARABASE_PITR_REPO", raising=False)
    assert pitr.chosen_dir("dev") == tmp_path / "dev" / "pitr"
    monkeypatch.setenv("CARABASE_PITR_REPO", "/var/lib/carabase-pitr")
    assert pitr.chosen_dir("dev") == Path("/var/lib/carabase-pitr/dev")
    monkeypatch.setenv("CARABASE_PITR_REPO", "relative")
    with pytest.raises(UserError, match="absolute"):
        pitr.chosen_dir("dev")


def test_retention_days_defaults_to_14_and_refuses_nonsense(monkeypatch):
    monkeypatch.delenv("CARABASE_PITR_DAYS", raising=False)
    assert pitr.retention_days() == 14
    monkeypatch.setenv("CARABASE_PITR_DAYS", "0")
    with pytest.raises(UserError, match="CARABASE_PITR_DAYS"):
        pitr.retention_days()


def test_the_pointer_file_keeps_where_the_configuration_lives_outside_the_data_dir(
        monkeypatch, tmp_path):
    monkeypatch.setenv("CARABASE_BACKUP_DIR", str(tmp_path))
    debian = pitr.Server(SERVER.data_dir, 5432, "/var/run/postgresql", "postgres", "postgres",
                         SERVER.bindir, ("/etc/postgresql/15/main/pg_hba.conf",
                                         "/etc/postgresql/15/main/pg_ident.conf"))
    setup = pitr.Setup("prod", Path("/srv/pitr/prod"), debian)
    (tmp_path / "prod").mkdir()
    pitr.pointer_path("prod").write_text(pitr.pointer_json(setup))
    assert pitr.load_setup("prod") == setup
    assert pitr.load_setup("dev") is None


def test_an_unreadable_pointer_file_says_to_run_setup_again(monkeypatch, tmp_path):
    monkeypatch.setenv("CARABASE_BACKUP_DIR", str(tmp_path))
    (tmp_path / "dev").mkdir()
    pitr.pointer_path("dev").write_text("{not json")
    with pytest.raises(UserError, match=r"run invoke backup\.pitr-setup dev again"):
        pitr.load_setup("dev")


@pytest.mark.parametrize("text", ["0001-01-01 00:30:00+01", "9999-12-31 23:59:59-01"])
def test_a_time_that_leaves_the_calendar_in_utc_is_one_clear_line(text):
    with pytest.raises(UserError, match="out of range"):
        pitr.parse_target(text)


@pytest.mark.parametrize("stderr, said", [
    ('psql: error: connection to server on socket "/run/postgresql/.s.PGSQL.5499" failed:'
     ' FATAL:  Peer authentication failed for user "postgres"\n',
     'Peer authentication failed for user "postgres"'),
    ('psql: error: connection to server on socket "/tmp/.s.PGSQL.5499" failed: FATAL:  pg_hba.conf'
     ' rejects connection for host "[local]", user "postgres", database "postgres", no'
     ' encryption\n', 'pg_hba.conf rejects connection for host "[local]", user "postgres",'
     ' database "postgres", no encryption'),
    ("psql: error: connection to server failed: fe_sendauth: no password supplied\n",
     "no password supplied"),
    ('psql: error: connection to server failed: FATAL:  role "root" does not exist\n',
     'role "root" does not exist'),
])
def test_a_refused_login_is_told_apart_and_named(stderr, said):
    assert pitr.login_refused(stderr) == said


@pytest.mark.parametrize("stderr", [
    'psql: error: connection to server on socket "/tmp/.s.PGSQL.5499" failed: FATAL:  the'
    ' database system is starting up\n',
    'psql: error: connection to server on socket "/tmp/.s.PGSQL.5499" failed: No such file or'
    ' directory\n\tIs the server running locally and accepting connections on that socket?\n',
    "",
])
def test_a_cluster_still_starting_is_not_a_refusal(stderr):
    assert pitr.login_refused(stderr) is None


def test_parse_info_keeps_the_archive_that_holds_the_newest_segment():
    info = pitr.parse_info(INFO, "prod")
    assert (info.archive_id, info.archive_max) == ("15-1", "000000010000000000000009")


def test_segments_newest_first_leaves_out_what_is_not_a_segment():
    names = ["000000010000000000000009-" + "a" * 40 + ".zst",
             "00000001000000010000000A-" + "b" * 40 + ".zst",
             "000000020000000000000009-" + "c" * 40,
             "00000002.history", "000000010000000000000003.00000028.backup",
             "00000001000000000000000B.partial-" + "d" * 40 + ".zst"]
    assert pitr.segments_newest_first(names) == [
        "00000001000000010000000A", "000000020000000000000009", "000000010000000000000009"]


WALDUMP = """\
rmgr: Transaction len (rec/tot):     34/    34, tx:        735, lsn: 0/05000060, prev 0/05000028, desc: COMMIT 2026-04-09 14:30:00.250000 UTC
rmgr: Transaction len (rec/tot):     34/    34, tx:        736, lsn: 0/05000088, prev 0/05000060, desc: ABORT 2026-04-09 14:31:02.000001 UTC
rmgr: Transaction len (rec/tot):    130/   130, tx:          0, lsn: 0/050000B0, prev 0/05000088, desc: RUNNING_XACTS nextXid 737
pg_waldump: error: error in WAL record at 0/50000B0: invalid record length at 0/5000138
"""  # noqa: E501


def test_last_commit_is_the_time_of_the_last_commit_or_abort_pg_waldump_shows():
    assert pitr.last_commit(WALDUMP) == datetime(2026, 4, 9, 14, 31, 2, 1, tzinfo=UTC)
    assert pitr.last_commit(WALDUMP.splitlines()[2]) is None


def test_flush_state_says_archived_failed_or_still_waiting():
    since = NOW - timedelta(seconds=5)
    segment = "000000010000000000000009"
    waiting = {"last_archived_wal": "000000010000000000000008", "last_failed": None,
               "last_archived": (since - timedelta(minutes=1)).timestamp()}
    assert pitr.flush_state(waiting, segment, since) is None
    assert pitr.flush_state({**waiting, "last_archived_wal": segment}, segment, since) == \
        "archived"
    failed = {**waiting, "last_failed_wal": segment, "last_failed": NOW.timestamp()}
    assert pitr.flush_state(failed, segment, since) == "failed"
    # An older segment failing blocks ours: segments are archived in order.
    assert pitr.flush_state({**failed, "last_failed_wal": "000000010000000000000007"},
                            segment, since) == "failed"
    # A failure before we asked, or one followed by a success, is not an answer yet.
    assert pitr.flush_state({**failed, "last_failed": (since - timedelta(seconds=1))
                             .timestamp()}, segment, since) is None
    assert pitr.flush_state({**failed, "last_archived": NOW.timestamp() + 1}, segment,
                            since) is None


def test_the_note_of_a_restore_without_the_live_servers_wal_says_up_to_when():
    said = pitr.unarchived_note("the live server is not reachable (refused)",
                                datetime(2026, 4, 9, 14, 31, 2, tzinfo=UTC), "0000000100000009")
    assert said == ("the live server is not reachable (refused): restoring what is archived,"
                    " up to 2026-04-09T14:31:02Z (the newest archived commit); later writes"
                    " are not in it")
    assert "up to the end of WAL segment 0000000100000009" in pitr.unarchived_note(
        "down", None, "0000000100000009")


def test_the_drill_needs_room_for_the_newest_base_backups_database_and_its_wal(tmp_path):
    info = pitr.parse_info(INFO, "prod")  # the newest (diff) says nothing of its size
    full = pitr.parse_info(INFO.replace('"type": "diff"', '"type": "diff", "info": {"size":'
                                        ' 314572800}'), "prod")
    assert full.newest.size == 300 * 2**20
    assert pitr.drill_room_problem(tmp_path, 395 * 2**20, full) is None
    said = pitr.drill_room_problem(tmp_path, 100 * 2**20, full)
    assert said == (f"not enough room in {tmp_path} for the drill's cluster: 100 MiB free, the"
                    " restore needs about 394 MiB (the database was 300 MiB); free some or set"
                    " CARABASE_PITR_DRILL_DIR to a roomier directory")
    assert pitr.drill_room_problem(tmp_path, 63 * 2**20, info) is not None


def test_the_drill_restores_beside_the_repository_or_where_the_setting_says(monkeypatch):
    setup = pitr.Setup("prod", Path("/srv/pitr/prod"), SERVER)
    monkeypatch.delenv("CARABASE_PITR_DRILL_DIR", raising=False)
    assert pitr.drill_parent(setup) == Path("/srv/pitr/prod")
    monkeypatch.setenv("CARABASE_PITR_DRILL_DIR", "/srv/scratch")
    assert pitr.drill_parent(setup) == Path("/srv/scratch")
    monkeypatch.setenv("CARABASE_PITR_DRILL_DIR", "scratch")
    with pytest.raises(UserError, match="absolute"):
        pitr.drill_parent(setup)


def test_unknown_backups_are_the_remotes_labels_with_no_record_here_current_or_expired():
    remote = ["20200101-000000F/", "20200101-000000F_20200102-000000D/", "20260409-031700F/",
              "20260401-031700F/", "backup.history/"]
    local = ["20260409-031700F", "backup.info", "backup.info.copy", "backup.history",
             "20260401-031700F.manifest.gz"]  # expired here: in backup.history only
    assert pitr.unknown_backups(remote, local) == [
        "20200101-000000F", "20200101-000000F_20200102-000000D"]
    assert pitr.unknown_backups(remote[2:], local) == []
    assert pitr.unknown_backups([], local) == []


def test_the_note_of_a_copy_only_says_what_and_why():
    said = pitr.unknown_history_note("b2:bucket/dev/pitr", ["20200101-000000F",
                                                            "20200108-000000F"])
    assert said == ("b2:bucket/dev/pitr holds 2 base backup(s) this repository has no record"
                    " of (20200101-000000F to 20200108-000000F): copying only, deleting nothing"
                    " there; remove that history by hand once it is not needed")
