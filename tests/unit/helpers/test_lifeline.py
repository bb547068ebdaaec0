"""python -m helpers.lifeline: the command it guards runs until it ends, or until the
process that started it is gone."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


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


def test_the_lifeline_starts_without_the_rest_of_the_helpers_or_any_package():
    # It starts before every backup's pg_dump: cryptography, isal or invoke would cost
    # it tens of milliseconds.
    loaded = subprocess.run(
        [sys.executable, "-c", "import sys, helpers.lifeline; print(*sorted(sys.modules))"],
        cwd=REPO, capture_output=True, text=True, check=True).stdout.split()

    assert [name for name in loaded if name.startswith("helpers")] == [
        "helpers", "helpers.lifeline"]
    assert not {"cryptography", "isal", "invoke"} & set(loaded)
