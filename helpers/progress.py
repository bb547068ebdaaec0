"""A pass-through pipeline stage that shows a person how far a long run has got.

    ... | gzip | python -m helpers.progress --label "backup dev: wrote" --to /dev/pts/3 | ...
    python -m helpers.progress --total 81234567 --label "restore: read" < dump.sql.gz | ...

Copies stdin to stdout unchanged and keeps one line up to date on the terminal named by
--to (default: stderr, if that is a terminal):

    backup dev: wrote 12.3 MiB at 4.5 MiB/s, 0:03
    restore into dev: read 45% of 27.0 MiB at 3.4 MiB/s, 0:07 left

At most four redraws a second, and the line is erased at the end, so that what stays on
the terminal is what the task itself prints. Drawing is best effort: when the terminal
cannot be opened or written, is not a terminal, or belongs to a foreground job other
than ours, the bytes still flow and nothing is drawn. Only a failure to move the data
itself makes this stage fail.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import time

CHUNK_SIZE = 64 * 1024  # what a pipe hands over at once
REDRAW_EVERY = 0.25  # seconds: often enough to look alive, rarely enough to cost nothing
DEFAULT_WIDTH = 80


def human_bytes(count: float) -> str:
    """1536 -> '1.5 KiB': binary units, one decimal above bytes."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if count < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def clock(seconds: float) -> str:
    """75 -> '1:15', 3725 -> '1:02:05'."""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def progress_line(label: str, done: int, elapsed: float, total: int | None = None) -> str:
    """The text of the progress line after `done` bytes in `elapsed` seconds.

    Without a total: amount, rate and time so far. With one: percentage, rate and an
    estimate of the time left at the rate so far.
    """
    rate = done / elapsed if elapsed > 0 else 0.0
    speed = f"{human_bytes(rate)}/s"
    if total is None:
        return f"{label} {human_bytes(done)} at {speed}, {clock(elapsed)}"
    percent = min(100, done * 100 // total) if total > 0 else 100
    text = f"{label} {percent}% of {human_bytes(total)} at {speed}"
    if rate > 0 and done < total:
        return f"{text}, {clock((total - done) / rate)} left"
    return text


def fit(text: str, width: int) -> str:
    """Cut `text` to one column less than the terminal, so that it never wraps (a wrapped
    line cannot be redrawn in place with a carriage return)."""
    return text if len(text) < width else text[: max(width - 2, 0)] + "…"


class Meter:
    """Decides when to redraw: on the first bytes, then at most every REDRAW_EVERY."""

    def __init__(self, started: float):
        self.started = started
        self.last_drawn: float | None = None

    def due(self, now: float) -> bool:
        if self.last_drawn is None or now - self.last_drawn >= REDRAW_EVERY:
            self.last_drawn = now
            return True
        return False


class Terminal:
    """One line, redrawn in place; quietly gives up at the first sign of trouble."""

    def __init__(self, path: str | None):
        self.fd: int | None = None
        self.drawn = 0  # length of what is on the line now, to blank it out
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NOCTTY) if path else os.dup(2)
        except OSError:
            return
        if os.isatty(fd):
            self.fd = fd
        else:  # a log file or a pipe: progress lines would only clutter it
            os.close(fd)

    def in_foreground(self) -> bool:
        """False when our job was put in the background: drawing there would clutter the
        person's shell, or stop us outright (SIGTTOU) if the terminal has `tostop` set."""
        try:
            return os.tcgetpgrp(self.fd) == os.getpgrp()
        except OSError:  # not our controlling terminal: no job control to respect
            return True

    def width(self) -> int:
        try:
            return os.get_terminal_size(self.fd).columns or DEFAULT_WIDTH
        except OSError:
            return DEFAULT_WIDTH

    def show(self, text: str) -> None:
        if self.fd is None or not self.in_foreground():
            return
        text = fit(text, self.width())
        self._write("\r" + text.ljust(self.drawn))
        self.drawn = len(text)

    def erase(self) -> None:
        if self.fd is not None and self.drawn:
            self._write("\r" + " " * self.drawn + "\r")
            self.drawn = 0

    def _write(self, text: str) -> None:
        try:
            os.write(self.fd, text.encode("utf-8", "replace"))
        except OSError:  # the terminal went away (closed window, hang-up): stop drawing
            self.fd = None


def copy_with_progress(src: int, dst: int, terminal: Terminal, label: str,
                       total: int | None = None) -> int:
    """Copy file descriptor `src` to `dst` until end of input, drawing on `terminal`."""
    started = time.monotonic()
    meter = Meter(started)
    done = 0
    while chunk := os.read(src, CHUNK_SIZE):
        view = memoryview(chunk)
        while view:
            view = view[os.write(dst, view):]
        done += len(chunk)
        now = time.monotonic()
        if meter.due(now):
            terminal.show(progress_line(label, done, now - started, total))
    terminal.show(progress_line(label, done, time.monotonic() - started, total))
    return done


def _exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)  # unwinds through `finally`, which erases the line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.progress",
                                     description="stdin -> stdout, with a progress line")
    parser.add_argument("--label", default="progress:", help="text before the figures")
    parser.add_argument("--total", type=int, help="expected bytes: shows a percentage")
    parser.add_argument("--to", metavar="TTY",
                        help="terminal to draw on (default: stderr, if it is a terminal)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    # Never be stopped for writing to the terminal from the background (`tostop`): that
    # would stall the whole pipeline. Terminal.in_foreground keeps us quiet there anyway.
    signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    terminal = Terminal(args.to)
    try:
        copy_with_progress(0, 1, terminal, args.label, args.total)
    except BrokenPipeError:
        return 1  # the next stage stopped reading: its own message says why
    except KeyboardInterrupt:
        return 130
    except OSError as error:
        print(f"progress: {error.strerror or error}", file=sys.stderr)
        return 1
    finally:
        terminal.erase()
    return 0


if __name__ == "__main__":
    sys.exit(main())
