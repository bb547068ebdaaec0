"""Process control: the env's lock, and whether a person watches on a terminal."""
from __future__ import annotations

import os
import signal

import pytest

from helpers import process
from helpers.errors import UserError

def test_second_holder_of_an_env_lock_is_refused_with_the_first_holders_pid(monkeypatch,
                                                                            tmp_path):
    monkeypatch.setenv("CARABASE_BACKUP_DIR", str(tmp_path))
    with process.env_lock("dev", "backup dev"):
        with pytest.raises(UserError, match=f"running \\(pid {os.getpid()}\\)"), \
                process.env_lock("dev", "prune"):
            pass
        with process.env_lock("prod", "backup prod"):  # another env: its own lock
            pass
    with process.env_lock("dev", "prune"):  # released on leaving
        pass


def test_signal_during_stop_on_signal_unwinds_with_128_plus_the_signal():
    with pytest.raises(UserError) as stopped, process.stop_on_signal("backup dev"):
        os.kill(os.getpid(), signal.SIGTERM)
    assert stopped.value.code == 128 + signal.SIGTERM
    assert stopped.value.message == "backup dev: interrupted by SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_watching_terminal_is_the_terminal_of_stderr(monkeypatch, tmp_path):
    controller, terminal = os.openpty()
    try:
        with open(terminal, "w", closefd=False) as stderr:
            monkeypatch.setattr("sys.stderr", stderr)
            assert process.watching_terminal() == os.ttyname(terminal)
    finally:
        os.close(controller)
        os.close(terminal)
    with open(tmp_path / "cron.log", "w") as log:
        monkeypatch.setattr("sys.stderr", log)
        assert process.watching_terminal() is None
