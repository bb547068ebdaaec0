"""The restore lock (helpers.server_lock): two restores, or a restore and an undo-restore,
of one database exclude each other whatever their environment, because the database's
server holds the lock; the second is refused at once, in one line naming the first."""
from __future__ import annotations

import gzip
import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from helpers import swap
from tests.e2e.test_faults import start_invoke
from tests.support import run_invoke, seal_backup, take_backup, wait_for

GATE = "carabase-test-gate"  # the application name of the session that lets a restore on


def gated_backup(folder: Path, key: str) -> Path:
    """A backup whose apply creates a table, then waits (up to a minute) until a session
    named GATE appears: a restore held before its swap for as long as a test needs."""
    sql = ("CREATE TABLE public.from_the_first_restore (id int);\n"
           "INSERT INTO public.from_the_first_restore VALUES (1);\n"
           "DO $$ BEGIN\n"
           "  FOR i IN 1..1200 LOOP  -- a minute at most\n"
           "    EXIT WHEN EXISTS (SELECT FROM pg_stat_activity"
           f" WHERE application_name = '{GATE}');\n"
           "    PERFORM pg_sleep(0.05), pg_stat_clear_snapshot();  -- a fresh look next\n"
           "  END LOOP;\n"
           "END $$;\n")
    return seal_backup(folder / "2026-03-01T031700.sql.gz.enc", gzip.compress(sql.encode()), key)


@pytest.fixture
def gate(pg):
    """open(): a session named GATE, which lets a gated restore go on."""
    sessions: list[subprocess.Popen] = []

    def open_gate() -> None:
        sessions.append(subprocess.Popen(
            ["psql", "-X", "-q", "-d", "postgres"], stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL, env={**os.environ, **pg.libpq_env(), "PGAPPNAME": GATE}))

    yield open_gate
    for session in sessions:
        session.stdin.close()
        session.wait(timeout=30)


def tables(pg, dbname: str) -> list[str]:
    return pg.psql(dbname, "select tablename from pg_tables where schemaname = 'public'"
                           " order by 1").split()


def elsewhere(environ: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """The same env run from another shell: its own runtime directory, backup tree and
    TMPDIR, and the database's URL spelled another way."""
    for name in ("run", "tree", "tmp"):
        (tmp_path / "elsewhere" / name).mkdir(parents=True)
    url = environ["CARABASE_DEV_DATABASE_URL"]
    return {**environ, "XDG_RUNTIME_DIR": str(tmp_path / "elsewhere" / "run"),
            "CARABASE_BACKUP_DIR": str(tmp_path / "elsewhere" / "tree"),
            "TMPDIR": str(tmp_path / "elsewhere" / "tmp"),
            "CARABASE_DEV_DATABASE_URL": url + ("&" if "?" in url else "?")
            + "connect_timeout=30"}


def test_a_second_restore_or_undo_of_the_same_database_from_elsewhere_is_refused_at_once(
        pg, dev_environ, source_db, database_factory, master_key, tmp_path, gate):
    good = take_backup(dev_environ)
    database_factory.adopt(swap.undo_name(source_db))
    runtime = tmp_path / "run"
    runtime.mkdir()
    first_environ = {**dev_environ, "XDG_RUNTIME_DIR": str(runtime)}
    first = start_invoke("backup.restore", "dev", str(gated_backup(tmp_path, master_key)),
                         "--yes", env=first_environ)
    try:
        wait_for(lambda: swap.restoring_name(source_db) in pg.psql(
            "postgres", "select datname from pg_stat_activity"), "the first restore's apply")
        second_environ = elsewhere(dev_environ, tmp_path)
        second = run_invoke("backup.restore", "dev", str(good), "--yes", env=second_environ)
        undo = run_invoke("backup.undo-restore", "dev", "--yes", env=second_environ)
        assert first.poll() is None  # still held before its swap
    finally:
        gate()
    out, err = first.communicate(timeout=120)

    holder = f"carabase restore into dev (pid {first.pid} on {socket.gethostname()})"[:63]
    for action, refused in (("restore into dev", second), ("undo-restore dev", undo)):
        assert refused.returncode == 1
        [line] = refused.stderr.splitlines()
        assert line.startswith(f"{action} refused: another restore or undo-restore of"
                               f" {source_db} on this server is running ({holder}, as role ")
        assert line.endswith("); try again when it has finished")
        assert refused.stdout == ""
    assert first.returncode == 0, err
    assert f"restored {tmp_path / '2026-03-01T031700.sql.gz.enc'}" in out
    assert tables(pg, source_db) == ["from_the_first_restore"]  # the first one's data
    assert "item" in tables(pg, swap.undo_name(source_db))  # what dev held before
    assert pg.psql("postgres", "select count(*) from pg_database where datname ="
                               f" '{swap.restoring_name(source_db)}'").strip() == "0"
    assert list(runtime.iterdir()) == []  # no lock file left anywhere
    assert list((tmp_path / "elsewhere" / "run").iterdir()) == []


def test_the_lock_goes_with_a_restore_killed_by_sigkill(pg, dev_environ, source_db,
                                                        database_factory, master_key, tmp_path):
    good = take_backup(dev_environ)
    database_factory.adopt(swap.undo_name(source_db))
    killed = start_invoke("backup.restore", "dev", str(gated_backup(tmp_path, master_key)),
                          "--yes", env=dev_environ)
    wait_for(lambda: swap.restoring_name(source_db) in pg.psql(
        "postgres", "select datname from pg_stat_activity"), "the apply to be under way")
    os.kill(killed.pid, signal.SIGKILL)
    killed.communicate(timeout=30)

    # No waiting: the lock's psql read the end of its pipe and left as we died.
    after = run_invoke("backup.restore", "dev", str(good), "--yes",
                       env=elsewhere(dev_environ, tmp_path))
    assert after.returncode == 0, after.stderr
    assert "item" in tables(pg, source_db)
