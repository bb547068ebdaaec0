"""A real HTTP server on 127.0.0.1 that records the pings it receives, and endpoints
that fail: for the notify tests (helpers.notify, backup.nightly)."""
from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Ping:
    method: str
    path: str
    body: str


@contextmanager
def ping_server(statuses: list[int] | None = None, delays: list[float] | None = None):
    """A server on an ephemeral port; yields (its base URL, the list of Pings it got).
    It answers each request with the next of `statuses` (200 once they run out), after
    the next of `delays` in seconds (at once when they run out): a slow monitor."""
    received: list[Ping] = []
    pending = list(statuses or [])
    slowness = list(delays or [])

    class Recorder(BaseHTTPRequestHandler):
        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length).decode("utf-8", "replace")
            received.append(Ping("POST", self.path, body))
            time.sleep(slowness.pop(0) if slowness else 0)
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


@contextmanager
def trickling_endpoint(interval: float, response_bytes: int = 10_000):
    """A server that reads each request, then answers 200 one byte every `interval`
    seconds (a header line padded to `response_bytes`): never silent long enough for a
    per-read timeout to fire. Yields its base URL and the list of request paths."""
    paths: list[str] = []
    stop = threading.Event()
    head = b"HTTP/1.1 200 OK\r\nX-Slow: " + b"." * response_bytes + b"\r\n"
    answer = head + b"Content-Length: 2\r\n\r\nOK"

    def serve(connection: socket.socket) -> None:
        with connection:
            request = b""
            while b"\r\n\r\n" not in request and not stop.is_set():
                chunk = connection.recv(65536)
                if not chunk:
                    return
                request += chunk
            paths.append(request.split(b" ", 2)[1].decode())
            for byte in answer:
                if stop.wait(interval):
                    return
                try:
                    connection.sendall(bytes([byte]))
                except OSError:  # the client gave up
                    return

    def accept(listener: socket.socket) -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except OSError:  # closed: the test is over
                return
            threading.Thread(target=serve, args=(connection,), daemon=True).start()

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        thread = threading.Thread(target=accept, args=(listener,), daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{listener.getsockname()[1]}", paths
        finally:
            stop.set()
            listener.shutdown(socket.SHUT_RDWR)
    thread.join(5)
