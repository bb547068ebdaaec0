"""backup.nightly in-process with stand-in steps: order, hooks skipped, stop at the first
failure with its line and status, pings. The real steps run end to end in
tests/e2e/test_nightly_cli.py."""
from __future__ import annotations

from pathlib import Path

import pytest
from invoke import Context, Exit

import tasks
from helpers import pitr
from helpers.errors import UserError
from tests.ping_server import ping_server

CHECK = "5d0c2a9e-unit-check"


@pytest.fixture(autouse=True)
def setting(tmp_path, monkeypatch):
    monkeypatch.setenv("CARABASE_BACKUP_DIR", str(tmp_path / "backups"))
    for name in ("CARABASE_NOTIFY_URL", "CARABASE_NOTIFY_URL_FILE", "CARABASE_OFFSITE"):
        monkeypatch.delenv(name, raising=False)


def test_the_steps_are_backup_offsite_prune_drill_with_the_unbuilt_ones_as_hooks():
    steps = tasks.nightly_steps(Context(), "dev")
    assert [name for name, _ in steps] == ["backup", "off-site copy", "prune", "drill"]
    assert [name for name, step in steps if step is None] == ["off-site copy"]


def test_where_pitr_is_set_up_the_night_adds_its_base_backup_then_its_drill(tmp_path):
    server = pitr.Server(Path("/srv/data"), 5432, "/run/postgresql", "postgres", "postgres",
                         Path("/usr/lib/postgresql/15/bin"))
    (tmp_path / "backups" / "dev").mkdir(parents=True)
    pitr.pointer_path("dev").write_text(pitr.pointer_json(pitr.Setup("dev", tmp_path, server)))
    steps = tasks.nightly_steps(Context(), "dev")
    assert [name for name, _ in steps] == ["backup", "off-site copy", "prune", "drill",
                                           "PITR base backup", "PITR drill"]


def test_with_off_site_copies_configured_the_night_pushes(monkeypatch):
    monkeypatch.setenv("CARABASE_OFFSITE", "/mnt/nas/carabase")
    steps = dict(tasks.nightly_steps(Context(), "dev"))
    assert steps["off-site copy"] is not None


def stand_in_steps(monkeypatch, ran: list[str], failing: str | None = None,
                   error: Exception | None = None):
    def step(name):
        def run():
            ran.append(name)
            if name == failing:
                raise error
        return run

    monkeypatch.setattr(tasks, "nightly_steps", lambda c, env: [
        ("backup", step("backup")), ("off-site copy", None), ("prune", step("prune")),
        ("drill", step("drill")),
    ])


def test_steps_run_in_order_and_none_is_skipped(monkeypatch, capsys):
    ran: list[str] = []
    stand_in_steps(monkeypatch, ran)
    tasks.nightly(Context(), "dev")
    assert ran == ["backup", "prune", "drill"]
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("nightly dev: started ") and out[-1].startswith("nightly dev: done")


@pytest.mark.parametrize("error, code", [
    (UserError("backup dev failed: pg_dump: error: boom", code=3), 3),
    (Exit("prune dev: cannot remove x: Permission denied", code=1), 1),
])
def test_the_first_failing_step_stops_the_night_with_its_line_status_and_fail_ping(
        monkeypatch, capsys, error, code):
    ran: list[str] = []
    stand_in_steps(monkeypatch, ran, failing="backup", error=error)
    with ping_server() as (base, received):
        monkeypatch.setenv("CARABASE_NOTIFY_URL", f"{base}/{CHECK}")
        with pytest.raises(Exit) as raised:
            tasks.nightly(Context(), "dev")
    assert ran == ["backup"]
    assert raised.value.code == code and raised.value.message is None  # already printed
    assert capsys.readouterr().err == error.message + "\n"
    assert [ping.path for ping in received] == [f"/{CHECK}/start", f"/{CHECK}/fail"]
    assert received[1].body.endswith(error.message + "\n")


def test_an_unexpected_error_still_pings_fail_and_then_shows_its_traceback(monkeypatch, capsys):
    ran: list[str] = []
    stand_in_steps(monkeypatch, ran, failing="prune", error=ZeroDivisionError("a bug"))
    with ping_server() as (base, received):
        monkeypatch.setenv("CARABASE_NOTIFY_URL", f"{base}/{CHECK}")
        with pytest.raises(ZeroDivisionError):
            tasks.nightly(Context(), "dev")
    assert ran == ["backup", "prune"]
    line = "nightly dev: prune stopped by an unexpected error: ZeroDivisionError: a bug"
    assert capsys.readouterr().err == line + "\n"
    assert [ping.path for ping in received] == [f"/{CHECK}/start", f"/{CHECK}/fail"]
    assert received[1].body.endswith(line + "\n")
