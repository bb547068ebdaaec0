"""How tasks.py composes PITR commands (the commands themselves run end to end in
tests/e2e/test_pitr_cli.py)."""
from __future__ import annotations

import pwd

import pytest

import tasks
from helpers.errors import UserError


def test_missing_pgbackrest_is_one_line_saying_how_to_install_it(monkeypatch):
    monkeypatch.setattr(tasks.shutil, "which", lambda name: None)
    with pytest.raises(UserError) as refused:
        tasks.require_pgbackrest("pitr-setup prod")
    assert refused.value.message == (
        "pitr-setup prod: pgbackrest is not installed: install pgBackRest: apt-get install"
        " pgbackrest (Debian, Ubuntu), brew install pgbackrest (macOS)")


def test_commands_run_as_the_data_directorys_owner_through_runuser_as_root(monkeypatch):
    monkeypatch.setattr(tasks.os, "geteuid", lambda: 0)
    monkeypatch.setattr(tasks.shutil, "which", lambda name: f"/usr/sbin/{name}")
    assert tasks.as_owner("postgres", "pgbackrest", "--config=/a b/c.conf", "info") == \
        "runuser -u postgres -- pgbackrest '--config=/a b/c.conf' info"


def test_commands_run_as_they_are_for_the_owner_and_are_refused_for_anyone_else():
    me = pwd.getpwuid(tasks.os.geteuid()).pw_name
    assert tasks.as_owner(me, "pg_ctl", "status") == "pg_ctl status"
    if tasks.os.geteuid() != 0:
        with pytest.raises(UserError, match="run this as"):
            tasks.as_owner("somebody-else", "pg_ctl", "status")
