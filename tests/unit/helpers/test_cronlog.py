"""helpers.cronlog: rotating cron.log, and the bounded tail of what the job printed."""
from __future__ import annotations

import io
import stat
import sys

from helpers import cronlog


def mode_of(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- rotation ---------------------------------------------------------------------------


def test_log_at_the_limit_or_missing_is_left_alone(tmp_path):
    log = tmp_path / "cron.log"
    assert cronlog.rotate(log, limit=10) is False
    log.write_bytes(b"x" * 10)
    assert cronlog.rotate(log, limit=10) is False
    assert log.read_bytes() == b"x" * 10
    assert not cronlog.old_log(log).exists()


def test_log_past_the_limit_becomes_log_1_and_a_new_empty_0600_log_starts(tmp_path):
    log = tmp_path / "cron.log"
    log.write_bytes(b"y" * 11)
    log.chmod(0o600)
    (tmp_path / "cron.log.1").write_bytes(b"the night before")
    assert cronlog.rotate(log, limit=10) is True
    assert cronlog.old_log(log).read_bytes() == b"y" * 11
    assert log.read_bytes() == b""
    assert mode_of(log) == mode_of(cronlog.old_log(log)) == 0o600
    assert sorted(path.name for path in tmp_path.iterdir()) == ["cron.log", "cron.log.1"]


def test_the_default_limit_is_one_mebibyte():
    assert cronlog.ROTATE_ABOVE == 1024 * 1024


# --- the tail of the output -------------------------------------------------------------


def test_tail_keeps_the_last_100_lines():
    tail = cronlog.OutputTail()
    for number in range(250):
        tail.write(f"line {number}\n")
    lines = tail.text().splitlines()
    assert lines == [f"line {number}" for number in range(150, 250)]


def test_tail_keeps_at_most_10_kib_of_whole_lines_from_the_end():
    tail = cronlog.OutputTail()
    for number in range(100):
        tail.write(f"{number:03d} " + "z" * 200 + "\n")
    text = tail.text()
    assert len(text.encode()) <= 10 * 1024
    assert text.endswith("099 " + "z" * 200 + "\n")
    assert all(line.startswith(("0", "1", "2", "3", "4", "5", "6", "7", "8", "9"))
               and len(line) == 204 for line in text.splitlines())


def test_tail_of_one_huge_line_keeps_its_end():
    tail = cronlog.OutputTail()
    tail.write("a" * 50_000 + "the end")
    text = tail.text()
    assert len(text.encode()) <= 10 * 1024
    assert text.endswith("the end\n")


def test_tail_joins_pieces_into_lines_and_keeps_an_unfinished_last_line():
    tail = cronlog.OutputTail()
    for piece in ("backup ", "dev: ", "wrote x\nprune", " started"):
        tail.write(piece)
    assert tail.text() == "backup dev: wrote x\nprune started\n"


def test_teeing_copies_stdout_and_stderr_and_still_writes_them(monkeypatch):
    out, err = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stdout", out)
    monkeypatch.setattr(sys, "stderr", err)
    with cronlog.teeing(cronlog.OutputTail()) as tail:
        print("to stdout")
        print("to stderr", file=sys.stderr)
    print("after")
    assert out.getvalue() == "to stdout\nafter\n"
    assert err.getvalue() == "to stderr\n"
    assert tail.text() == "to stdout\nto stderr\n"
    assert sys.stdout is out and sys.stderr is err
