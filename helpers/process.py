"""Process control every task shares: the env's lock, stopping cleanly on a signal, and
the lifeline that stops a pipeline when the process controlling it dies.

The one helper module that starts processes (`ps`, to find our descendants; the command
a lifeline guards).
"""
from __future__ import annotations

import fcntl
import os
import shlex
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from helpers.config import env_dir
from helpers.errors import UserError
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


def terminate_descendants() -> None:
    """SIGTERM every process below this one (portable: ps exists on macOS and Linux).

    The tree is read once, before the first signal, so that processes whose parent dies
    meanwhile (and are handed to init) are signalled all the same."""
    listing = subprocess.run(
        ["ps", "-A", "-o", "pid=", "-o", "ppid="], capture_output=True, text=True
    ).stdout
    children: dict[int, list[int]] = {}
    for line in listing.splitlines():
        pid, ppid = (int(field) for field in line.split())
        children.setdefault(ppid, []).append(pid)
    pending = list(children.get(os.getpid(), []))
    while pending:
        pid = pending.pop()
        pending.extend(children.get(pid, []))
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


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


def run_on_lifeline(argv: list[str], lifeline: int = 0) -> int:
    """Run `argv` until it ends, or until `lifeline` (a file descriptor) reaches
    end-of-file: then SIGTERM it and all its descendants. Returns its exit status as a
    shell gives it (128 + N when signal N ended it)."""
    child = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
    # Ctrl-C reaches the whole foreground process group: the command stops by itself,
    # and the controlling process stops whatever is left (stop_on_signal).
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def watch() -> None:
        try:
            while os.read(lifeline, 4096):  # nobody writes: anything read is ignored
                pass
        except OSError:  # an unusable lifeline is as good as a cut one
            pass
        if child.poll() is None:
            terminate_descendants()

    threading.Thread(target=watch, daemon=True).start()
    status = child.wait()
    return status if status >= 0 else 128 - status
