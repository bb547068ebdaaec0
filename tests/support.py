"""What the tests share: running invoke as a user types it, and a clean environment."""
from __future__ import annotations

import contextlib
import io
import os
import shlex
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from helpers import crypto

REPO = Path(__file__).resolve().parents[1]
# The `invoke` script of the environment running the tests, as a user would call it.
INVOKE = shutil.which("invoke", path=str(Path(sys.executable).parent)) or "invoke"

# Variables that would let the developer's own setup leak into a test.
_SCRUBBED_PREFIXES = ("HOST_MASTER_KEY", "CARABASE_")


def clean_environ(home: Path, backup_dir: Path, **extra: str) -> dict[str, str]:
    """os.environ without any Carabase or key variable, with HOME and the backup dir set."""
    environ = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(_SCRUBBED_PREFIXES)
    }
    environ.update(HOME=str(home), CARABASE_BACKUP_DIR=str(backup_dir), **extra)
    return environ


def run_invoke(*args: str, env: dict[str, str], input: str | None = None, stdin=None,
               timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    """`invoke --search-root REPO <args>` in a subprocess; output captured as text.

    Standard input is empty unless `input` (text) or `stdin` (a file descriptor) is given.
    """
    if input is None and stdin is None:
        stdin = subprocess.DEVNULL
    return subprocess.run(
        [INVOKE, "--search-root", str(REPO), *args],
        env=env,
        input=input,
        stdin=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )


def seal_backup(path: Path, compressed: bytes, key_hex: str) -> Path:
    """A backup file made by hand, as a foreign tool would: `compressed` (a gzip stream,
    or deliberately damaged bytes) in the version-1 envelope under `key_hex`."""
    envelope = io.BytesIO()
    crypto.encrypt_stream(bytes.fromhex(key_hex), io.BytesIO(compressed), envelope)
    path.write_bytes(envelope.getvalue())
    return path


def take_backup(environ: dict[str, str], env: str = "dev") -> Path:
    """Run `invoke backup.<env>`, insist that it worked, return the backup it reports."""
    result = run_invoke(f"backup.{env}", env=environ)
    assert result.returncode == 0, result.stderr
    return Path(result.stdout.split(" wrote ", 1)[1].split(" (", 1)[0])


def pipeline_on_lifeline(command: str) -> str:
    """The bash pipeline in a command that tasks.py runs on a lifeline
    (`python -m helpers.lifeline bash -c PIPELINE`, see helpers.process.on_lifeline)."""
    words = shlex.split(command)
    assert words[:5] == [sys.executable, "-m", "helpers.lifeline", "bash", "-c"], command
    return words[5]


def write_script(path: Path, body: str) -> Path:
    """An executable /bin/sh script at `path` (a stand-in program for PATH)."""
    path.write_text("#!/bin/sh\n" + textwrap.dedent(body))
    path.chmod(0o755)
    return path


def wait_for(condition, what: str, timeout: float = 60):
    """Poll until `condition()` is truthy (a process reaching a state, not a date)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@contextlib.contextmanager
def read_only(path: Path):
    """`path` read-only for the duration, for root too (which ignores mode bits): a
    read-only bind mount of it over itself. Skips the test where mounting is not
    permitted (no root, no CAP_SYS_ADMIN in a container)."""
    import pytest

    mounted = subprocess.run(["mount", "--bind", str(path), str(path)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot bind-mount {path} read-only here: {mounted.stderr.strip()}")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(path)], check=True,
                       capture_output=True)
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True, capture_output=True)
