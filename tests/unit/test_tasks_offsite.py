"""How the off-site tasks compose their rclone commands (MockContext: nothing runs).

tests/e2e/test_offsite_cli.py runs them for real against rclone serve s3 and a folder.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from invoke import MockContext, Result

import tasks
from helpers import retention

STAMP = datetime(2026, 4, 9, 3, 17, tzinfo=timezone.utc)
RELATIVE = "2026-04-09/2026-04-09T031700.sql.gz.enc"


def copy_log(path: str) -> str:
    return "\n".join(json.dumps(entry) for entry in (
        {"level": "debug", "msg": "size = 5 OK", "object": path},
        {"level": "debug", "msg": "md5 = 0123 OK", "object": path},
        {"level": "info", "msg": "Copied (new)", "object": path}))


def listing_of(path: str, size: int) -> str:
    """What `rclone lsjson -R --files-only` prints for one file."""
    return json.dumps([{"Path": path, "Name": path.rsplit("/", 1)[1], "Size": size,
                        "IsDir": False}])


def test_push_copies_the_exact_files_listed_with_credentials_out_of_argv(
        monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("CARABASE_BACKUP_DIR", str(tmp_path / "it's here"))
    monkeypatch.setenv("CARABASE_OFFSITE", "b2:bucket/carabase")
    monkeypatch.setenv("RCLONE_CONFIG_B2_KEY", "SECRET-KEY")
    monkeypatch.delenv("RCLONE_RETRIES", raising=False)
    backup = tmp_path / "it's here" / "dev" / RELATIVE
    backup.parent.mkdir(parents=True)
    backup.write_bytes(b"12345")
    context = MockContext(run=[Result("[]"), Result(stderr=copy_log(RELATIVE)),
                               Result(listing_of(RELATIVE, 5))])
    monkeypatch.setattr(tasks, "rclone_program", lambda c: "/opt/rclone")

    tasks.push_backups(context, "dev", [(STAMP, backup)], "push dev")

    (listing, _), (copy, options), (after, _) = [call.args and (call.args[0], call.kwargs)
                                                 for call in context.run.call_args_list]
    assert listing == after == \
        "umask 077; /opt/rclone lsjson -R --files-only b2:bucket/carabase/dev"
    assert copy.startswith(f"umask 077; set -o pipefail; printf '%s\n' {RELATIVE}"
                           " | /opt/rclone copy --ignore-existing --files-from-raw - ")
    assert "--inplace" not in copy and "--ignore-checksum" not in copy
    assert copy.endswith(" '" + str(tmp_path) + "/it'\"'\"'s here/dev' b2:bucket/carabase/dev")
    assert "SECRET" not in listing + copy
    assert options["env"]["RCLONE_RETRIES"] == "3"  # a default, in the environment
    out = capsys.readouterr().out.splitlines()
    assert out == [f"push dev: copied {RELATIVE} (5 B, verified size and md5) to"
                   f" b2:bucket/carabase/dev/{RELATIVE}",
                   "push dev: 1 copied and verified (size and md5), 0 already off-site"]
    record = json.loads((tmp_path / "it's here" / "dev" / ".offsite.json").read_text())
    assert record["latest"] == "2026-04-09T03:17:00Z"


def test_a_copy_the_listing_after_it_does_not_show_counts_as_failed(monkeypatch, tmp_path,
                                                                    capsys):
    monkeypatch.setenv("CARABASE_BACKUP_DIR", str(tmp_path))
    monkeypatch.setenv("CARABASE_OFFSITE", "/nas")
    backup = tmp_path / "dev" / RELATIVE
    backup.parent.mkdir(parents=True)
    backup.write_bytes(b"12345")
    claimed = json.dumps({"level": "info", "msg": "Copied (new)", "object": RELATIVE})
    context = MockContext(run=[Result("[]"), Result(stderr=claimed), Result("[]")])
    monkeypatch.setattr(tasks, "rclone_program", lambda c: "/opt/rclone")
    try:
        tasks.push_backups(context, "dev", [(STAMP, backup)], "push dev")
    except tasks.UserError as error:
        assert error.message.startswith("push dev failed for 1 of 1 backups")
    else:
        raise AssertionError("an unconfirmed copy passed")
    assert not (tmp_path / "dev" / ".offsite.json").exists()
    assert retention.parse_backup_name(backup.name) == STAMP


def test_a_newer_rclone_on_path_is_asked_its_version_and_preferred(monkeypatch):
    monkeypatch.setattr(tasks.offsite, "bundled_rclone", lambda: Path("/venv/bin/rclone"))
    monkeypatch.setattr(tasks.offsite, "bundled_version", lambda: "1.75.2")
    monkeypatch.setattr(tasks.offsite, "rclone_on_path", lambda: Path("/usr/bin/rclone"))
    newer = MockContext(run={"/usr/bin/rclone version": Result("rclone v1.80.0\n")})
    assert tasks.rclone_program(newer) == Path("/usr/bin/rclone")
    older = MockContext(run={"/usr/bin/rclone version": Result("rclone v1.60.1\n")})
    assert tasks.rclone_program(older) == Path("/venv/bin/rclone")
    monkeypatch.setattr(tasks.offsite, "rclone_on_path", lambda: Path("/venv/bin/rclone"))
    assert tasks.rclone_program(MockContext()) == Path("/venv/bin/rclone")  # nothing runs


def test_an_error_that_a_retry_made_good_is_no_failure(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("CARABASE_BACKUP_DIR", str(tmp_path))
    monkeypatch.setenv("CARABASE_OFFSITE", "/nas")
    backup = tmp_path / "dev" / RELATIVE
    backup.parent.mkdir(parents=True)
    backup.write_bytes(b"12345")
    retried = json.dumps({"level": "error", "msg": "Failed to copy: reset", "object": RELATIVE})
    context = MockContext(run=[Result("[]"), Result(stderr=retried + "\n" + copy_log(RELATIVE)),
                               Result(listing_of(RELATIVE, 5))])
    monkeypatch.setattr(tasks, "rclone_program", lambda c: "/opt/rclone")
    assert tasks.push_backups(context, "dev", [(STAMP, backup)], "push dev") == 1
    assert "FAILED" not in capsys.readouterr().out


def test_push_lists_the_copied_backups_in_date_order_whatever_order_rclone_finished_in(
        monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("CARABASE_BACKUP_DIR", str(tmp_path))
    monkeypatch.setenv("CARABASE_OFFSITE", "/nas")
    backups = []
    for day in (7, 8, 9):
        stamp = STAMP.replace(day=day)
        path = tmp_path / "dev" / offsite_relative(stamp)
        path.parent.mkdir(parents=True)
        path.write_bytes(b"12345")
        backups.append((stamp, path))
    # rclone copies in parallel: the newest, smallest backups often finish first.
    log = "\n".join(copy_log(offsite_relative(stamp)) for stamp, _ in reversed(backups))
    listed = json.dumps([entry for stamp, _ in reversed(backups)
                         for entry in json.loads(listing_of(offsite_relative(stamp), 5))])
    context = MockContext(run=[Result("[]"), Result(stderr=log), Result(listed)])
    monkeypatch.setattr(tasks, "rclone_program", lambda c: "/opt/rclone")

    assert tasks.push_backups(context, "dev", backups, "push dev") == 3

    copied = [line.split()[3] for line in capsys.readouterr().out.splitlines()
              if line.startswith("push dev: copied ")]
    assert copied == [offsite_relative(stamp) for stamp, _ in backups]
    assert copied[0].startswith("2026-04-07/")


def offsite_relative(stamp: datetime) -> str:
    return tasks.offsite.relative_path(stamp)
