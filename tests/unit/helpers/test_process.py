"""Process control: the env's lock, and whether a person watches on a terminal."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import process
from helpers.errors import UserError

REPO = Path(__file__).resolve().parents[3]


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


# --- the lifeline -------------------------------------------------------------------


def lifeline(script: str) -> subprocess.Popen:
    """`python -m helpers.lifeline bash -c script`, its lifeline a pipe this test holds."""
    return subprocess.Popen([sys.executable, "-m", "helpers.lifeline", "bash", "-c", script],
                            stdin=subprocess.PIPE, cwd=REPO, start_new_session=True)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by init) is gone for our purposes.
    status = Path(f"/proc/{pid}/stat")
    return not (status.exists() and status.read_text().split(") ")[1].startswith("Z"))


def wait_until(condition, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_cut_lifeline_stops_the_command_and_everything_it_started(tmp_path):
    pids = tmp_path / "pids"
    guarded = lifeline(f"sleep 60 | sleep 61 & echo $! > {pids}.tmp; mv {pids}.tmp {pids};"
                       " wait")
    wait_until(pids.exists)
    grandchild = int(pids.read_text())
    assert alive(grandchild)

    started = time.monotonic()
    guarded.stdin.close()  # as the kernel does when the controlling process dies

    assert guarded.wait(timeout=10) == 128 + signal.SIGTERM
    wait_until(lambda: not alive(grandchild), timeout=5)
    assert time.monotonic() - started < 3


def test_held_lifeline_lets_the_command_finish_with_its_own_exit_status():
    guarded = lifeline("sleep 0.3; exit 3")
    assert guarded.wait(timeout=10) == 3
    killed = lifeline("kill -TERM $$")
    assert killed.wait(timeout=10) == 128 + signal.SIGTERM
    for started in (guarded, killed):
        started.stdin.close()
