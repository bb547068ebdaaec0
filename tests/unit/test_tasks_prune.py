"""backup.prune run in-process at a frozen time: what it deletes, prints, and never touches."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from freezegun import freeze_time
from invoke import Context, Exit

import tasks
from helpers import retention, tree
from helpers.errors import UserError
from helpers.process import env_lock
from tests.backup_tree import files_under, write_backup, write_partial

NOW = datetime(2026, 4, 9, 3, 17, 40, tzinfo=timezone.utc)  # just after the nightly backup
LAST_NIGHT = NOW.replace(second=0)
DAY = timedelta(days=1)


@pytest.fixture
def root(tmp_path, monkeypatch):
    path = tmp_path / "backups"
    monkeypatch.setenv("CARABASE_BACKUP_DIR", str(path))
    return path


@pytest.fixture
def nightly(root):
    """100 nightly backups of dev, the last one tonight: {stamp: path}."""
    return {LAST_NIGHT - night * DAY: write_backup(root / "dev", LAST_NIGHT - night * DAY)
            for night in range(100)}


def prune(env: str = "dev", dry_run: bool = False) -> None:
    with freeze_time(NOW):
        tasks.prune(Context(), env, dry_run=dry_run)


def label(stamp: datetime) -> str:
    return f"{retention.date_dir_name(stamp)}/{retention.backup_name(stamp)}"


def test_prune_deletes_exactly_what_the_plan_deletes_and_says_so(root, nightly, capsys):
    decided = retention.plan(nightly, NOW)
    prune()
    remaining = {path for path in nightly.values() if path.exists()}
    assert remaining == {nightly[stamp] for stamp in decided.keep}
    assert len(remaining) == 14
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 100 + 1  # one per backup, oldest first, then the summary
    oldest = min(nightly)
    assert lines[0] == f"delete  {label(oldest)}"
    assert lines[-2] == f"keep    {label(LAST_NIGHT)}  daily, newest"
    assert f"keep    {label(LAST_NIGHT - 7 * DAY)}  weekly 2026-W14" in lines
    assert lines[-1] == "dev: kept 14, deleted 86"


def test_prune_removes_the_date_directories_it_empties(root, nightly):
    prune()
    days = {path.name for path in (root / "dev").iterdir() if path.is_dir()}
    assert days == {retention.date_dir_name(stamp) for stamp in nightly if nightly[stamp].exists()}


def test_dry_run_deletes_nothing_and_prints_what_it_would_do(root, nightly, capsys):
    write_partial(root / "dev", LAST_NIGHT + timedelta(seconds=5))
    before = files_under(root)
    prune(dry_run=True)
    assert files_under(root) == before  # the partial file too
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"would delete  {label(min(nightly))}"
    assert lines[-2] == f"keep          {label(LAST_NIGHT)}  daily, newest"
    assert sum(line.startswith("would delete  ") for line in lines) == 86
    assert not any(line.startswith("delete") for line in lines)
    assert lines[-1] == "dev: would keep 14, would delete 86 (dry run: nothing deleted)"


def test_prune_never_touches_files_whose_names_are_not_backup_names(root, capsys):
    old = LAST_NIGHT - 200 * DAY
    write_backup(root / "dev", old - DAY)
    day = write_backup(root / "dev", old).parent
    write_backup(root / "dev", LAST_NIGHT)
    strangers = [
        day / "notes.txt",
        day / (retention.backup_name(old - DAY) + ".bak"),
        day / retention.backup_name(old).replace(".enc", ""),
        root / "dev" / "cron.log",
        root / "dev" / retention.backup_name(old - 2 * DAY),  # not in a date directory
    ]
    for path in strangers:
        path.write_text("not a backup\n")
    prune()
    assert all(path.exists() for path in strangers)
    assert not (day / retention.backup_name(old - DAY)).exists()  # pruned beside them
    assert day.is_dir()  # not empty, so it stays
    assert "notes.txt" not in capsys.readouterr().out


def test_prune_removes_the_temporary_file_of_a_killed_backup_without_listing_it(root, capsys):
    write_backup(root / "dev", LAST_NIGHT - DAY)
    partial = write_partial(root / "dev", LAST_NIGHT)
    prune()
    assert not partial.exists()
    assert not partial.parent.exists()  # its date directory held nothing else
    assert capsys.readouterr().out.splitlines() == [
        f"keep    {label(LAST_NIGHT - DAY)}  daily, newest",
        "dev: kept 1, deleted 0",
    ]


def test_prune_refuses_while_a_backup_holds_the_lock_and_deletes_nothing(root, nightly):
    with env_lock("dev", "backup dev"):
        before = files_under(root)  # with the lock file
        with pytest.raises(Exit, match="another backup or prune of dev is running"):
            prune()
    assert files_under(root) == before


def test_prune_holds_the_lock_while_it_deletes(root, nightly, monkeypatch):
    lock_was_free = []

    def probe_lock_then_remove(directory):
        try:
            with env_lock("dev", "probe"):
                lock_was_free.append(directory)
        except UserError:
            pass
        real_remove_if_empty(directory)

    real_remove_if_empty = tree.remove_if_empty
    monkeypatch.setattr(tree, "remove_if_empty", probe_lock_then_remove)
    prune()
    assert sum(path.exists() for path in nightly.values()) == 14  # it did delete
    assert lock_was_free == []


def test_dry_run_works_while_a_backup_holds_the_lock(root, nightly, capsys):
    with env_lock("dev", "backup dev"):
        prune(dry_run=True)
    assert capsys.readouterr().out.splitlines()[-1].startswith("dev: would keep 14")


def test_pruning_twice_deletes_nothing_the_second_time(root, nightly, capsys):
    prune()
    after_first = files_under(root)
    capsys.readouterr()
    prune()
    assert files_under(root) == after_first
    assert capsys.readouterr().out.splitlines()[-1] == "dev: kept 14, deleted 0"


def test_prune_of_an_env_never_backed_up_says_there_is_nothing_to_prune(root, capsys):
    prune("staging")
    expected = f"staging: nothing to prune: {root / 'staging'} does not exist\n"
    assert capsys.readouterr().out == expected
    assert not (root / "staging").exists()  # and creates nothing


def test_prune_of_an_env_directory_without_backups_deletes_nothing(root, capsys):
    (root / "prod").mkdir(parents=True)
    (root / "prod" / "cron.log").write_text("...\n")
    prune("prod")
    assert capsys.readouterr().out.splitlines()[-1] == "prod: no backups, nothing to prune"
    assert (root / "prod" / "cron.log").exists()


def test_prune_of_an_unknown_env_is_a_clear_error(root):
    with pytest.raises(Exit, match="unknown env 'qa': expected one of dev, staging, prod"):
        prune("qa")
    assert not root.exists()


def test_prune_only_touches_the_env_it_is_given(root, nightly):
    prod = [write_backup(root / "prod", LAST_NIGHT - night * DAY) for night in range(60)]
    prune("dev")
    assert all(path.exists() for path in prod)


def test_prune_at_seven_days_to_the_second_moves_a_backup_from_daily_to_weekly(root, capsys):
    # NOW is 40 s after the backup of a week ago: it is no longer daily.
    week_ago = write_backup(root / "dev", NOW - 7 * DAY)
    day_before = write_backup(root / "dev", NOW - 8 * DAY)
    write_backup(root / "dev", NOW - 7 * DAY + timedelta(seconds=1))
    prune()
    out = capsys.readouterr().out
    assert f"keep    {label(NOW - 7 * DAY)}  weekly 2026-W14" in out
    assert f"keep    {label(NOW - 7 * DAY + timedelta(seconds=1))}  daily, newest" in out
    assert week_ago.exists() and day_before.exists()  # day_before: April's monthly
