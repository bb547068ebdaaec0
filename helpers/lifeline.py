"""python -m helpers.lifeline PROGRAM [ARG...]: run PROGRAM, and stop it with everything it
started as soon as our standard input reaches end-of-file, that is, as soon as the
process that started us is gone (helpers.process.on_lifeline says how).

Exits with PROGRAM's exit status (128 + N when signal N ended it). It starts before every
backup's pg_dump, so it imports nothing but the standard library (the rest of helpers
would cost it about 40 ms): helpers.process imports terminate_descendants from here.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable


def run_on_lifeline(argv: list[str], lifeline: int = 0) -> int:
    """Run `argv` until it ends, or until `lifeline` (a file descriptor) reaches
    end-of-file: then SIGTERM it and all its descendants. Returns its exit status as a
    shell gives it (128 + N when signal N ended it)."""
    child = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
    # Ctrl-C reaches the whole foreground process group: the command stops by itself,
    # and the controlling process stops whatever is left (stop_on_signal).
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def cut() -> None:
        if child.poll() is None:
            terminate_descendants()

    watch_lifeline(lifeline, cut)
    status = child.wait()
    return status if status >= 0 else 128 - status


def watch_lifeline(lifeline: int, when_cut: Callable[[], None]) -> None:
    """Call `when_cut` (in a thread of its own) once the file descriptor `lifeline`
    reaches end-of-file: the process holding its other end is gone."""
    def watch() -> None:
        try:
            while os.read(lifeline, 4096):  # nobody writes: anything read is ignored
                pass
        except OSError:  # an unusable lifeline is as good as a cut one
            pass
        when_cut()

    threading.Thread(target=watch, daemon=True).start()


def start_with_pipes(argv: list[str]) -> subprocess.Popen:
    """Start `argv` with pipes for its standard input, output and error (unbuffered):
    how helpers.parallel_apply starts its psql sessions (processes are started here)."""
    return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, bufsize=0)


def start_deaf_to_sigterm(argv: list[str], env: dict[str, str]) -> subprocess.Popen:
    """Start `argv` with pipes (as start_with_pipes), in a session of its own and with
    SIGTERM ignored: neither a Ctrl-C at the terminal nor terminate_descendants ends it,
    only the end of its standard input (we close it, or we die). For the psql that holds
    the restore lock (helpers.server_lock) until the restore has cleaned up."""
    return subprocess.Popen(["bash", "-c", 'trap "" TERM; exec "$@"', "bash", *argv],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, bufsize=0, env=env,
                            start_new_session=True)


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


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: python -m helpers.lifeline PROGRAM [ARG...]")
    sys.exit(run_on_lifeline(sys.argv[1:]))
