"""Faults, for real: killed dumps, signals, a full disk, overlapping runs, tampering, leaks.

After each fault: nothing broken is published, earlier backups are byte-identical, and
no temporary file is left where it could be mistaken for a backup.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from helpers import crypto, swap
from helpers.config import parse_database_url
from tests.sample_db import create_varied_database, snapshot
from tests.support import INVOKE, REPO, run_invoke, seal_backup, wait_for

EARLIER = "2026-01-01/2026-01-01T031700.sql.gz.enc"  # an older backup already in the tree


# --- helpers ------------------------------------------------------------------------


def start_invoke(*args: str, env: dict[str, str]) -> subprocess.Popen:
    """invoke in its own session, so a test can signal it (or its group) alone."""
    return subprocess.Popen([INVOKE, "--search-root", str(REPO), *args], env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)


def send_signal(process: subprocess.Popen, signum: int, whole_group: bool) -> None:
    """As a terminal's Ctrl-C does (every process of the group), or as `kill <pid>`."""
    if whole_group:
        os.killpg(process.pid, signum)
    else:
        os.kill(process.pid, signum)


def partials(backup_dir: Path) -> list[Path]:
    return sorted(backup_dir.rglob(".*.partial"))


def published(backup_dir: Path, env: str = "dev") -> list[Path]:
    return sorted((backup_dir / env).glob("*/*.sql.gz.enc"))


def dump_is_streaming(backup_dir: Path) -> bool:
    """pg_dump's output has reached the partial file. Not merely a non-empty file: the
    encrypt filter writes its 13-byte header as soon as it starts, and with
    PYTHONUNBUFFERED=1 that header is on disk before pg_dump may even have started (on
    Debian, pg_dump runs as perl's pg_wrapper for its first 0.2 s). Anything past the
    header is ciphertext of pg_dump's compressed output: pg_dump is running."""
    return any(path.stat().st_size > crypto.HEADER_SIZE for path in partials(backup_dir))


def plant_earlier_backup(backup_dir: Path, env: str = "dev") -> tuple[Path, str]:
    path = backup_dir / env / EARLIER
    path.parent.mkdir(parents=True)
    path.write_bytes(os.urandom(4096))
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def unchanged(path: Path, digest: str) -> bool:
    return hashlib.sha256(path.read_bytes()).hexdigest() == digest


def our_backends(pg, dbname: str) -> int:
    return int(pg.psql("postgres", "select count(*) from pg_stat_activity where application_name"
                                   f" = 'carabase-backup' and datname = '{dbname}'"))


def assert_backup_decrypts_and_gunzips(path: Path, key_hex: str) -> None:
    plaintext = io.BytesIO()
    with path.open("rb") as src:
        crypto.decrypt_stream(bytes.fromhex(key_hex), src, plaintext)
    sql = gzip.decompress(plaintext.getvalue()).decode()
    # The trailer pg_dump writes last (newer ones add a \unrestrict line after it).
    assert "-- PostgreSQL database dump complete" in sql[-300:]


@pytest.fixture(scope="module")
def big_db(pg):
    """A database whose plain gzip -9 dump takes several seconds here."""
    name = pg.create_database("carabase_big")
    pg.psql(name, "create table filler as select g as id, md5(g::text) || md5((g + 1)::text)"
                  " || md5((g + 2)::text) || md5((g + 3)::text) as body"
                  " from generate_series(1, 1000000) g")
    yield name
    pg.drop_database(name)


@pytest.fixture
def big_environ(keyed_environ, pg, big_db):
    # Plain gzip: the slow compressor keeps the dump mid-stream long enough to act on.
    return {**keyed_environ, "CARABASE_DEV_DATABASE_URL": pg.url(big_db),
            "CARABASE_COMPRESSOR": "gzip",
            "CARABASE_PROD_DATABASE_URL": pg.url("carabase_prod_absent")}


# --- 1. the dump's connection is terminated --------------------------------------------


def test_terminated_dump_connection_fails_clearly_and_publishes_nothing(
        big_environ, pg, big_db, backup_dir):
    earlier, digest = plant_earlier_backup(backup_dir)
    backup = start_invoke("backup.dev", env=big_environ)
    wait_for(lambda: dump_is_streaming(backup_dir), "the dump to stream")

    pg.psql("postgres", "select pg_terminate_backend(pid) from pg_stat_activity where"
                        f" application_name = 'carabase-backup' and datname = '{big_db}'")
    stdout, stderr = backup.communicate(timeout=60)

    assert backup.returncode != 0
    assert "pg_dump" in stderr
    assert "terminating connection" in stderr or "server closed the connection" in stderr
    assert len(stderr.strip().splitlines()) == 1 and "Traceback" not in stderr
    assert published(backup_dir) == [earlier] and partials(backup_dir) == []
    assert unchanged(earlier, digest)


# --- 2. SIGKILL of the whole process group ------------------------------------------


def test_sigkilled_backup_leaves_no_backup_and_the_next_one_cleans_up(
        big_environ, pg, backup_dir, database_factory):
    earlier, digest = plant_earlier_backup(backup_dir)
    backup = start_invoke("backup.dev", env=big_environ)
    wait_for(lambda: dump_is_streaming(backup_dir), "the dump to stream")

    os.killpg(backup.pid, signal.SIGKILL)
    backup.wait(timeout=30)

    assert published(backup_dir) == [earlier] and unchanged(earlier, digest)
    [leftover] = partials(backup_dir)  # a SIGKILLed process cleans nothing up...
    status = run_invoke("backup.status", "--json", env=big_environ)
    [dev] = [env for env in json.loads(status.stdout)["envs"] if env["env"] == "dev"]
    assert dev["latest"].startswith("2026-01-01T03:17:00")  # ...and status ignores it

    small = database_factory(create_varied_database)
    after = run_invoke("backup.dev", env={**big_environ,
                                          "CARABASE_DEV_DATABASE_URL": pg.url(small)})

    assert after.returncode == 0, after.stderr  # no stale lock
    assert not leftover.exists() and partials(backup_dir) == []
    assert len(published(backup_dir)) == 2 and unchanged(earlier, digest)


# --- 3. a full filesystem -----------------------------------------------------------


@pytest.fixture
def tiny_filesystem(tmp_path):
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs",
                              str(mount_point)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


def test_backup_onto_full_filesystem_names_the_lack_of_space_and_keeps_older_backups(
        big_environ, tiny_filesystem):
    backup_dir = tiny_filesystem / "backups"
    earlier, digest = plant_earlier_backup(backup_dir)

    result = run_invoke("backup.dev", env={**big_environ,
                                           "CARABASE_BACKUP_DIR": str(backup_dir)})

    assert result.returncode != 0
    assert "No space left on device" in result.stderr and "free some space" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert published(backup_dir) == [earlier] and unchanged(earlier, digest)
    assert partials(backup_dir) == []


# --- 4. two backups of one env at once ----------------------------------------------


def test_overlapping_backups_of_one_env_never_collide(big_environ, backup_dir, master_key):
    first = start_invoke("backup.dev", env=big_environ)
    wait_for(lambda: partials(backup_dir), "the first backup to start")
    second = start_invoke("backup.dev", env=big_environ)

    second_out, second_err = second.communicate(timeout=120)
    first_out, first_err = first.communicate(timeout=120)

    assert first.returncode == 0, first_err
    assert second.returncode != 0
    assert "another backup or prune of dev is running" in second_err
    [backup] = published(backup_dir)
    assert_backup_decrypts_and_gunzips(backup, master_key)


# --- 5. restore interrupted while applying ------------------------------------------


@pytest.fixture
def slow_restore(keyed_environ, pg, database_factory, master_key, tmp_path):
    """A dev database and a backup that changes it, then dawdles before committing."""
    target = database_factory(create_varied_database)
    sql = b"CREATE TABLE public.from_the_backup (id int);\nSELECT pg_sleep(60);\n"
    backup = seal_backup(tmp_path / "2026-02-02T031700.sql.gz.enc", gzip.compress(sql),
                         master_key)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    environ = {**keyed_environ, "CARABASE_DEV_DATABASE_URL": pg.url(target),
               "CARABASE_PROD_DATABASE_URL": pg.url("carabase_prod_absent"),
               "TMPDIR": str(scratch)}
    return target, backup, environ, scratch


def sleeping_in(pg, dbname: str) -> bool:
    return pg.psql("postgres", "select count(*) from pg_stat_activity where query like"
                               f" '%pg_sleep%' and datname = '{dbname}'"
                               " and application_name = 'carabase-backup'").strip() != "0"


def databases_like(pg, target: str) -> list[str]:
    """The target and any database a restore of it made (undo copy, half-built one)."""
    return pg.psql("postgres", "select datname from pg_database where datname like"
                               f" '{target}%' order by 1").split()


@pytest.mark.parametrize("signum, whole_group", [
    (signal.SIGINT, True),    # Ctrl-C at a terminal: every process of the group
    (signal.SIGTERM, False),  # kill <pid>: invoke alone must stop psql itself
])
def test_interrupted_restore_changes_nothing_and_removes_its_tempfile(
        pg, slow_restore, signum, whole_group):
    target, backup, environ, scratch = slow_restore
    before = snapshot(pg, target)
    restore = start_invoke("backup.restore", "dev", str(backup), "--yes", env=environ)
    wait_for(lambda: sleeping_in(pg, swap.restoring_name(target)), "psql to apply the backup")

    send_signal(restore, signum, whole_group)
    stdout, stderr = restore.communicate(timeout=30)

    assert restore.returncode == 128 + signum
    assert "interrupted" in stderr and "nothing was changed" in stderr
    assert list(scratch.iterdir()) == []
    assert snapshot(pg, target) == before
    # The half-built database went with the restore that built it.
    assert databases_like(pg, target) == [target]


# --- 6. tampering -------------------------------------------------------------------


def tamper(data: bytes, how: str) -> bytes:
    data = bytearray(data)
    if how == "truncated":
        return bytes(data[:-100])
    if how == "appended":
        return bytes(data) + b"\n"
    index = {"version": 0, "iv": 6, "middle": len(data) // 2, "tag": len(data) - 3}[how]
    data[index] ^= 0x80
    return bytes(data)


@pytest.mark.parametrize("how, message", [
    ("version", "unknown envelope version"),
    ("iv", "authentication failed"),
    ("middle", "authentication failed"),
    ("tag", "authentication failed"),
    ("truncated", "authentication failed"),
    ("appended", "authentication failed"),
])
def test_tampered_backup_is_refused_and_database_untouched(
        keyed_environ, pg, database_factory, tmp_path, how, message):
    source = database_factory(create_varied_database)
    environ = {**keyed_environ, "CARABASE_DEV_DATABASE_URL": pg.url(source),
               "CARABASE_PROD_DATABASE_URL": pg.url("carabase_prod_absent")}
    good = run_invoke("backup.dev", env=environ)
    assert good.returncode == 0, good.stderr
    [backup] = published(Path(environ["CARABASE_BACKUP_DIR"]))
    tampered = tmp_path / backup.name
    tampered.write_bytes(tamper(backup.read_bytes(), how))
    pg.psql(source, "update item set name = 'changed since the backup'")
    before = snapshot(pg, source)

    result = run_invoke("backup.restore", "dev", str(tampered), "--yes", env=environ)

    assert result.returncode != 0 and message in result.stderr
    assert snapshot(pg, source) == before


# --- 7. secrets ---------------------------------------------------------------------


def all_command_lines() -> list[str]:
    lines = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                lines.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(
                    errors="replace"))
            except OSError:
                pass  # the process ended meanwhile
    return lines


def sample_command_lines(process: subprocess.Popen) -> tuple[list[str], str, str]:
    """Every argument list seen on the machine while `process` runs."""
    seen = []
    while process.poll() is None:
        seen.extend(all_command_lines())
    stdout, stderr = process.communicate()
    return seen, stdout, stderr


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs /proc")
def test_key_and_password_never_reach_argv_output_logs_or_files(
        environ, pg, big_db, database_factory, tmp_path, master_key):
    password = "pw-" + os.urandom(8).hex()  # trust auth ignores it, libpq still carries it
    url = pg.url(big_db).replace(f"{pg.user}@", f"{pg.user}:{password}@", 1)
    assert password in url
    secret_environ = {**environ, "HOST_MASTER_KEY": master_key,
                      "CARABASE_DEV_DATABASE_URL": url, "CARABASE_COMPRESSOR": "gzip",
                      "CARABASE_PROD_DATABASE_URL": pg.url("carabase_prod_absent")}
    backup_dir = Path(environ["CARABASE_BACKUP_DIR"])
    cron_log = tmp_path / "cron.log"

    # A scheduled run: backup then prune, output appended to cron.log.
    with cron_log.open("a") as log:
        scheduled = subprocess.Popen(
            [INVOKE, "--search-root", str(REPO), "backup.dev", "backup.prune", "dev"],
            env=secret_environ, stdin=subprocess.DEVNULL, stdout=log, stderr=log, text=True)
        backup_argv, _, _ = sample_command_lines(scheduled)
    assert scheduled.returncode == 0, cron_log.read_text()
    assert any("pg_dump" in line for line in backup_argv)  # the sampling saw the dump

    [backup] = published(backup_dir)
    target = f"{big_db}_restored"
    database_factory.adopt(target)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    restore = start_invoke("backup.restore", "staging", str(backup), "--yes", env={
        **secret_environ, "TMPDIR": str(scratch),
        "CARABASE_STAGING_DATABASE_URL": url.replace(f"/{big_db}", f"/{target}")})
    tempfile_modes = set()
    restore_argv = []
    while restore.poll() is None:
        restore_argv.extend(all_command_lines())
        for path in scratch.iterdir():
            try:  # the restore creates and removes them as it goes
                tempfile_modes.add((path.is_dir(), path.stat().st_mode & 0o777))
            except FileNotFoundError:
                pass
    restore_out, restore_err = restore.communicate()
    assert restore.returncode == 0, restore_err
    assert any("psql" in line for line in restore_argv)

    failing = run_invoke("backup.dev", env={**secret_environ, "CARABASE_DEV_DATABASE_URL":
                                            url.replace(f"/{big_db}", "/no_such_db")})
    assert failing.returncode != 0

    texts = backup_argv + restore_argv + [
        cron_log.read_text(), restore_out, restore_err, failing.stdout, failing.stderr]
    texts += [str(path) for path in backup_dir.rglob("*")]
    texts += [path.read_bytes().decode(errors="replace") for path in backup_dir.rglob("*")
              if path.is_file()]
    for secret in (master_key, password):
        assert not [text for text in texts if secret in text]
    assert tempfile_modes <= {(False, 0o600), (True, 0o700)}
    assert list(scratch.iterdir()) == []


# --- 8. Ctrl-C and SIGTERM during a backup ------------------------------------------


@pytest.mark.parametrize("signum, whole_group", [
    (signal.SIGINT, True),
    (signal.SIGTERM, False),
])
def test_interrupted_backup_publishes_nothing_and_exits_128_plus_signal(
        big_environ, pg, big_db, backup_dir, signum, whole_group):
    earlier, digest = plant_earlier_backup(backup_dir)
    backup = start_invoke("backup.dev", env=big_environ)
    wait_for(lambda: dump_is_streaming(backup_dir), "the dump to stream")

    send_signal(backup, signum, whole_group)
    stdout, stderr = backup.communicate(timeout=30)

    assert backup.returncode == 128 + signum
    assert "interrupted" in stderr and "nothing was published" in stderr
    assert published(backup_dir) == [earlier] and unchanged(earlier, digest)
    assert partials(backup_dir) == []
    wait_for(lambda: our_backends(pg, big_db) == 0, "pg_dump to disconnect", timeout=10)


# --- 9. the decompression dies half-way through a restore ---------------------------


def processes_running(program: str, *words: str) -> list[int]:
    """Pids of `program` (by argv[0]) whose arguments contain each of `words`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            except OSError:
                continue
            if Path(argv[0]).name == program and all(
                    any(word in arg for arg in argv[1:]) for word in words):
                found.append(int(entry.name))
    return found


def copying_into(pg, dbname: str) -> bool:
    return pg.psql("postgres", "select count(*) from pg_stat_activity where query like"
                               f" 'COPY%' and datname = '{dbname}'"
                               " and application_name = 'carabase-backup'").strip() != "0"


def test_restore_whose_decompression_is_killed_midway_commits_nothing(
        big_environ, pg, database_factory, backup_dir, tmp_path):
    backup = run_invoke("backup.dev", env=big_environ)
    assert backup.returncode == 0, backup.stderr
    [big_backup] = published(backup_dir)
    target = database_factory()
    pg.psql(target, "create table filler (id int primary key, body text);"
                    " insert into filler select g, 'original' from generate_series(1, 5) g")
    before = snapshot(pg, target)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    restore = start_invoke("backup.restore", "staging", str(big_backup), "--yes", env={
        **big_environ, "TMPDIR": str(scratch), "CARABASE_STAGING_DATABASE_URL": pg.url(target)})
    wait_for(lambda: copying_into(pg, swap.restoring_name(target)), "psql to be copying rows")

    # The inflater: ISA-L's, run by the project's Python (python or python3), reading the
    # decrypted file on its standard input.
    [inflater] = [pid for python in ("python", "python3")
                  for pid in processes_running(python, "isal.igzip", "-dc")]
    os.kill(inflater, signal.SIGKILL)
    stdout, stderr = restore.communicate(timeout=60)

    assert restore.returncode != 0 and "nothing was changed" in stderr
    assert snapshot(pg, target) == before
    assert databases_like(pg, target) == [target]
    assert list(scratch.iterdir()) == []


# --- 10. the controlling process alone is SIGKILLed ---------------------------------


def files_open_by_anyone(path: Path) -> list[int]:
    """Pids of the processes that hold `path` open."""
    holders = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if any(os.readlink(fd) == str(path) for fd in (entry / "fd").iterdir()):
                    holders.append(int(entry.name))
            except OSError:
                continue  # ended meanwhile, or not ours to look at
    return holders


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="needs /proc")
def test_kill_9_of_the_backup_process_stops_its_dump_within_seconds(
        big_environ, pg, big_db, backup_dir):
    earlier, digest = plant_earlier_backup(backup_dir)
    # pg_dump's argv holds the password-free URL, unique to this test's server.
    uri = parse_database_url(big_environ["CARABASE_DEV_DATABASE_URL"], "V").uri
    backup = start_invoke("backup.dev", env=big_environ)
    wait_for(lambda: dump_is_streaming(backup_dir), "the dump to stream")
    [partial] = partials(backup_dir)
    assert processes_running("pg_dump", uri) and files_open_by_anyone(partial)

    os.kill(backup.pid, signal.SIGKILL)  # invoke alone, as `kill -9 <pid>` does
    backup.wait(timeout=10)
    killed = time.monotonic()

    wait_for(lambda: not processes_running("pg_dump", uri), "pg_dump to stop", timeout=5)
    wait_for(lambda: our_backends(pg, big_db) == 0, "pg_dump's backend to go", timeout=5)
    wait_for(lambda: not files_open_by_anyone(partial), "the pipeline to stop", timeout=5)
    assert time.monotonic() - killed < 3
    assert published(backup_dir) == [earlier] and unchanged(earlier, digest)
    assert partials(backup_dir) == [partial]  # the next backup or prune removes it


# --- 11. a table locked by another session ------------------------------------------


@pytest.fixture
def locked_table(pg, database_factory):
    """A database whose table `busy` another session holds ACCESS EXCLUSIVE."""
    name = database_factory()
    pg.psql(name, "create table busy (id int); insert into busy values (1)")
    holder = subprocess.Popen(["psql", "-X", "-q", "-At", "-d", name], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True,
                              env={**os.environ, **pg.libpq_env()})
    holder.stdin.write("begin; lock table busy in access exclusive mode; select 'locked';\n")
    holder.stdin.flush()
    assert holder.stdout.readline().strip() == "locked"
    yield name
    holder.stdin.close()  # psql ends, the transaction rolls back, the lock goes
    holder.wait(timeout=30)


def test_backup_behind_a_held_table_lock_gives_up_after_the_timeout_and_says_so(
        keyed_environ, pg, locked_table, backup_dir):
    environ = {**keyed_environ, "CARABASE_DEV_DATABASE_URL": pg.url(locked_table),
               "CARABASE_LOCK_WAIT_TIMEOUT": "1"}
    started = time.monotonic()

    result = run_invoke("backup.dev", env=environ, timeout=30)  # without a timeout: forever

    assert result.returncode == 1
    assert result.stderr == (
        'backup dev failed: pg_dump gave up waiting for a lock on table "public"."busy" after'
        " 1 s: another session holds it (see pg_locks and pg_stat_activity); try again when"
        " it is done, or raise CARABASE_LOCK_WAIT_TIMEOUT\n")
    assert time.monotonic() - started < 15
    assert published(backup_dir) == [] and partials(backup_dir) == []
