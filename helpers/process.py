"""Process control every task shares: the env's lock, stopping cleanly on a signal, and
the lifeline that stops a pipeline when the process controlling it dies.

The processes themselves (`ps` to find our descendants, the command a lifeline guards)
are started in helpers.lifeline, which `python -m helpers.lifeline` runs on its own.
"""
from __future__ import annotations

import fcntl
import os
import shlex
import signal
import sys
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from helpers.config import env_dir
from helpers.errors import UserError
from helpers.lifeline import terminate_descendants
from helpers.tree import ensure_private_dir


@contextmanager
def file_lock(path: Path, when_held: Callable[[int], None]):
    """Hold an flock on `path` (created 0600) for the duration: a killed holder never
    leaves a stale lock behind. When another process holds it, `when_held(fd)` raises
    (refuse), or returns to wait until it is free."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            when_held(fd)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)


@contextmanager
def env_lock(env: str, action: str):
    """Hold the env's lock for the duration: one backup or prune of an env at a time."""
    def refuse(fd: int) -> None:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
        raise UserError(f"{action}: another backup or prune of {env} is running (pid"
                        f" {holder}); try again when it has finished")

    with file_lock(ensure_private_dir(env_dir(env)) / ".lock", refuse) as fd:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield


class Interrupted(BaseException):
    """A signal asked us to stop; BaseException so that no `except Exception` eats it."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


@contextmanager
def stop_on_signal(action: str):
    """For the whole of a task: on SIGINT, SIGTERM or SIGHUP, stop our child processes
    and unwind with cleanup, exiting 128+signal.

    invoke only forwards Ctrl-C as a keystroke and keeps waiting, and a SIGTERM aimed at
    us alone would leave psql running until it COMMITs; so the children are stopped
    here, and Interrupted unwinds through every `finally` that removes temporary files.
    """
    raised = False

    def on_signal(signum, frame):
        nonlocal raised
        if raised:  # a second signal must not break the cleanup of the first
            return
        raised = True
        terminate_descendants()
        raise Interrupted(signum)

    watched = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {signum: signal.signal(signum, on_signal) for signum in watched}
    try:
        yield
    except Interrupted as caught:
        name = signal.Signals(caught.signum).name
        raise UserError(f"{action}: interrupted by {name}", code=128 + caught.signum) \
            from None
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def watching_terminal() -> str | None:
    """The terminal our stderr is on, if any: a person is watching there. None under
    cron, launchd and systemd (output to cron.log) or with output to a file or pipe."""
    try:
        return os.ttyname(sys.stderr.fileno()) if sys.stderr.isatty() else None
    except (AttributeError, OSError, ValueError):  # stderr closed or replaced
        return None


# --- the lifeline ---------------------------------------------------------------------


def on_lifeline(command: str) -> str:
    """A shell command that runs bash `command` under `python -m helpers.lifeline`: when
    the process that started it dies, SIGKILL included, `command` and everything it
    started are stopped within moments, instead of running on unattended.

    The lifeline is the command's standard input. invoke's run(..., in_stream=False), as
    every task calls it, gives the command a pipe and holds the pipe's write end, never
    writing to it, until the command ends; no other process holds that end (it is not
    inherited). When the controlling process dies, the kernel closes it and the read
    waiting at the other end returns end-of-file at once: no polling, on any platform.
    `command` itself reads /dev/null.
    """
    return shlex.join([sys.executable, "-m", "helpers.lifeline", "bash", "-c", command])
