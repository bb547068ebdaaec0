"""helpers.server_lock's key and the name its session shows (the lock itself, on a real
server: tests/e2e/test_restore_lock.py)."""
from __future__ import annotations

import os

from helpers import server_lock


def test_the_key_of_a_database_is_fixed_so_that_every_version_and_machine_agrees():
    # Pinned: a restore from another install (older or newer) must take the same lock.
    assert server_lock.LOCK_CLASS == 1667330657
    assert server_lock.lock_key("carabase_dev") == 1576121397
    assert server_lock.lock_key("carabase_staging") == 101868231
    assert all(0 <= server_lock.lock_key(name) < 2**31 for name in ("", "x" * 63, "é"))


def test_the_holder_names_its_command_pid_and_host_within_the_63_bytes_the_server_keeps(
        monkeypatch):
    monkeypatch.setattr(server_lock.socket, "gethostname", lambda: "ops-1")
    assert server_lock.application_name("undo-restore dev") == \
        f"carabase undo-restore dev (pid {os.getpid()} on ops-1)"
    monkeypatch.setattr(server_lock.socket, "gethostname", lambda: "hôte-" * 20)
    name = server_lock.application_name("restore into staging")
    assert name.startswith(f"carabase restore into staging (pid {os.getpid()} on hôte-")
    assert len(name.encode()) <= 63  # cut on a character, never inside one
