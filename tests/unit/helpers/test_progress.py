"""The progress pass-through: its figures, its pace, and that the bytes come out intact."""
from __future__ import annotations

import os
import select
import subprocess
import sys
import time

import pytest

from helpers import progress
from tests.support import REPO


@pytest.mark.parametrize("count, text", [
    (0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1536, "1.5 KiB"),
    (5 * 1024 ** 2 + 1024 ** 2 // 4, "5.2 MiB"), (3 * 1024 ** 3, "3.0 GiB"),
    (2 * 1024 ** 5, "2048.0 TiB"),
])
def test_human_bytes_uses_binary_units(count, text):
    assert progress.human_bytes(count) == text


@pytest.mark.parametrize("seconds, text", [
    (0, "0:00"), (9.9, "0:09"), (75, "1:15"), (3599, "59:59"), (3725, "1:02:05"),
])
def test_clock_shows_minutes_and_seconds_then_hours(seconds, text):
    assert progress.clock(seconds) == text


def test_line_without_total_shows_amount_rate_and_time_so_far():
    line = progress.progress_line("backup dev: wrote", 300 * 1024 ** 2, 12.5)

    assert line == "backup dev: wrote 300.0 MiB at 24.0 MiB/s, 0:12"


def test_line_with_total_shows_percentage_rate_and_time_left():
    line = progress.progress_line("restore: read", 25 * 1024 ** 2, 5.0, total=100 * 1024 ** 2)

    assert line == "restore: read 25% of 100.0 MiB at 5.0 MiB/s, 0:15 left"


def test_line_at_the_start_shows_no_rate_and_no_estimate():
    assert progress.progress_line("x:", 0, 0.0, total=1000) == "x: 0% of 1000 B at 0 B/s"
    assert progress.progress_line("x:", 0, 0.0) == "x: 0 B at 0 B/s, 0:00"


def test_line_at_the_end_says_100_percent_and_nothing_left():
    assert progress.progress_line("x:", 1000, 2.0, total=1000) == "x: 100% of 1000 B at 500 B/s"


def test_percentage_never_passes_100_and_empty_total_is_done():
    assert progress.progress_line("x:", 2000, 1.0, total=1000).startswith("x: 100% ")
    assert progress.progress_line("x:", 0, 1.0, total=0).startswith("x: 100% of 0 B")


def test_percentage_rounds_down_so_100_means_done():
    assert progress.progress_line("x:", 999, 1.0, total=1000).startswith("x: 99% ")


def test_fit_keeps_short_lines_and_cuts_long_ones_to_one_less_than_the_width():
    assert progress.fit("short", 80) == "short"
    cut = progress.fit("x" * 100, 40)
    assert len(cut) == 39 and cut.endswith("…")


def test_meter_draws_at_once_then_at_most_every_quarter_second():
    meter = progress.Meter(started=100.0)

    due = [meter.due(now) for now in (100.0, 100.1, 100.2, 100.25, 100.3, 100.6)]

    assert due == [True, False, False, True, False, True]


# --- as a command -----------------------------------------------------------------------


def run_progress(data: bytes, *args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "helpers.progress", *args], input=data,
                          capture_output=True, cwd=REPO, timeout=60, **kwargs)


@pytest.mark.parametrize("size", [0, 1, progress.CHUNK_SIZE + 7, 3 * 1024 * 1024 + 5])
def test_pass_through_preserves_every_byte(size):
    data = os.urandom(size)

    result = run_progress(data, "--label", "x:", "--total", str(size))

    assert result.returncode == 0
    assert result.stdout == data
    assert result.stderr == b""  # stderr is not a terminal: nothing drawn on it


def test_pass_through_survives_a_terminal_it_cannot_open(tmp_path):
    data = os.urandom(100_000)

    result = run_progress(data, "--to", str(tmp_path / "no-such-tty"))

    assert result.returncode == 0 and result.stdout == data and result.stderr == b""


def test_pass_through_never_draws_into_a_file(tmp_path):
    log = tmp_path / "cron.log"
    log.write_bytes(b"")

    result = run_progress(b"data", "--label", "backup dev: wrote", "--to", str(log))

    assert result.returncode == 0 and result.stdout == b"data"
    assert log.read_bytes() == b""


def test_on_a_terminal_it_draws_the_line_and_erases_it_at_the_end():
    controller, terminal = os.openpty()
    try:
        result = run_progress(b"x" * 5000, "--label", "restore: read", "--total", "5000",
                              "--to", os.ttyname(terminal))
        os.close(terminal)
        drawn = read_until_closed(controller).decode()
    finally:
        os.close(controller)

    assert result.returncode == 0 and result.stdout == b"x" * 5000
    assert "restore: read 100% of 4.9 KiB at " in drawn
    # The last thing written blanks the line it drew and returns to its start.
    last_line = drawn.split("\r")[-3].rstrip()  # padded when shorter than the one before
    assert last_line.startswith("restore: read 100%")
    assert drawn.endswith("\r" + " " * len(last_line) + "\r")


def read_until_closed(controller: int, timeout: float = 30) -> bytes:
    """Everything written to a pseudo-terminal whose every other holder has closed it."""
    received = []
    deadline = time.monotonic() + timeout
    while select.select([controller], [], [], max(deadline - time.monotonic(), 0))[0]:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO: no process holds the terminal any more
            break
        if not chunk:
            break
        received.append(chunk)
    return b"".join(received)


def test_a_reader_that_goes_away_fails_the_stage_quietly():
    # `head -c 1` stops reading at once: the stage must fail (the pipeline is broken)
    # without a traceback or message that would hide the real error of the next stage.
    script = (f"head -c 3000000 /dev/zero | {sys.executable} -m helpers.progress"
              " | head -c 1 > /dev/null; echo ${PIPESTATUS[1]}")

    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, cwd=REPO,
                            timeout=60)

    assert result.stdout.strip() == "1" and result.stderr == ""
