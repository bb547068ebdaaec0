"""helpers.offsite: the destination, which rclone, reading rclone's output, the record
status reads, the status part, and what a schedule may carry."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from helpers import offsite, retention
from helpers.errors import UserError
from helpers.freshness import Freshness

NOW = datetime(2026, 4, 9, 12, 0, 0, tzinfo=timezone.utc)
HOUR = timedelta(hours=1)


@pytest.fixture
def root(tmp_path, monkeypatch):
    monkeypatch.setenv("CARABASE_BACKUP_DIR", str(tmp_path / "backups"))
    (tmp_path / "backups" / "dev").mkdir(parents=True)
    return tmp_path / "backups"


# --- the destination ----------------------------------------------------------------------


@pytest.mark.parametrize("text, remote, env_root", [
    ("b2:my-bucket/carabase", "b2", "b2:my-bucket/carabase/dev"),
    ("b2:my-bucket/carabase/", "b2", "b2:my-bucket/carabase/dev"),
    ("icloud:", "icloud", "icloud:dev"),
    ("my s3.remote:bucket", "my s3.remote", "my s3.remote:bucket/dev"),
    ("/Volumes/NAS/carabase", None, "/Volumes/NAS/carabase/dev"),
])
def test_a_destination_is_an_rclone_remote_or_an_absolute_folder(monkeypatch, text, remote,
                                                                 env_root):
    monkeypatch.setenv("CARABASE_OFFSITE", text)
    dest = offsite.destination()
    assert dest.remote == remote and dest.env_root("dev") == env_root
    assert dest.backup_path("dev", "2026-04-09/x") == env_root + "/2026-04-09/x"


def test_no_destination_means_off_site_copies_are_off(monkeypatch):
    monkeypatch.delenv("CARABASE_OFFSITE", raising=False)
    assert offsite.destination() is None
    with pytest.raises(UserError, match=r"^push dev: CARABASE_OFFSITE is not set"):
        offsite.require_destination("push dev")


@pytest.mark.parametrize("text", ["relative/folder", ":s3,secret_access_key=XYZ:bucket",
                                  "s3,access_key_id=A:bucket"])
def test_a_relative_folder_or_inline_parameters_are_refused(monkeypatch, text):
    monkeypatch.setenv("CARABASE_OFFSITE", text)
    with pytest.raises(UserError) as caught:
        offsite.destination()
    assert "XYZ" not in caught.value.message and "=A" not in caught.value.message


@pytest.mark.parametrize("inside, refused", [("", True), ("/", True), ("/dev/x", True),
                                             ("-offsite", False)])
def test_a_folder_destination_in_the_local_tree_is_refused(monkeypatch, tmp_path, inside,
                                                           refused):
    monkeypatch.setenv("CARABASE_BACKUP_DIR", str(tmp_path / "tree"))
    monkeypatch.setenv("CARABASE_OFFSITE", str(tmp_path / "tree") + inside)
    if refused:
        with pytest.raises(UserError, match="is the local backup tree"):
            offsite.destination()
    else:  # a sibling whose name starts alike is elsewhere
        assert offsite.destination().text == str(tmp_path / "tree-offsite")


def test_user_rclone_settings_win_over_the_defaults(monkeypatch):
    monkeypatch.setenv("RCLONE_RETRIES", "9")
    added = offsite.rclone_environment()
    assert "RCLONE_RETRIES" not in added
    assert added["RCLONE_S3_NO_CHECK_BUCKET"] == "true"


# --- which rclone ---------------------------------------------------------------------------


def test_version_parsing():
    assert offsite.parse_version("rclone v1.75.2\n- os/version: debian") == (1, 75, 2)
    assert offsite.parse_version("rclone v1.76.0-beta.8123") == (1, 76, 0)
    assert offsite.parse_version("1.69") == (1, 69, 0)
    assert offsite.parse_version("nonsense") is None


def test_a_newer_rclone_on_path_wins_an_older_one_does_not():
    bundled, version = Path("/venv/bin/rclone"), "1.75.2"
    path = Path("/usr/local/bin/rclone")
    assert offsite.choose_rclone(bundled, version, path, "rclone v1.76.0") == path
    assert offsite.choose_rclone(bundled, version, path, "rclone v1.68.1") == bundled
    assert offsite.choose_rclone(bundled, version, path, None) == bundled  # did not answer
    assert offsite.choose_rclone(bundled, version, None, None) == bundled
    assert offsite.choose_rclone(None, "0", path, None) == path
    with pytest.raises(UserError, match="rclone not found"):
        offsite.choose_rclone(None, "0", None, None)


def test_the_bundled_rclone_is_found_and_is_the_pinned_version():
    program = offsite.bundled_rclone()
    assert program.name == "rclone" and program.is_file()
    assert offsite.parse_version(offsite.bundled_version()) >= (1, 69, 0)  # iclouddrive


# --- listings and logs ------------------------------------------------------------------------


def entry(path: str, size: int = 10, **hashes) -> dict:
    return {"Path": path, "Name": path.rsplit("/", 1)[-1], "Size": size, "IsDir": False,
            "Hashes": hashes}


def test_a_listing_keeps_only_backup_names_in_their_own_date_directory():
    listing = json.dumps([
        entry("2026-04-09/2026-04-09T031700.sql.gz.enc", 99, md5="ab"),
        entry("2026-04-01/2026-04-01T031700.sql.gz.enc"),
        entry("2026-04-08/2026-04-09T031700.sql.gz.enc"),  # filed under another day
        entry("2026-04-09T031700.sql.gz.enc"),  # not in a date directory
        entry("2026-04-09/2026-04-09T031700.sql.gz.enc.1a2b3c4d.partial"),  # rclone's
        entry("2026-04-09/notes.txt"),
        {"Path": "2026-04-07", "IsDir": True},
    ])
    found = offsite.parse_listing(listing)
    assert [backup.relative for backup in found] == [
        "2026-04-01/2026-04-01T031700.sql.gz.enc", "2026-04-09/2026-04-09T031700.sql.gz.enc"]
    assert found[-1].size == 99 and found[-1].hashes == {"md5": "ab"}
    assert found[-1].stamp == datetime(2026, 4, 9, 3, 17, tzinfo=timezone.utc)


def log(*entries: dict) -> str:
    return "\n".join(["2026/04/09 DEBUG : Setting --retries from environment",
                      *(json.dumps(item) for item in entries)])


def test_rclone_log_tells_what_was_checked_and_failed():
    stderr = log(
        {"level": "debug", "msg": "size = 10 OK", "object": "d/a.enc.1a2b3c4d.partial"},
        {"level": "debug", "msg": "md5 = 0123abcd OK", "object": "d/a.enc"},
        {"level": "info", "msg": "Copied (new)", "object": "d/a.enc"},
        {"level": "error", "msg": "Failed to copy: boom", "object": "d/c.enc"},
    )
    assert offsite.verified_objects(stderr) == {"d/a.enc": {"size", "md5"}}
    assert offsite.failed_objects(stderr) == {"d/c.enc": "Failed to copy: boom"}


def listed(*entries: tuple[str, int]) -> dict:
    return {path: offsite.RemoteBackup(None, path, size, {}) for path, size in entries}


def test_a_copy_counts_when_the_listing_after_it_shows_the_file_with_its_size():
    stderr = log(
        {"level": "debug", "msg": "md5 = 0123abcd OK", "object": "d/a.enc"},
        # Past the multi-thread cutoff rclone words it otherwise: the words do not matter.
        {"level": "info", "msg": "Multi-thread Copied (new)", "object": "d/b.enc"},
        {"level": "error", "msg": "Failed to copy: boom", "object": "d/c.enc"},
        {"level": "error", "msg": "Failed to copy: reset", "object": "d/e.enc"},  # retried
    )
    missing = ["d/a.enc", "d/b.enc", "d/c.enc", "d/d.enc", "d/e.enc", "d/f.enc"]
    sizes = dict.fromkeys(missing, 10)
    outcome = offsite.copy_outcome(
        missing, sizes, listed(("d/a.enc", 10), ("d/b.enc", 10), ("d/e.enc", 10),
                               ("d/f.enc", 7)), stderr)
    assert outcome.confirmed == {"d/a.enc": ["md5"], "d/b.enc": [], "d/e.enc": []}
    assert outcome.failed == {
        "d/c.enc": "Failed to copy: boom",
        "d/d.enc": "rclone did not copy it",
        "d/f.enc": "the off-site copy has 7 bytes, not 10: check both with backup.verify"}


def test_a_local_copy_whose_remote_twin_differs_in_size_is_never_replaced():
    remote = {"d/a.enc": offsite.RemoteBackup(None, "d/a.enc", 10, {}),
              "d/b.enc": offsite.RemoteBackup(None, "d/b.enc", 12, {})}
    assert list(offsite.size_mismatches({"d/a.enc": 10, "d/b.enc": 11, "d/c.enc": 5},
                                        remote)) == ["d/b.enc"]


@pytest.mark.parametrize("message, hint", [
    ("Failed to lsjson: operation error S3: ListObjectsV2, https response error StatusCode:"
     " 403, RequestID: , HostID: , api error SignatureDoesNotMatch: no",
     "the remote refused the credentials"),
    ("Failed to copy: ... dial tcp 127.0.0.1:9: connect: connection refused",
     "cannot reach the remote's endpoint"),
    ("Failed to copy: api error NoSuchBucket: The specified bucket does not exist",
     "the bucket does not exist"),
    ('Failed to create file system for "x:": didn\'t find section in config file ("x")',
     "rclone has no such remote"),
])
def test_a_failure_is_one_line_with_what_it_means(message, hint):
    line = offsite.explain_failure(log({"level": "notice", "msg": message}), 1)
    assert line.startswith(hint) and " (Failed to " in line and "\n" not in line
    assert "RequestID" not in line


def test_a_plain_rclone_log_line_loses_its_timestamp_and_a_long_one_keeps_its_end():
    stderr = ("2026/11/27 06:27:26 NOTICE: Failed to lsjson: " + "x" * 400
              + ": connect: connection refused\n")
    line = offsite.explain_failure(stderr, 5)
    assert line.startswith("cannot reach the remote's endpoint (Failed to lsjson: xxx")
    assert line.endswith("connect: connection refused)") and len(line) < 400


# --- the record -----------------------------------------------------------------------------


def test_the_record_is_0600_and_never_goes_back_to_an_older_backup(root, monkeypatch):
    monkeypatch.setenv("CARABASE_OFFSITE", "b2:bucket")
    dest = offsite.destination()
    offsite.write_record("dev", dest, NOW - HOUR, NOW)
    path = root / "dev" / ".offsite.json"
    assert path.stat().st_mode & 0o777 == 0o600
    offsite.write_record("dev", dest, NOW - 5 * HOUR, NOW + HOUR)
    record = json.loads(path.read_text())
    assert record == {"destination": "b2:bucket", "latest": "2026-04-09T11:00:00Z",
                      "pushed_at": "2026-04-09T13:00:00Z"}
    assert [p.name for p in (root / "dev").iterdir()] == [".offsite.json"]  # no temp file


def test_a_record_that_cannot_be_written_is_an_oserror_and_leaves_no_temporary_file(
        root, monkeypatch):
    monkeypatch.setenv("CARABASE_OFFSITE", "b2:bucket")
    (root / "dev" / ".offsite.json").mkdir(parents=True)  # in the way of the rename

    with pytest.raises(OSError):  # what push and backup report, as for their own files
        offsite.write_record("dev", offsite.destination(), NOW - HOUR, NOW)

    assert [p.name for p in (root / "dev").iterdir()] == [".offsite.json"]


def test_a_record_for_another_destination_says_nothing(root, monkeypatch):
    monkeypatch.setenv("CARABASE_OFFSITE", "b2:bucket")
    offsite.write_record("dev", offsite.destination(), NOW - HOUR, NOW)
    monkeypatch.setenv("CARABASE_OFFSITE", "b2:other")
    assert offsite.read_record("dev", offsite.destination()) is None


# --- status -----------------------------------------------------------------------------------


@pytest.mark.parametrize("age, status", [(29.9, "PASS"), (30, "WARN"), (71.9, "WARN"),
                                         (72, "FAIL")])
def test_the_newest_off_site_copy_is_judged_like_local_backups(root, monkeypatch, age,
                                                               status):
    monkeypatch.setenv("CARABASE_OFFSITE", "b2:bucket")
    dest = offsite.destination()
    offsite.write_record("dev", dest, NOW - age * HOUR, NOW)
    judged = offsite.offsite_freshness("dev", dest, NOW)
    assert judged.status == status
    assert judged.part().startswith(" offsite=" + (NOW - age * HOUR).strftime(
        "%Y-%m-%dT%H:%M:%SZ"))


def test_status_line_and_json_gain_the_offsite_part_and_its_verdict(root, monkeypatch):
    monkeypatch.setenv("CARABASE_OFFSITE", "b2:bucket")
    local = Freshness("dev", "PASS", NOW - 2 * HOUR, 2 * HOUR, Path("/x"))
    offsite.write_record("dev", offsite.destination(), NOW - 40 * HOUR, NOW - 39 * HOUR)
    report = offsite.with_offsite(local, NOW)
    assert report.status == "WARN"
    assert report.line() == ("[dev    ] WARN latest=2026-04-09T10:00:00Z age=2.0h ago"
                             " offsite=2026-04-07T20:00:00Z (newest off-site copy is 40.0h old)")
    assert report.as_json()["offsite"] == {
        "status": "WARN", "latest": "2026-04-07T20:00:00Z", "age_hours": 40.0,
        "pushed_at": "2026-04-07T21:00:00Z", "destination": "b2:bucket"}
    assert report.as_json()["status"] == "WARN"


def test_nothing_off_site_fails_and_an_unset_destination_changes_nothing(root, monkeypatch):
    local = Freshness("dev", "PASS", NOW - 2 * HOUR, 2 * HOUR, Path("/x"))
    monkeypatch.setenv("CARABASE_OFFSITE", "b2:bucket")
    nothing = offsite.with_offsite(local, NOW)
    assert nothing.status == "FAIL"
    assert nothing.line().endswith(" offsite=none (nothing off-site yet)")
    monkeypatch.delenv("CARABASE_OFFSITE")
    unset = offsite.with_offsite(local, NOW)
    assert unset.line() == local.line() and unset.status == "PASS"
    assert unset.as_json() == {**local.as_json(), "offsite": None}


# --- prune and fetch --------------------------------------------------------------------------


def test_prune_report_reads_like_the_local_prune():
    day = NOW - 40 * 24 * HOUR
    stamps = [day - 2 * HOUR, day - HOUR, day, NOW - HOUR]
    backups = [offsite.RemoteBackup(stamp, offsite.relative_path(stamp), 1, {})
               for stamp in stamps]
    decided = retention.plan(stamps, NOW)
    lines = offsite.prune_report("dev", backups, decided, dry_run=True)
    assert lines[:3] == [
        "would delete  2026-02-28/2026-02-28T100000.sql.gz.enc",
        "keep          2026-02-28/2026-02-28T110000.sql.gz.enc  monthly 2026-02",
        "keep          2026-02-28/2026-02-28T120000.sql.gz.enc  weekly 2026-W09"]
    assert lines[-1] == "dev off-site: would keep 3, would delete 1 (dry run: nothing deleted)"


def test_fetch_finds_latest_or_a_stamp_in_any_spelling():
    stamps = [NOW - 48 * HOUR, NOW - HOUR]
    backups = [offsite.RemoteBackup(stamp, offsite.relative_path(stamp), 1, {})
               for stamp in stamps]
    assert offsite.choose_backup(backups, "latest") is backups[-1]
    for spelling in ("2026-04-07T120000", "2026-04-07T120000.sql.gz.enc",
                     "2026-04-07T12:00:00Z"):
        assert offsite.choose_backup(backups, spelling) is backups[0]
    assert offsite.choose_backup(backups, "2026-04-07") is None
    assert offsite.choose_backup([], "latest") is None


# --- the schedule -------------------------------------------------------------------------------


def test_the_schedule_carries_the_config_path(tmp_path, monkeypatch):
    config = tmp_path / "rclone.conf"
    config.write_text("[b2]\ntype = b2\naccount = A\nkey = SECRET\n")
    config.chmod(0o600)
    monkeypatch.setenv("RCLONE_CONFIG", str(config))
    monkeypatch.setenv("CARABASE_OFFSITE", "b2:bucket/carabase")
    monkeypatch.setenv("CARABASE_OFFSITE_PRUNE", "0")
    assert offsite.schedule_variables("install-cron dev") == {
        "CARABASE_OFFSITE": "b2:bucket/carabase", "CARABASE_OFFSITE_PRUNE": "0",
        "RCLONE_CONFIG": str(config)}


def test_a_folder_destination_needs_no_config(monkeypatch):
    monkeypatch.setenv("CARABASE_OFFSITE", "/Volumes/NAS/carabase")
    monkeypatch.setenv("RCLONE_CONFIG", "/nonexistent.conf")
    assert offsite.schedule_variables("x") == {"CARABASE_OFFSITE": "/Volumes/NAS/carabase"}


def test_the_schedule_refuses_an_encrypted_config_without_a_password_command(tmp_path,
                                                                             monkeypatch):
    config = tmp_path / "rclone.conf"
    config.write_text(offsite.ENCRYPTED_CONFIG + "\nRCLONE_ENCRYPT_V0:\nabc\n")
    config.chmod(0o600)
    monkeypatch.setenv("RCLONE_CONFIG", str(config))
    monkeypatch.setenv("CARABASE_OFFSITE", "b2:bucket")
    monkeypatch.delenv("RCLONE_PASSWORD_COMMAND", raising=False)
    with pytest.raises(UserError, match="RCLONE_PASSWORD_COMMAND"):
        offsite.schedule_variables("x")
    monkeypatch.setenv("RCLONE_PASSWORD_COMMAND", "security find-generic-password -w -s r")
    assert offsite.schedule_variables("x")["RCLONE_PASSWORD_COMMAND"].startswith("security")


def test_the_schedule_refuses_a_missing_config_file(tmp_path, monkeypatch):
    monkeypatch.setenv("RCLONE_CONFIG", str(tmp_path / "missing.conf"))
    monkeypatch.setenv("CARABASE_OFFSITE", "b2:bucket")
    with pytest.raises(UserError, match="does not exist: define the remote 'b2'"):
        offsite.schedule_variables("x")


def test_the_schedule_refuses_a_config_that_does_not_define_the_remote(tmp_path, monkeypatch):
    config = tmp_path / "rclone.conf"
    config.write_text("[other]\ntype = local\n")
    config.chmod(0o600)
    monkeypatch.setenv("RCLONE_CONFIG", str(config))
    monkeypatch.setenv("CARABASE_OFFSITE", "b2:bucket")
    with pytest.raises(UserError, match="'b2' is defined nowhere, not in the config file"):
        offsite.schedule_variables("x")
