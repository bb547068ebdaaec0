"""The backup tree: where backups are found and which temporary files are swept."""
from __future__ import annotations

from helpers import tree


def test_backups_are_found_only_in_their_own_date_directory(monkeypatch, tmp_path):
    monkeypatch.setenv("CARABASE_BACKUP_DIR", str(tmp_path))
    name = "2026-04-09T031700.sql.gz.enc"
    for folder in ("2026-04-09", "2026-04-10", "pinned"):
        (tmp_path / "dev" / folder).mkdir(parents=True)
        (tmp_path / "dev" / folder / name).write_bytes(b"x")

    assert [path.parent.name for _, path in tree.list_backups("dev")] == ["2026-04-09"]


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
