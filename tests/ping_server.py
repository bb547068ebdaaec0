"""A real HTTP server on 127.0.0.1 that records the pings it receives, and endpoints
that fail: for the notify tests (helpers.notify, backup.nightly)."""
from __future__ import annotations

import socket
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Ping:
    method: str
    path: str
    body: str


@contextmanager
def ping_server(statuses: list[int] | None = None):
    """A server on an ephemeral port; yields (its base URL, the list of Pings it got).
    It answers each request with the next of `statuses` (200 once they run out)."""
    received: list[Ping] = []
    pending = list(statuses or [])

    class Recorder(BaseHTTPRequestHandler):
        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length).decode("utf-8", "replace")
            received.append(Ping("POST", self.path, body))
            status = pending.pop(0) if pending else 200
            self.send_response(status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"OK")

        do_GET = do_HEAD = do_POST

        def log_message(self, *args):  # keep the test output quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", received
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def closed_port() -> int:
    """A port with nothing listening: connecting fails at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def silent_endpoint():
    """A port that accepts connections (the kernel does) but never answers: every
    request waits for its timeout. Yields its base URL."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
