"""A real S3 server for the off-site tests: `rclone serve s3` on 127.0.0.1, serving a
folder (each top-level directory is a bucket), with access keys made for the run.

The keys reach the server through its environment (RCLONE_AUTH_KEY), and the clients
through an rclone config file (0600), so that no secret is ever in a process's argv.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from helpers import offsite


def rclone() -> str:
    return str(offsite.bundled_rclone() or offsite.rclone_on_path())


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class S3Server:
    """`rclone serve s3` over `backing`; start(), stop() (SIGKILL: a crash), restart."""

    def __init__(self, backing: Path, log: Path):
        self.backing = backing
        self.log = log
        self.port = free_port()
        self.access_key = "AK" + os.urandom(9).hex().upper()
        self.secret_key = os.urandom(20).hex()
        self.process: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> S3Server:
        self.backing.mkdir(parents=True, exist_ok=True)
        environ = {name: value for name, value in os.environ.items()
                   if not name.startswith("RCLONE_")}
        # CSV, hence the inner quotes.
        environ["RCLONE_AUTH_KEY"] = f'"{self.access_key},{self.secret_key}"'
        environ["RCLONE_CONFIG"] = os.devnull
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [rclone(), "serve", "s3", "--addr", f"127.0.0.1:{self.port}",
                 str(self.backing)],
                env=environ, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"rclone serve s3 exited: {self.log.read_text()[-500:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError("rclone serve s3 did not start listening within 15 s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)
        self.process = None

    def bucket(self, name: str) -> Path:
        path = self.backing / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def config(self, remote: str, secret: str | None = None, endpoint: str | None = None) -> str:
        """An rclone config section for this server."""
        return (f"[{remote}]\ntype = s3\nprovider = Rclone\n"
                f"endpoint = {endpoint or self.endpoint}\n"
                f"access_key_id = {self.access_key}\n"
                f"secret_access_key = {secret or self.secret_key}\n")


def write_config(path: Path, *sections: str) -> Path:
    path.write_text("\n".join(sections))
    path.chmod(0o600)
    return path


def upload(source: Path, destination: str, config: Path) -> None:
    """Put the files under `source` on a remote with rclone itself (serve s3 caches its
    listings, so the tests never write into its folder behind its back)."""
    environ = {name: value for name, value in os.environ.items()
               if not name.startswith("RCLONE_")}
    subprocess.run([rclone(), "copy", str(source), destination], check=True, timeout=60,
                   env={**environ, "RCLONE_CONFIG": str(config)}, capture_output=True)


def offsite_files(root: Path) -> set[str]:
    """The files below `root` as the remote shows them: hidden temporary files excluded
    (serve s3 hides its .rclone_temp_* uploads; rclone hides nothing on folders)."""
    return {str(path.relative_to(root)) for path in root.rglob("*")
            if path.is_file() and not path.name.startswith(".rclone_temp_")}
