"""The fast paths, end to end: pigz or plain gzip, and the progress line for people.

Every backup here restores to an identical database whichever program compressed it;
the progress line appears on a terminal and nowhere else.
"""
from __future__ import annotations

import gzip
import io
import os
import select
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from helpers import crypto
from tests.sample_db import snapshot
from tests.support import INVOKE, REPO, run_invoke, seal_backup, take_backup

REAL_PIGZ = shutil.which("pigz")
needs_pigz = pytest.mark.skipif(REAL_PIGZ is None,
                                reason="pigz is not installed (.ci/run installs it)")


@pytest.fixture
def calls(tmp_path):
    """The file where the recording compressors below write each command line."""
    return tmp_path / "compressor-calls.log"


def recording(directory: Path, program: str, calls: Path, real: str | None) -> None:
    """Put a `program` in `directory` that logs its arguments, then runs `real`
    (or fails, when `real` is None: a program that must not be used)."""
    then = f'exec {real} "$@"' if real else "echo \"$0: must not run\" >&2; exit 97"
    script = directory / program
    script.write_text(f'#!/bin/sh\necho "{program} $*" >> {calls}\n{then}\n')
    script.chmod(0o755)


def restore_into_new_database(environ, backup: Path, pg, database_factory) -> str:
    target = database_factory()
    result = run_invoke("backup.restore", "staging", str(backup), "--yes", env={
        **environ, "CARABASE_STAGING_DATABASE_URL": pg.url(target)})
    assert result.returncode == 0, result.stderr
    return target


def plain_gzip_of(backup: Path, key_file: Path) -> bytes:
    """The backup decrypted, then gunzipped by Python's own gzip: the format check."""
    decrypted = io.BytesIO()
    with backup.open("rb") as src:
        crypto.decrypt_stream(crypto.parse_key(key_file.read_text()), src, decrypted)
    return gzip.decompress(decrypted.getvalue())


# --- pigz and gzip ----------------------------------------------------------------------


@needs_pigz
def test_backup_with_pigz_restores_identically(dev_environ, tmp_path, calls, pg, source_db,
                                               database_factory, key_file):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    recording(bin_dir, "pigz", calls, REAL_PIGZ)
    recording(bin_dir, "gzip", calls, shutil.which("gzip"))
    environ = {**dev_environ, "PATH": f"{bin_dir}{os.pathsep}{dev_environ['PATH']}",
               "CARABASE_COMPRESS_THREADS": "2"}

    backup = take_backup(environ)
    compressed_by = calls.read_text().splitlines()
    target = restore_into_new_database(environ, backup, pg, database_factory)

    assert compressed_by == ["pigz -9 -p 2"]
    # Restore checks the stream while it decrypts (no `gzip -t` pass of its own), then
    # inflates once: with gzip, for a backup this small (ISA-L from 256 KiB, and gzip
    # where ISA-L cannot load: tests/unit/test_tasks_restore.py).
    assert calls.read_text().splitlines()[1:] == ["gzip -dc"]
    assert b'CREATE TABLE "public"."item"' in plain_gzip_of(backup, key_file)
    assert snapshot(pg, target) == snapshot(pg, source_db)


def test_backup_with_gzip_forced_restores_identically(dev_environ, tmp_path, calls, pg,
                                                      source_db, database_factory, key_file):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    recording(bin_dir, "pigz", calls, None)  # installed, but must not be used
    recording(bin_dir, "gzip", calls, shutil.which("gzip"))
    environ = {**dev_environ, "PATH": f"{bin_dir}{os.pathsep}{dev_environ['PATH']}",
               "CARABASE_COMPRESSOR": "gzip"}

    backup = take_backup(environ)
    compressed_by = calls.read_text().splitlines()
    target = restore_into_new_database(environ, backup, pg, database_factory)

    assert compressed_by == ["gzip -9"]
    assert "pigz" not in calls.read_text()
    assert b'CREATE TABLE "public"."item"' in plain_gzip_of(backup, key_file)
    assert snapshot(pg, target) == snapshot(pg, source_db)


def test_fast_profile_backup_restores_identically_and_plain_gunzip_reads_it(
        dev_environ, tmp_path, calls, pg, source_db, database_factory, key_file):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    recording(bin_dir, "pigz", calls, REAL_PIGZ)
    recording(bin_dir, "gzip", calls, shutil.which("gzip"))
    environ = {**dev_environ, "PATH": f"{bin_dir}{os.pathsep}{dev_environ['PATH']}",
               "CARABASE_COMPRESSION": "fast"}

    backup = take_backup(environ)
    compressed_by = calls.read_text() if calls.exists() else ""
    target = restore_into_new_database(environ, backup, pg, database_factory)
    decrypted = tmp_path / "fast.sql.gz"
    with backup.open("rb") as src, decrypted.open("wb") as dst:
        crypto.decrypt_stream(crypto.parse_key(key_file.read_text()), src, dst)
    gunzipped = subprocess.run(["gzip", "-dc", str(decrypted)], capture_output=True)

    assert compressed_by == ""  # ISA-L compressed, neither pigz nor gzip
    assert gunzipped.returncode == 0 and gunzipped.stdout == plain_gzip_of(backup, key_file)
    assert b'CREATE TABLE "public"."item"' in gunzipped.stdout
    assert snapshot(pg, target) == snapshot(pg, source_db)


@pytest.fixture
def path_without_pigz(tmp_path) -> str:
    """A PATH holding the tools the tasks run (bash, pg_dump, psql, gzip), and no pigz."""
    bin_dir = tmp_path / "no-pigz-bin"
    bin_dir.mkdir()
    for tool in ("bash", "pg_dump", "psql", "gzip"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    return str(bin_dir)


def test_pigz_requested_but_missing_is_refused_in_one_line(dev_environ, path_without_pigz,
                                                           backup_dir):
    environ = {**dev_environ, "PATH": path_without_pigz, "CARABASE_COMPRESSOR": "pigz"}

    result = run_invoke("backup.dev", env=environ)

    assert result.returncode != 0
    assert result.stderr.strip() == ("CARABASE_COMPRESSOR=pigz but pigz is not on PATH:"
                                     " install pigz (apt-get install pigz, brew install pigz)"
                                     " or unset CARABASE_COMPRESSOR")
    assert list(backup_dir.rglob("*.sql.gz*")) == []


def test_without_pigz_the_backup_falls_back_to_gzip(dev_environ, path_without_pigz, pg,
                                                    source_db, database_factory):
    environ = {**dev_environ, "PATH": path_without_pigz}

    backup = take_backup(environ)
    target = restore_into_new_database(environ, backup, pg, database_factory)

    assert snapshot(pg, target) == snapshot(pg, source_db)


@pytest.mark.parametrize("compressor", [
    pytest.param("pigz", marks=needs_pigz), "gzip",
])
@pytest.mark.parametrize("damage", ["truncated", "trailing junk"])
def test_restore_refuses_a_damaged_gzip_stream_whichever_program_checks_it(
        dev_environ, pg, source_db, master_key, tmp_path, compressor, damage):
    before = snapshot(pg, source_db)
    good = gzip.compress(b"DROP TABLE public.item CASCADE;\n" * 1000)
    bad = good[:-20] if damage == "truncated" else good + b"junk"
    backup = seal_backup(tmp_path / "2026-01-01T000000.sql.gz.enc", bad, master_key)

    result = run_invoke("backup.restore", "dev", str(backup), "--yes",
                        env={**dev_environ, "CARABASE_COMPRESSOR": compressor})

    assert result.returncode != 0 and "gzip stream is damaged" in result.stderr
    assert snapshot(pg, source_db) == before


# --- progress for people ----------------------------------------------------------------


def run_on_terminal(*args: str, env: dict[str, str], timeout: float = 120) -> tuple[int, str]:
    """`invoke <args>` with a pseudo-terminal as stdin, stdout and stderr, as a person
    runs it; returns the exit status and everything the terminal received."""
    controller, terminal = os.openpty()
    try:
        process = subprocess.Popen([INVOKE, "--search-root", str(REPO), *args], env=env,
                                   stdin=terminal, stdout=terminal, stderr=terminal)
        os.close(terminal)
        received = read_until_closed(controller, timeout)
        code = process.wait(timeout=timeout)
    finally:
        os.close(controller)
    return code, received.decode(errors="replace")


def read_until_closed(controller: int, timeout: float) -> bytes:
    """Everything written to the terminal until no process holds it any more."""
    received = []
    deadline = time.monotonic() + timeout
    while select.select([controller], [], [], max(deadline - time.monotonic(), 0))[0]:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO: the last holder closed the terminal
            break
        if not chunk:
            break
        received.append(chunk)
    return b"".join(received)


def run_into_file(*args: str, env: dict[str, str], log: Path) -> int:
    """`invoke <args>` with stdout and stderr appended to `log`, as cron runs it."""
    with log.open("a") as output:
        return subprocess.run([INVOKE, "--search-root", str(REPO), *args], env=env,
                              stdin=subprocess.DEVNULL, stdout=output, stderr=output,
                              timeout=120).returncode


def test_backup_on_a_terminal_shows_a_progress_line_then_its_summary(dev_environ):
    code, shown = run_on_terminal("backup.dev", env=dev_environ)

    assert code == 0, shown
    drawn, summary = shown.split("backup dev: wrote /", 1)
    assert "backup dev: wrote " in drawn and "B/s, 0:0" in drawn
    assert drawn.endswith(" \r")  # the line was blanked before the summary was printed
    assert ".sql.gz.enc" in summary


def test_restore_on_a_terminal_shows_the_percentage_of_the_file(dev_environ, pg, source_db,
                                                                database_factory):
    backup = take_backup(dev_environ)
    target = database_factory()
    environ = {**dev_environ, "CARABASE_STAGING_DATABASE_URL": pg.url(target)}

    code, shown = run_on_terminal("backup.restore", "staging", str(backup), "--yes",
                                  env=environ)

    assert code == 0, shown
    assert "restore into staging: read 100% of " in shown
    assert "restore into staging: restored " in shown
    assert snapshot(pg, target) == snapshot(pg, source_db)


def test_backup_and_restore_into_a_log_show_no_progress(dev_environ, pg, database_factory,
                                                        tmp_path):
    log = tmp_path / "cron.log"
    target = database_factory()
    environ = {**dev_environ, "CARABASE_STAGING_DATABASE_URL": pg.url(target)}

    assert run_into_file("backup.dev", env=environ, log=log) == 0
    [backup] = (tmp_path / "backups" / "dev").glob("*/*.sql.gz.enc")
    assert run_into_file("backup.restore", "staging", str(backup), "--yes", env=environ,
                         log=log) == 0

    text = log.read_text()
    assert "backup dev: wrote " in text and "restore into staging: restored " in text
    assert " at " not in text and "\r" not in text  # no "... 1.2 MiB at 3.4 MiB/s" lines
