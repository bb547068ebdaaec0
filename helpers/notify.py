"""Pings for the nightly job, healthchecks.io style: `<url>/start`, `<url>`, `<url>/fail`.

The check URL is a secret (whoever has it can report a good night): it comes from
CARABASE_NOTIFY_URL or the 0600 file named by CARABASE_NOTIFY_URL_FILE, and no message
here ever shows more of it than its host. A ping that cannot be sent is reported as a
line for the log, never raised: it must not change the result of the night.

Standard library only (urllib): one small POST does not justify a dependency.
"""
from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping
from urllib.parse import urlsplit

from helpers import crypto
from helpers.errors import UserError

# Each ping, all its tries together, ends within TIMEOUT seconds whatever the server
# does (a server that trickles a byte a second would hold a per-read timeout forever):
# a night's two pings cost it 20 s at most. A try may use all that is left of them, so a
# monitor that takes 4 s to answer is reached; a retry gets what the tries before it
# left (after a quick failure, a refused connection or a 5xx, that is most of it).
TIMEOUT = 10.0  # seconds per ping, every try included
TRIES = 3
RETRY_PAUSE = 1.0  # seconds between tries (at most half of what is left)
# Only for tests, which need a dead endpoint to cost less than 10 s.
TIMEOUT_VARIABLE = "CARABASE_NOTIFY_TIMEOUT"
SIGNALS = {"start": "/start", "success": "", "fail": "/fail"}


def notify_url(environ: Mapping[str, str] = os.environ) -> str | None:
    """The check URL from CARABASE_NOTIFY_URL or CARABASE_NOTIFY_URL_FILE; None when
    neither is set. A UserError (never quoting the URL) when it is unusable."""
    inline = environ.get("CARABASE_NOTIFY_URL", "").strip()
    path = environ.get("CARABASE_NOTIFY_URL_FILE", "")
    if inline and path:
        raise UserError("both CARABASE_NOTIFY_URL and CARABASE_NOTIFY_URL_FILE are set:"
                        " unset one of them")
    if inline:
        return check_url(inline, "CARABASE_NOTIFY_URL")
    if not path:
        return None
    path = os.path.expanduser(path)
    raw = crypto.read_private_file(path, "CARABASE_NOTIFY_URL_FILE", UserError)
    try:
        text = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        text = ""
    return check_url(text, f"CARABASE_NOTIFY_URL_FILE {path}")


def check_url(url: str, source: str) -> str:
    """`url` without a trailing slash, if it is one http(s) URL with a host."""
    try:
        parts = urlsplit(url)
        usable = (parts.scheme in ("http", "https") and bool(parts.hostname)
                  and not parts.query and not parts.fragment)
    except ValueError:  # a bad port, unbalanced brackets
        usable = False
    if not usable or any(char.isspace() or ord(char) < 0x20 for char in url):
        raise UserError(f"{source} is not a check URL: expected one line like"
                        " https://hc-ping.com/<uuid> (http or https, no query)")
    return url.rstrip("/")


def host_of(url: str) -> str:
    """What a message may say about `url`: its host, never its path or credentials."""
    try:
        return urlsplit(url).hostname or "the notify URL"
    except ValueError:
        return "the notify URL"


def timeout(environ: Mapping[str, str] = os.environ) -> float:
    configured = environ.get(TIMEOUT_VARIABLE, "").strip()
    if not configured:
        return TIMEOUT
    try:
        seconds = float(configured)
    except ValueError:
        seconds = 0.0
    return seconds if 0 < seconds <= 60 else TIMEOUT


def ping(url: str, signal: str, body: str = "", *, seconds: float | None = None,
         tries: int = TRIES) -> str | None:
    """POST `body` to the URL of `signal` (start, success or fail); None when it was
    received, else one line saying why not, naming only the host. Never raises, and
    returns within `seconds` (TIMEOUT) whatever the server does: each try may take all
    that is left of them."""
    import urllib.request  # here, not at the top: only nightly pings, and it costs startup

    seconds = timeout() if seconds is None else seconds
    request = urllib.request.Request(
        url + SIGNALS[signal], data=body.encode("utf-8", "replace"), method="POST",
        headers={"Content-Type": "text/plain; charset=utf-8", "User-Agent": "carabase-backup"})
    deadline = time.monotonic() + seconds
    reason, attempts = "not sent", 0
    while attempts < tries:
        if attempts:
            time.sleep(max(0.0, min(RETRY_PAUSE, (deadline - time.monotonic()) / 2)))
        left = deadline - time.monotonic()
        if left <= 0:
            break
        attempts += 1
        reason, retry = _try_once(request, left)
        if reason is None:
            return None
        if not retry:
            break
    tried = f" after {attempts} tries" if attempts > 1 else ""
    return f"{signal} ping to {host_of(url)} failed{tried}: {reason}"


def _try_once(request, seconds: float) -> tuple[str | None, bool]:
    """One POST that ends within `seconds`: (None, _) when the server took it, else
    (why not, whether another try may help). A timer shuts the connection's socket down
    at the deadline, which ends any read or write in progress."""
    import threading
    import urllib.error
    import urllib.request

    opened: list = []
    cut = threading.Event()

    def shut_down() -> None:
        cut.set()
        for connection in opened:
            if connection.sock is not None:
                try:
                    connection.sock.shutdown(socket.SHUT_RDWR)
                except OSError:  # closed already
                    pass

    opener = urllib.request.build_opener(_recording(urllib.request.HTTPHandler, opened),
                                         _recording(urllib.request.HTTPSHandler, opened))
    watchdog = threading.Timer(seconds, shut_down)
    watchdog.start()
    try:
        with opener.open(request, timeout=seconds) as response:
            try:
                response.read(1024)
            except Exception:  # the status line said the ping was taken: that is enough
                pass
        return None, False
    except urllib.error.HTTPError as error:
        # The server understood and said no (4xx): asking again won't help.
        return f"HTTP {error.code}", error.code >= 500
    except urllib.error.URLError as error:
        return ("timed out" if cut.is_set() else _describe(error.reason)), True
    except Exception as error:  # a ping must never end the job
        return ("timed out" if cut.is_set() else _describe(error)), True
    finally:
        watchdog.cancel()


def _recording(handler: type, opened: list) -> type:
    """`handler` (urllib's HTTP or HTTPS handler), keeping each connection it opens in
    `opened`, so that the watchdog can reach its socket."""
    class Recording(handler):
        def do_open(self, http_class, req, **kwargs):
            def connection(*args, **connection_kwargs):
                made = http_class(*args, **connection_kwargs)
                opened.append(made)
                return made
            return super().do_open(connection, req, **kwargs)
    return Recording


def _describe(error: object) -> str:
    """An error in a few words that cannot hold the URL: a socket error's text, or the
    error's type (some urllib messages quote the URL they were given)."""
    if isinstance(error, (TimeoutError, socket.timeout)):
        return "timed out"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return type(error).__name__
