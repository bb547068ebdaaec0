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

TIMEOUT = 10.0  # seconds per try
TRIES = 3
RETRY_PAUSE = 1.0  # seconds between tries (never longer than the timeout)
# Only for tests, which need a dead endpoint to cost less than 3 x 10 s.
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
    received, else one line saying why not, naming only the host. Never raises."""
    import urllib.error  # here, not at the top: only nightly pings, and it costs startup
    import urllib.request

    seconds = timeout() if seconds is None else seconds
    request = urllib.request.Request(
        url + SIGNALS[signal], data=body.encode("utf-8", "replace"), method="POST",
        headers={"Content-Type": "text/plain; charset=utf-8", "User-Agent": "carabase-backup"})
    reason, attempts = "not sent", 0
    while attempts < tries:
        if attempts:
            time.sleep(min(RETRY_PAUSE, seconds))
        attempts += 1
        try:
            with urllib.request.urlopen(request, timeout=seconds) as response:
                response.read(1024)
            return None
        except urllib.error.HTTPError as error:
            reason = f"HTTP {error.code}"
            if error.code < 500:  # the server understood and said no: asking again won't help
                break
        except urllib.error.URLError as error:
            reason = _describe(error.reason)
        except Exception as error:  # a ping must never end the job
            reason = _describe(error)
    tried = f" after {attempts} tries" if attempts > 1 else ""
    return f"{signal} ping to {host_of(url)} failed{tried}: {reason}"


def _describe(error: object) -> str:
    """An error in a few words that cannot hold the URL: a socket error's text, or the
    error's type (some urllib messages quote the URL they were given)."""
    if isinstance(error, (TimeoutError, socket.timeout)):
        return "timed out"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return type(error).__name__
