"""backup.prune and backup.status through the real invoke command line.

The subprocess runs on the real clock, so the fake backups are named relative to
now, and never within minutes of a threshold (30 h, 72 h, 7 days).
"""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from helpers import retention
from tests.backup_tree import files_under, write_backup, write_partial
from tests.support import run_invoke

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)


def ago(delta: timedelta) -> datetime:
    """A backup's stamp: `delta` before now, to the second as backup names are."""
    return (datetime.now(timezone.utc) - delta).replace(microsecond=0)


# --- status ---------------------------------------------------------------------------


def test_status_of_an_empty_backup_directory_fails_every_env(environ):
    result = run_invoke("backup.status", env=environ)
    assert result.returncode == 2
    assert result.stdout.splitlines() == [
        "[dev    ] FAIL no backups (take one: invoke backup.dev)",
        "[staging] FAIL no backups (take one: invoke backup.staging)",
        "[prod   ] FAIL no backups (take one: invoke backup.prod)",
    ]
    assert result.stderr == ""


def test_status_passes_with_fresh_backups_everywhere(environ, backup_dir):
    stamp = ago(3 * HOUR)
    for env in ("dev", "staging", "prod"):
        write_backup(backup_dir / env, stamp)
    result = run_invoke("backup.status", env=environ)
    assert result.returncode == 0, result.stderr
    zulu = stamp.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert result.stdout.splitlines() == [
        f"[dev    ] PASS latest={zulu} age=3.0h ago",
        f"[staging] PASS latest={zulu} age=3.0h ago",
        f"[prod   ] PASS latest={zulu} age=3.0h ago",
    ]


def test_status_warns_with_exit_1_for_a_stale_or_shrunken_backup(environ, backup_dir):
    write_backup(backup_dir / "dev", ago(3 * HOUR))
    write_backup(backup_dir / "staging", ago(40 * HOUR))
    write_backup(backup_dir / "prod", ago(27 * HOUR), size=200_000)
    write_backup(backup_dir / "prod", ago(3 * HOUR), size=700)
    result = run_invoke("backup.status", env=environ)
    assert result.returncode == 1, result.stderr
    dev, staging, prod = result.stdout.splitlines()
    assert dev.startswith("[dev    ] PASS ")
    assert staging.startswith("[staging] WARN ") and staging.endswith("age=40.0h ago")
    assert prod.startswith("[prod   ] WARN ")
    assert prod.endswith("age=3.0h ago (newest backup is 700 B, under 1 KiB)")


def test_status_fails_with_exit_2_when_an_env_is_72_hours_old(environ, backup_dir):
    write_backup(backup_dir / "dev", ago(3 * HOUR))
    write_backup(backup_dir / "staging", ago(40 * HOUR))
    write_backup(backup_dir / "prod", ago(80 * HOUR))
    result = run_invoke("backup.status", env=environ)
    assert result.returncode == 2, result.stderr
    assert result.stdout.splitlines()[2].startswith("[prod   ] FAIL latest=")


def test_status_json_prints_one_object_for_a_health_endpoint(environ, backup_dir):
    stamp = ago(5 * HOUR)
    dev = write_backup(backup_dir / "dev", stamp)
    write_backup(backup_dir / "staging", ago(50 * HOUR))
    result = run_invoke("backup.status", "--json", env=environ)
    assert result.returncode == 2, result.stderr
    report = json.loads(result.stdout)
    assert report["schema"] == 1
    assert report["status"] == "FAIL"
    dev_report, staging_report, prod_report = report["envs"]
    assert dev_report["env"] == "dev" and dev_report["status"] == "PASS"
    assert dev_report["latest"] == stamp.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert dev_report["path"] == str(dev)
    assert isinstance(dev_report["age_hours"], float)
    assert 5.0 <= dev_report["age_hours"] < 5.1
    assert staging_report["status"] == "WARN"
    assert {key: prod_report[key] for key in ("env", "status", "latest", "age_hours", "path")} \
        == {"env": "prod", "status": "FAIL", "latest": None, "age_hours": None, "path": None}


def test_status_counts_no_symlink_named_like_a_fresh_backup(environ, backup_dir, tmp_path):
    old = write_backup(backup_dir / "dev", ago(100 * HOUR))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_bytes(b"\0" * 4096)
    fresh = backup_dir / "dev" / retention.date_dir_name(ago(HOUR)) / \
        retention.backup_name(ago(HOUR))
    fresh.parent.mkdir(exist_ok=True)
    fresh.symlink_to(elsewhere)
    result = run_invoke("backup.status", "--json", env={**environ, "CARABASE_ENVS": "dev"})
    assert result.returncode == 2
    dev = json.loads(result.stdout)["envs"][0]
    assert dev["status"] == "FAIL" and dev["path"] == str(old)
    assert result.stderr.splitlines() == [
        f"status: {fresh} has a backup's name but is a symbolic link: not counted as a"
        " backup"]


def test_status_needs_no_key(environ, backup_dir):
    assert "HOST_MASTER_KEY" not in environ and "HOST_MASTER_KEY_FILE" not in environ
    for env in ("dev", "staging", "prod"):
        write_backup(backup_dir / env, ago(HOUR))
    assert run_invoke("backup.status", env=environ).returncode == 0


# --- prune ----------------------------------------------------------------------------


@pytest.fixture
def dev_tree(backup_dir):
    """120 nightly backups of dev (the newest 1 h old), a backup in progress, and
    files that are not backups, some beside backups that prune will delete."""
    env_root = backup_dir / "dev"
    stamps = [ago(night * DAY + HOUR) for night in range(120)]
    for stamp in stamps:
        write_backup(env_root, stamp)
    oldest_day = env_root / retention.date_dir_name(stamps[-1])
    strangers = [
        oldest_day / "notes.txt",
        oldest_day / (retention.backup_name(stamps[-1]) + ".bak"),
        env_root / "cron.log",
        env_root / "keep-me" / retention.backup_name(stamps[-1]).replace(".enc", ""),
    ]
    for path in strangers:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("not a backup\n")
    return env_root, stamps, strangers


def test_prune_dry_run_deletes_nothing_and_lists_every_backup(environ, backup_dir, dev_tree):
    env_root, stamps, _ = dev_tree
    partial = write_partial(env_root, ago(HOUR // 2))  # a backup being written
    before = files_under(backup_dir)
    result = run_invoke("backup.prune", "dev", "--dry-run", env=environ)
    assert result.returncode == 0, result.stderr
    assert files_under(backup_dir) == before
    assert partial.exists()
    lines = result.stdout.splitlines()
    assert len(lines) == len(stamps) + 1
    assert sum(line.startswith("would delete  ") for line in lines) == len(stamps) - 14
    assert sum(line.startswith("keep  ") for line in lines) == 14
    assert lines[-1] == "dev: would keep 14, would delete 106 (dry run: nothing deleted)"


def test_prune_applies_retention_and_leaves_everything_else_alone(environ, backup_dir, dev_tree):
    env_root, stamps, strangers = dev_tree
    partial = write_partial(env_root, ago(30 * DAY))  # left by a killed backup
    expected = retention.plan(stamps, datetime.now(timezone.utc))
    result = run_invoke("backup.prune", "dev", env=environ)
    assert result.returncode == 0, result.stderr
    remaining = {stamp for stamp, _ in _backups(env_root)}
    assert remaining == expected.keep
    assert len(remaining) == 14
    assert all(path.exists() for path in strangers)
    assert not partial.exists()
    # Date directories it emptied are gone; the one with strangers in it stays.
    days = {path.name for path in env_root.iterdir() if path.is_dir()}
    assert days == {retention.date_dir_name(stamp) for stamp in remaining} | {
        strangers[0].parent.name, "keep-me"}
    lines = result.stdout.splitlines()
    assert lines[-1] == "dev: kept 14, deleted 106"
    newest = stamps[0]
    newest_label = f"{retention.date_dir_name(newest)}/{retention.backup_name(newest)}"
    assert f"keep    {newest_label}  daily, newest" in lines
    # A second run finds nothing more to delete.
    again = run_invoke("backup.prune", "dev", env=environ)
    assert again.stdout.splitlines()[-1] == "dev: kept 14, deleted 0"


def test_prune_keeps_the_real_backup_of_a_day_over_a_symlink_named_like_a_later_one(
        environ, backup_dir, tmp_path):
    passwd = tmp_path / "passwd"
    passwd.write_text("root:x:0:0:root:/root:/bin/bash\n")
    day = ago(100 * DAY).replace(hour=1)
    genuine = write_backup(backup_dir / "dev", day)
    impostor = genuine.with_name(retention.backup_name(day + HOUR))
    impostor.symlink_to(passwd)  # newer that day: it would be the month's keeper
    newest = write_backup(backup_dir / "dev", ago(HOUR))
    result = run_invoke("backup.prune", "dev", env=environ)
    assert result.returncode == 0, result.stderr
    assert genuine.exists() and newest.exists()
    assert impostor.is_symlink() and passwd.read_text().startswith("root:")
    label = f"{impostor.parent.name}/{impostor.name}"
    assert f"skip    {label}  a symbolic link, not a backup: left alone" in result.stdout
    assert result.stdout.splitlines()[-1] == "dev: kept 2, deleted 0"


def test_prune_of_an_unknown_env_fails_with_one_clear_line(environ, backup_dir):
    result = run_invoke("backup.prune", "qa", env=environ)
    assert result.returncode == 1
    assert result.stderr == "unknown env 'qa': expected one of dev, staging, prod\n"
    assert not backup_dir.exists()


def test_prune_of_an_env_without_backups_succeeds_and_creates_nothing(environ, backup_dir):
    result = run_invoke("backup.prune", "prod", env=environ)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("prod: nothing to prune")
    assert not backup_dir.exists()


def test_prune_needs_no_key(environ, dev_tree):
    assert "HOST_MASTER_KEY" not in environ and "HOST_MASTER_KEY_FILE" not in environ
    result = run_invoke("backup.prune", "dev", env=environ)
    assert (result.returncode, result.stderr) == (0, "")


def _backups(env_root):
    for path in env_root.glob("*/*"):
        stamp = retention.parse_backup_name(path.name)
        if stamp is not None:
            yield stamp, path
