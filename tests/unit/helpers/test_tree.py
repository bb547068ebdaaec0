"""The backup tree: where backups are found and which temporary files are swept."""
from __future__ import annotations

import stat

import pytest

from helpers import tree


def test_backups_are_found_only_in_their_own_date_directory(monkeypatch, tmp_path):
    monkeypatch.setenv("CARABASE_BACKUP_DIR", str(tmp_path))
    name = "2026-04-09T031700.sql.gz.enc"
    for folder in ("2026-04-09", "2026-04-10", "pinned"):
        (tmp_path / "dev" / folder).mkdir(parents=True)
        (tmp_path / "dev" / folder / name).write_bytes(b"x")

    assert [path.parent.name for _, path in tree.list_backups("dev")] == ["2026-04-09"]


def test_only_regular_files_are_backups_and_the_rest_is_named(monkeypatch, tmp_path):
    monkeypatch.setenv("CARABASE_BACKUP_DIR", str(tmp_path))
    day = tmp_path / "dev" / "2026-04-09"
    day.mkdir(parents=True)
    real = day / "2026-04-09T010000.sql.gz.enc"
    real.write_bytes(b"x")
    link = day / "2026-04-09T020000.sql.gz.enc"
    link.symlink_to(real)
    folder = day / "2026-04-09T030000.sql.gz.enc"
    folder.mkdir()
    assert [path for _, path in tree.list_backups("dev")] == [real]
    assert tree.not_backups("dev") == [(link, "a symbolic link"), (folder, "a directory")]


def test_stale_partials_are_removed_only_from_date_directories(monkeypatch, tmp_path):
    monkeypatch.setenv("CARABASE_BACKUP_DIR", str(tmp_path))
    partial = ".2026-04-09T031700.sql.gz.enc.partial"
    for folder in ("2026-04-09", "keep-me"):
        (tmp_path / "dev" / folder).mkdir(parents=True)
        (tmp_path / "dev" / folder / partial).write_bytes(b"x")
    (tmp_path / "dev" / "empty-but-mine").mkdir()

    removed = tree.remove_stale_partials("dev")

    assert removed == [tmp_path / "dev" / "2026-04-09" / partial]
    assert (tmp_path / "dev" / "keep-me" / partial).exists()
    assert (tmp_path / "dev" / "empty-but-mine").is_dir()
    assert not (tmp_path / "dev" / "2026-04-09").exists()


# --- directories: created private, the root's own mode left alone -------------------


def mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def permissions(path):
    """rwx bits only: a directory made in a setgid one inherits the setgid bit."""
    return path.stat().st_mode & 0o777


@pytest.mark.parametrize("root_mode", [0o1777, 0o2770, 0o755],
                         ids=["sticky-1777", "group-shared-2770", "home-0755"])
def test_existing_backup_root_keeps_its_mode_and_what_is_made_inside_is_0700(
        monkeypatch, tmp_path, root_mode):
    root = tmp_path / "shared"
    root.mkdir()
    root.chmod(root_mode)  # /tmp-like, group-shared, or $HOME
    monkeypatch.setenv("CARABASE_BACKUP_DIR", str(root))

    made = tree.ensure_private_dir(root / "dev" / "2026-04-09")

    assert mode(root) == root_mode
    assert permissions(root / "dev") == 0o700 and permissions(made) == 0o700


def test_missing_backup_root_and_its_missing_parents_are_created_0700(monkeypatch, tmp_path):
    root = tmp_path / "home" / ".carabase" / "backups"
    monkeypatch.setenv("CARABASE_BACKUP_DIR", str(root))

    tree.ensure_private_dir(root / "prod")

    assert [mode(path) for path in (tmp_path / "home", root.parent, root, root / "prod")] \
        == [0o700] * 4


def test_loose_env_and_date_directories_inside_the_root_are_tightened(monkeypatch, tmp_path):
    monkeypatch.setenv("CARABASE_BACKUP_DIR", str(tmp_path))
    day = tmp_path / "dev" / "2026-04-09"
    day.mkdir(parents=True)
    for path in (tmp_path / "dev", day):
        path.chmod(0o755)

    tree.ensure_private_dir(day)

    assert mode(tmp_path / "dev") == 0o700 and mode(day) == 0o700


# --- a file where a directory should be ----------------------------------------------


def test_nothing_is_wrong_with_a_missing_or_present_tree(monkeypatch, tmp_path):
    monkeypatch.setenv("CARABASE_BACKUP_DIR", str(tmp_path / "backups"))
    assert tree.not_a_directory("dev") is None
    (tmp_path / "backups" / "dev").mkdir(parents=True)
    assert tree.not_a_directory("dev") is None


@pytest.mark.parametrize("file, configured, expected", [
    ("backups", "backups", "{root}/backups is not a directory (check CARABASE_BACKUP_DIR)"),
    ("srv", "srv/backups", "{root}/srv is not a directory (check CARABASE_BACKUP_DIR)"),
    ("backups/dev", "backups",
     "{root}/backups/dev is not a directory (move it aside: dev's backups go there)"),
])
def test_a_file_standing_where_a_directory_should_be_is_named(monkeypatch, tmp_path, file,
                                                              configured, expected):
    (tmp_path / file).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / file).write_text("not a directory\n")
    monkeypatch.setenv("CARABASE_BACKUP_DIR", str(tmp_path / configured))

    assert tree.not_a_directory("dev") == expected.format(root=tmp_path)
