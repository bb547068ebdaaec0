"""backup.status run in-process under freezegun: reading the tree, lines, exit status.

The judging itself is the pure `helpers.freshness.assess_freshness`
(tests/unit/helpers/test_freshness.py).
"""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from freezegun import freeze_time
from invoke import Context, Exit

import tasks
from helpers import tree
from helpers.config import ENVS
from tests.backup_tree import write_backup, write_partial

LATEST = datetime(2026, 4, 9, 3, 17, 12, tzinfo=timezone.utc)
HOUR = timedelta(hours=1)


# --- the task, in-process, at a frozen time -----------------------------------------------


@pytest.fixture
def root(tmp_path, monkeypatch):
    path = tmp_path / "backups"
    monkeypatch.setenv("CARABASE_BACKUP_DIR", str(path))
    monkeypatch.delenv("CARABASE_ENVS", raising=False)
    return path


def run_status(now: datetime, *flags: str) -> int:
    """`backup.status` at `now`; its exit status."""
    with freeze_time(now):
        try:
            tasks.status(Context(), json="--json" in flags)
        except Exit as exit:
            return exit.code
    return 0


def test_status_exits_0_when_every_env_passes(root, capsys):
    for env in ENVS:
        write_backup(root / env, LATEST)
    assert run_status(LATEST + 7.2 * HOUR) == 0
    assert capsys.readouterr().out.splitlines() == [
        "[dev    ] PASS latest=2026-04-09T03:17:12Z age=7.2h ago",
        "[staging] PASS latest=2026-04-09T03:17:12Z age=7.2h ago",
        "[prod   ] PASS latest=2026-04-09T03:17:12Z age=7.2h ago",
    ]


def test_status_exits_1_when_the_worst_is_warn(root, capsys):
    write_backup(root / "dev", LATEST)
    write_backup(root / "staging", LATEST - 30 * HOUR)
    write_backup(root / "prod", LATEST)
    assert run_status(LATEST) == 1
    assert capsys.readouterr().out.splitlines()[1] == (
        "[staging] WARN latest=2026-04-07T21:17:12Z age=30.0h ago")


def test_status_exits_2_when_any_env_fails(root, capsys):
    write_backup(root / "dev", LATEST)
    write_backup(root / "staging", LATEST - 40 * HOUR)
    assert run_status(LATEST) == 2
    assert capsys.readouterr().out.splitlines()[2] == "[prod   ] FAIL no backups"


def test_status_judges_the_newest_backup_by_its_name_and_the_size_of_the_one_before(root, capsys):
    write_backup(root / "dev", LATEST - 48 * HOUR, size=80_000)
    write_backup(root / "dev", LATEST - 24 * HOUR, size=100_000)
    write_backup(root / "dev", LATEST, size=30_000)
    for env in ("staging", "prod"):
        write_backup(root / env, LATEST)
    assert run_status(LATEST + HOUR) == 1
    assert capsys.readouterr().out.splitlines()[0] == (
        "[dev    ] WARN latest=2026-04-09T03:17:12Z age=1.0h ago"
        " (newest backup is 30% the size of the one before it)")


def test_status_ignores_a_backup_in_progress_and_files_that_are_not_backups(root, capsys):
    write_backup(root / "dev", LATEST - 50 * HOUR)
    write_partial(root / "dev", LATEST)  # being written: not a backup yet
    (root / "dev" / "2026-04-09").joinpath("2026-04-09T031712.sql.gz").write_bytes(b"x" * 9000)
    (root / "dev" / "cron.log").write_text("backup dev: ...\n")
    assert run_status(LATEST) == 2  # staging and prod have none
    assert capsys.readouterr().out.splitlines()[0] == (
        "[dev    ] WARN latest=2026-04-07T01:17:12Z age=50.0h ago")


def test_status_json_is_one_object_with_the_documented_shape(root, capsys):
    dev = write_backup(root / "dev", LATEST)
    write_backup(root / "staging", LATEST - 55 * HOUR)
    assert run_status(LATEST + 3 * HOUR, "--json") == 2
    report = json.loads(capsys.readouterr().out)
    assert report["status"] == "FAIL"
    assert [env["env"] for env in report["envs"]] == ["dev", "staging", "prod"]
    for env in report["envs"]:
        assert {"env", "status", "latest", "age_hours", "path"} <= set(env)
    assert report["envs"][0] == {"env": "dev", "status": "PASS",
                                 "latest": "2026-04-09T03:17:12Z", "age_hours": 3.0,
                                 "path": str(dev), "warning": None, "drill": None,
                                 "offsite": None}
    assert report["envs"][1]["status"] == "WARN"
    assert report["envs"][1]["age_hours"] == pytest.approx(58.0)
    assert report["envs"][2] == {"env": "prod", "status": "FAIL", "latest": None,
                                 "age_hours": None, "path": None, "warning": None,
                                 "drill": None, "offsite": None}


def test_status_json_schema_1_has_exactly_the_documented_fields_and_types(root, capsys):
    """The desktop and health endpoints read these: docs/status.md documents
    every one. A field added, renamed or retyped must show up here (and in docs/status.md)."""
    write_backup(root / "dev", LATEST)
    write_backup(root / "staging", LATEST, size=100)  # a warning
    assert run_status(LATEST + HOUR, "--json") == 2
    report = json.loads(capsys.readouterr().out)
    assert list(report) == ["schema", "status", "envs"]
    assert report["schema"] == 1
    assert report["status"] in ("PASS", "WARN", "FAIL")
    assert isinstance(report["envs"], list)
    fields = {"env": str, "status": str, "latest": (str, type(None)),
              "age_hours": (float, type(None)), "path": (str, type(None)),
              "warning": (str, type(None)), "drill": (dict, type(None)),
              "offsite": (dict, type(None))}
    for env in report["envs"]:
        assert list(env) == list(fields)
        for name, kinds in fields.items():
            assert isinstance(env[name], kinds), (name, env[name])
    dev, staging, prod = report["envs"]
    assert isinstance(dev["age_hours"], float) and dev["warning"] is None
    assert staging["status"] == "WARN" and "under 1 KiB" in staging["warning"]
    assert prod["latest"] is prod["age_hours"] is prod["path"] is None


def test_status_json_exits_0_with_status_pass_when_all_pass(root, capsys):
    for env in ENVS:
        write_backup(root / env, LATEST)
    assert run_status(LATEST + HOUR, "--json") == 0
    assert json.loads(capsys.readouterr().out)["status"] == "PASS"


def test_status_reports_an_env_directory_it_cannot_read_as_fail(root, capsys, monkeypatch):
    for env in ENVS:
        write_backup(root / env, LATEST)

    def unreadable(env):
        if env == "staging":
            raise PermissionError(13, "Permission denied")
        return real_list_backups(env)

    real_list_backups = tree.list_backups
    monkeypatch.setattr(tree, "list_backups", unreadable)
    assert run_status(LATEST) == 2
    assert capsys.readouterr().out.splitlines()[1] == (
        f"[staging] FAIL cannot read {root / 'staging'}: Permission denied")


# --- only the envs this machine backs up ------------------------------------------------


@pytest.mark.parametrize("only", ["dev", "prod"])
def test_status_shows_and_counts_only_the_envs_in_carabase_envs(root, capsys, monkeypatch,
                                                               only):
    monkeypatch.setenv("CARABASE_ENVS", only)
    write_backup(root / only, LATEST)  # the others have none, and are none of its business

    assert run_status(LATEST + HOUR) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"[{only:<7}] PASS latest=2026-04-09T03:17:12Z age=1.0h ago"]


def test_status_json_lists_only_the_envs_in_carabase_envs(root, capsys, monkeypatch):
    monkeypatch.setenv("CARABASE_ENVS", "prod,staging")
    write_backup(root / "prod", LATEST - 40 * HOUR)

    assert run_status(LATEST, "--json") == 2
    report = json.loads(capsys.readouterr().out)
    assert [(env["env"], env["status"]) for env in report["envs"]] == [
        ("staging", "FAIL"), ("prod", "WARN")]


def test_status_with_an_unknown_env_in_carabase_envs_judges_nothing(root, capsys,
                                                                     monkeypatch):
    monkeypatch.setenv("CARABASE_ENVS", "dev,prdo")

    assert run_status(LATEST) == 1  # the message: tests/e2e/test_prune_status_cli.py
    assert capsys.readouterr().out == ""


# --- a file where a directory should be ----------------------------------------------


def test_status_says_the_backup_dir_is_a_file_instead_of_no_backups(root, capsys, monkeypatch):
    monkeypatch.setenv("CARABASE_ENVS", "dev")
    root.write_text("oops\n")

    assert run_status(LATEST) == 2
    assert capsys.readouterr().out.splitlines() == [
        f"[dev    ] FAIL {root} is not a directory (check CARABASE_BACKUP_DIR)"]


def test_status_says_an_env_dir_is_a_file_and_judges_the_others(root, capsys):
    for env in ("dev", "prod"):
        write_backup(root / env, LATEST)
    (root / "staging").write_text("oops\n")

    assert run_status(LATEST + HOUR) == 2
    assert capsys.readouterr().out.splitlines()[1] == (
        f"[staging] FAIL {root / 'staging'} is not a directory"
        " (move it aside: staging's backups go there)")


def test_status_shows_the_last_drill_and_a_failed_one_warns(root, capsys):
    from helpers import drill
    for env in ENVS:
        write_backup(root / env, LATEST)
    finished = LATEST + 0.5 * HOUR
    drill.record("dev", drill.Proof("PASS", 3, 10), root / "dev" / "x", finished, 1.0)
    drill.record("prod", drill.Proof("FAIL", problems=["the restore failed: boom"]),
                 root / "prod" / "x", finished, None)
    assert run_status(LATEST + HOUR) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == ("[dev    ] PASS latest=2026-04-09T03:17:12Z age=1.0h ago"
                        " drill=2026-04-09T03:47:12Z")
    assert lines[1] == "[staging] PASS latest=2026-04-09T03:17:12Z age=1.0h ago"
    assert lines[2] == ("[prod   ] WARN latest=2026-04-09T03:17:12Z age=1.0h ago"
                        " drill=2026-04-09T03:47:12Z (last drill FAIL: the restore failed: boom)")
    assert run_status(LATEST + HOUR, "--json") == 1
    envs = json.loads(capsys.readouterr().out)["envs"]
    assert envs[0]["drill"]["result"] == "PASS" and envs[0]["drill"]["rows"] == 10
    assert envs[1]["drill"] is None
    assert envs[2]["drill"]["problems"] == ["the restore failed: boom"]


def test_status_warns_about_a_drill_record_it_cannot_read(root, capsys):
    write_backup(root / "dev", LATEST)
    (root / "dev" / ".drill.json").write_text("{not json")
    run_status(LATEST + HOUR)
    assert capsys.readouterr().out.splitlines()[0].startswith(
        "[dev    ] WARN latest=2026-04-09T03:17:12Z age=1.0h ago (cannot read ")
