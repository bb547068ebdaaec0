"""The nightly job's own output: `cron.log` kept small, and the tail of what it printed.

launchd and systemd open cron.log for the job's stdout and stderr before it starts, so
renaming the file is not enough: the job would go on writing into cron.log.1 through
the descriptors it inherited. `rotate` therefore points those descriptors at the fresh
cron.log as well.

`OutputTail` keeps the last lines the job printed (bounded), for the body of the failure
ping; `teeing` sends sys.stdout and sys.stderr through it while still writing them out.
"""
from __future__ import annotations

import os
import sys
from collections import deque
from contextlib import contextmanager
from pathlib import Path

ROTATE_ABOVE = 1024 * 1024  # bytes: past this at the start of a run, cron.log rotates
TAIL_LINES = 100
TAIL_BYTES = 10 * 1024


def old_log(log: Path) -> Path:
    return log.with_name(log.name + ".1")


def rotate(log: Path, limit: int = ROTATE_ABOVE) -> bool:
    """If `log` is larger than `limit`, make it `<log>.1` (replacing the previous one),
    start a new empty `log` (0600), and move our stdout/stderr onto it where they were
    writing to the old one. True if it rotated. OSError if the files cannot be handled."""
    try:
        if log.stat().st_size <= limit:
            return False
    except FileNotFoundError:
        return False
    old = old_log(log)
    os.replace(log, old)  # the previous cron.log.1 goes: one old copy is kept
    os.chmod(old, 0o600)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.fchmod(fd, 0o600)  # an umask cannot loosen it, and an existing file is fixed
        rotated = os.stat(old)
        for stream, target in ((sys.stdout, 1), (sys.stderr, 2)):
            if _same_file(target, rotated):
                if stream is not None:
                    stream.flush()
                os.dup2(fd, target)
    finally:
        os.close(fd)
    return True


def _same_file(fd: int, info: os.stat_result) -> bool:
    try:
        opened = os.fstat(fd)
    except OSError:  # closed
        return False
    return (opened.st_dev, opened.st_ino) == (info.st_dev, info.st_ino)


class OutputTail:
    """The last TAIL_LINES lines written to it, at most TAIL_BYTES of them."""

    def __init__(self, lines: int = TAIL_LINES, size: int = TAIL_BYTES):
        self.size = size
        self.lines: deque[str] = deque(maxlen=lines)
        self.partial = ""

    def write(self, text: str) -> None:
        *complete, self.partial = (self.partial + text).split("\n")
        self.lines.extend(complete)
        if len(self.partial) > self.size:  # a runaway line without a newline
            self.partial = self.partial[-self.size:]

    def text(self) -> str:
        lines = [*self.lines, self.partial] if self.partial else list(self.lines)
        kept: list[str] = []
        total = 0
        for line in reversed(lines):  # newest first, until the byte budget is spent
            encoded = len(line.encode("utf-8", "replace")) + 1
            if total + encoded > self.size:
                if not kept:  # one huge line: keep its end
                    kept.append(line.encode("utf-8", "replace")[-(self.size - 1):]
                                .decode("utf-8", "ignore"))
                break
            kept.append(line)
            total += encoded
        return "".join(line + "\n" for line in reversed(kept))


class _Tee:
    """A text stream that writes through to `stream` and copies into `tail`."""

    def __init__(self, stream, tail: OutputTail):
        self._stream = stream
        self._tail = tail

    def write(self, text: str) -> int:
        self._tail.write(text)
        written = self._stream.write(text)
        if "\n" in text:  # stdout and stderr share cron.log: keep their lines in order
            self._stream.flush()
        return written

    def __getattr__(self, name):  # flush, fileno, isatty, encoding, ...
        return getattr(self._stream, name)


@contextmanager
def teeing(tail: OutputTail):
    """Copy what this process prints (sys.stdout and sys.stderr) into `tail` meanwhile."""
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _Tee(saved[0], tail), _Tee(saved[1], tail)
    try:
        yield tail
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        sys.stdout, sys.stderr = saved
