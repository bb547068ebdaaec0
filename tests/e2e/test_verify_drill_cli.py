"""backup.verify and backup.drill for real: a PostgreSQL, backups made by the tool or by
hand through the same envelope, faults (damage, a missing table, a kill mid-restore)."""
from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import uuid
from pathlib import Path

import pytest

import tasks
from helpers import retention
from tests.e2e.test_faults import start_invoke
from tests.sample_db import create_varied_database, snapshot
from tests.support import run_invoke, seal_backup, take_backup, wait_for

STAMP = retention.parse_backup_name("2026-03-01T031700.sql.gz.enc")


@pytest.fixture
def scratch_name(pg):
    name = f"carabase_drill_{uuid.uuid4().hex[:8]}"
    yield name
    pg.drop_database(name)  # only if a test failed to see it dropped


@pytest.fixture
def drill_environ(dev_environ, pg, scratch_name):
    return {**dev_environ, "CARABASE_DRILL_DATABASE_URL": pg.url(scratch_name)}


def pg_dump(pg, dbname: str, *options: str) -> bytes:
    """The dump the backup task would make (its very options), plus `options`."""
    return subprocess.run(["pg_dump", *tasks.PG_DUMP_OPTIONS, *options, "--dbname", dbname],
                          env={**os.environ, **pg.libpq_env()}, capture_output=True,
                          check=True).stdout


def drill_record(environ, env: str = "dev") -> dict:
    return json.loads((Path(environ["CARABASE_BACKUP_DIR"]) / env / ".drill.json").read_text())


def other_spelling(pg, dbname: str) -> str:
    """A URL of `dbname` on the same server, spelled unlike pg.url()."""
    if pg.host.startswith("/"):
        return f"postgres:///{dbname}?host={pg.host}/&port={pg.port}&user={pg.user}"
    host = "localhost" if pg.host.startswith("127.") else pg.host + "."
    return pg.url(dbname).replace(pg.host, host)


# --- verify ----------------------------------------------------------------------------


def test_verify_says_ok_for_the_newest_backup(dev_environ):
    take_backup(dev_environ)
    newest = take_backup(dev_environ)
    result = run_invoke("backup.verify", "dev", env=dev_environ)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"OK {newest}\n"


@pytest.mark.parametrize("compressed, reason", [
    (gzip.compress(b"SELECT 1;\n" * 1000)[:-20], "gzip stream truncated"),
    (gzip.compress(b"SELECT 1;\n") + b"junk", "trailing data after the gzip stream"),
])
def test_damaged_backup_verifies_damaged_with_the_reason(dev_environ, backup_dir, master_key,
                                                         compressed, reason):
    good = take_backup(dev_environ)
    day = backup_dir / "dev" / retention.date_dir_name(STAMP)
    day.mkdir()
    damaged = seal_backup(day / retention.backup_name(STAMP), compressed, master_key)

    result = run_invoke("backup.verify", "dev", "--all", env=dev_environ)

    assert result.returncode == 1
    assert result.stdout.splitlines() == [f"DAMAGED {damaged}: {reason}", f"OK {good}"]
    assert result.stderr == "verify dev: 1 of 2 backups damaged\n"


def test_verify_with_the_wrong_key_says_authentication_failed(dev_environ):
    backup = take_backup(dev_environ)
    result = run_invoke("backup.verify", "dev", env={
        **dev_environ, "HOST_MASTER_KEY_FILE": "", "HOST_MASTER_KEY": os.urandom(32).hex()})
    assert result.returncode == 1
    assert result.stdout.startswith(f"DAMAGED {backup}: authentication failed")


def test_verify_without_backups_or_offsite_setting_says_so(dev_environ, backup_dir):
    none = run_invoke("backup.verify", "dev", env=dev_environ)
    assert none.returncode == 1 and none.stderr == f"verify dev: no backups in {backup_dir}/dev\n"
    offsite = run_invoke("backup.verify", "dev", "--offsite", env=dev_environ)
    assert offsite.returncode == 1 and "needs CARABASE_OFFSITE" in offsite.stderr
    assert len(offsite.stderr.splitlines()) == 1


def bytes_read_by_children() -> int:
    """rchar of this process: it includes the children it has waited for."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("rchar:"):
            return int(line.split()[1])
    raise AssertionError("no rchar in /proc/self/io")


@pytest.mark.skipif(not Path("/proc/self/io").exists(), reason="needs /proc/<pid>/io")
def test_verify_all_over_30_backups_reads_each_file_once(keyed_environ, backup_dir,
                                                         master_key):
    compressed = gzip.compress(os.urandom(1024 * 1024), compresslevel=1)
    paths = []
    for day in range(1, 31):
        stamp = STAMP.replace(day=day)
        folder = backup_dir / "dev" / retention.date_dir_name(stamp)
        folder.mkdir(parents=True)
        paths.append(seal_backup(folder / retention.backup_name(stamp), compressed,
                                 master_key))
    size = paths[0].stat().st_size

    before = bytes_read_by_children()
    newest = run_invoke("backup.verify", "dev", env=keyed_environ)
    between = bytes_read_by_children()
    every = run_invoke("backup.verify", "dev", "--all", env=keyed_environ)
    after = bytes_read_by_children()

    assert newest.returncode == 0 and every.returncode == 0, every.stderr
    assert every.stdout.splitlines() == [f"OK {path}" for path in paths]
    # Same program, same start-up reads: the difference is the 29 more files, read once.
    extra = (after - between) - (between - before)
    assert 29 * size <= extra < 29 * size * 1.1


# --- drill: pass, fail, warn -------------------------------------------------------------


def test_good_backup_drills_pass_and_the_scratch_database_is_gone(
        drill_environ, pg, source_db, scratch_name, backup_dir):
    backup = take_backup(drill_environ)
    before = snapshot(pg, source_db)

    result = run_invoke("backup.drill", "dev", env=drill_environ)

    assert result.returncode == 0, result.stderr
    line = result.stdout.strip()
    assert line.startswith(f"drill dev: PASS {backup} restored in ")
    assert line.endswith("s: 2 tables, 6 rows")
    assert not pg.database_exists(scratch_name)
    assert snapshot(pg, source_db) == before
    record = drill_record(drill_environ)
    assert (record["result"], record["file"], record["tables"], record["rows"]) == (
        "PASS", str(backup), 2, 6)
    assert oct((backup_dir / "dev" / ".drill.json").stat().st_mode & 0o777) == "0o600"
    status = run_invoke("backup.status", env=drill_environ)
    assert f" drill={record['finished']}" in status.stdout.splitlines()[0]


AWKWARD = r"""
create schema "odd schema";
create table "odd schema"."odd ""name"" table" (x text);
insert into "odd schema"."odd ""name"" table" values (E'a\nb'), (E'\\.'), ('');
create table measure (at date not null, v int) partition by range (at);
create table measure_2025 partition of measure for values from ('2025-01-01') to ('2026-01-01');
create table measure_2026 partition of measure for values from ('2026-01-01') to ('2027-01-01');
insert into measure select date '2025-06-01' + g % 400, g from generate_series(1, 3000) g;
create table nocolumns ();
insert into nocolumns default values;
select lo_from_bytea(0, 'a large object'), lo_from_bytea(0, '');
analyze;
"""


@pytest.mark.parametrize("jobs", ["1", "3"])
def test_awkward_names_partitions_and_large_objects_drill_pass(drill_environ, pg,
                                                                database_factory, jobs):
    def create(pg):
        name = pg.create_database()
        pg.psql(name, AWKWARD)
        return name
    environ = {**drill_environ, "CARABASE_DEV_DATABASE_URL": pg.url(database_factory(create))}
    take_backup(environ)

    # The drill applies as a restore does: in one session, or in several.
    result = run_invoke("backup.drill", "dev", env={**environ, "CARABASE_RESTORE_JOBS": jobs})

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("s: 4 tables, 3,004 rows")


def test_backup_lacking_a_table_of_the_live_database_drills_fail(
        drill_environ, pg, source_db, master_key, tmp_path, scratch_name):
    dump = pg_dump(pg, source_db, "--exclude-table=public.note")
    backup = seal_backup(tmp_path / "2026-03-01T031700.sql.gz.enc", gzip.compress(dump),
                         master_key)

    result = run_invoke("backup.drill", "dev", "--file", str(backup), env=drill_environ)

    assert result.returncode == 1
    assert result.stderr.startswith(f"drill dev: FAIL {backup} restored in ")
    assert "1 tables of the live database missing from the backup: public.note" in \
        result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert not pg.database_exists(scratch_name)
    assert drill_record(drill_environ)["result"] == "FAIL"
    take_backup(drill_environ)  # fresh: only the drill stands between dev and PASS
    status = run_invoke("backup.status", env=drill_environ)
    assert "(last drill FAIL: 1 tables of the live database missing" in status.stdout
    assert status.stdout.startswith("[dev    ] WARN ")


def test_old_backup_made_with_clean_if_exists_drills_pass(drill_environ, pg, source_db,
                                                          master_key, tmp_path):
    dump = pg_dump(pg, source_db, "--clean", "--if-exists")
    assert b"DROP TABLE IF EXISTS" in dump
    backup = seal_backup(tmp_path / "2026-03-01T031700.sql.gz.enc", gzip.compress(dump),
                         master_key)
    result = run_invoke("backup.drill", "dev", "--file", str(backup), env=drill_environ)
    assert result.returncode == 0, result.stderr


def test_backup_far_smaller_than_the_live_tables_drills_warn(drill_environ, pg, source_db):
    take_backup(drill_environ)
    pg.psql(source_db, "insert into note select 1, 'more' from generate_series(1, 5000);"
                       " analyze note")
    result = run_invoke("backup.drill", "dev", env=drill_environ)
    assert result.returncode == 1
    assert "drill dev: WARN " in result.stderr
    assert "far fewer rows than the live database estimates: public.note (3 rows, live ~5,003)"\
        in result.stderr


def test_damaged_backup_verifies_damaged_and_drills_fail_without_touching_anything(
        drill_environ, pg, source_db, master_key, backup_dir, scratch_name):
    day = backup_dir / "dev" / retention.date_dir_name(STAMP)
    day.mkdir(parents=True)
    backup = seal_backup(day / retention.backup_name(STAMP),
                         gzip.compress(pg_dump(pg, source_db))[:-50], master_key)
    before = snapshot(pg, source_db)
    databases = pg.psql("postgres", "select datname from pg_database order by 1")

    verified = run_invoke("backup.verify", "dev", env=drill_environ)
    drilled = run_invoke("backup.drill", "dev", env=drill_environ)

    assert verified.returncode == 1
    assert verified.stdout == f"DAMAGED {backup}: gzip stream truncated\n"
    assert drilled.returncode == 1
    assert drilled.stderr == (f"drill dev: FAIL {backup}: the backup is damaged:"
                              " gzip stream truncated\n")
    assert pg.psql("postgres", "select datname from pg_database order by 1") == databases
    assert snapshot(pg, source_db) == before
    assert drill_record(drill_environ)["problems"] == [
        "the backup is damaged: gzip stream truncated"]


def two_backups(drill_environ) -> list[Path]:
    first = take_backup(drill_environ)
    return [first, take_backup(drill_environ)]


def test_drill_with_another_key_says_the_key_is_wrong_and_status_does_not_call_it_damaged(
        drill_environ, pg, source_db, tmp_path):
    older, newest = two_backups(drill_environ)
    other_key = tmp_path / "other.key"
    other_key.write_text(os.urandom(32).hex() + "\n")
    other_key.chmod(0o600)
    wrong = {**drill_environ, "HOST_MASTER_KEY_FILE": str(other_key)}
    before = snapshot(pg, source_db)

    drilled = run_invoke("backup.drill", "dev", env=wrong)
    status = run_invoke("backup.status", env={**wrong, "CARABASE_ENVS": "dev"})

    assert drilled.returncode == 1
    assert drilled.stderr == (f"drill dev: FAIL {newest}: the key is wrong: it opens neither"
                              f" this backup nor {older.name} (check HOST_MASTER_KEY_FILE, or"
                              " ~/.carabase/master.key: the backups need the key that made"
                              " them)\n")
    assert "damaged" not in status.stdout and "last drill FAIL: the key is wrong" in status.stdout
    assert snapshot(pg, source_db) == before


def test_drill_of_a_tampered_backup_whose_sibling_opens_says_the_backup_is_damaged(
        drill_environ, pg, source_db):
    older, newest = two_backups(drill_environ)
    tampered = bytearray(newest.read_bytes())
    tampered[40] ^= 1
    newest.write_bytes(bytes(tampered))

    drilled = run_invoke("backup.drill", "dev", env=drill_environ)

    assert drilled.returncode == 1
    assert drilled.stderr == (f"drill dev: FAIL {newest}: the backup is damaged: authentication"
                              " failed: wrong key, or the file is damaged or truncated\n")
    assert drill_record(drill_environ)["problems"][0].startswith("the backup is damaged:")


# --- drill: the scratch database ----------------------------------------------------------


@pytest.mark.parametrize("env", ["dev", "prod"])
def test_drill_into_a_database_that_an_env_uses_is_refused(dev_environ, pg, source_db,
                                                           database_factory, env):
    prod_db = database_factory(create_varied_database)
    environ = {**dev_environ, "CARABASE_PROD_DATABASE_URL": pg.url(prod_db)}
    take_backup(environ)
    target = source_db if env == "dev" else prod_db
    before = snapshot(pg, target)

    result = run_invoke("backup.drill", "dev", env={
        **environ, "CARABASE_DRILL_DATABASE_URL": other_spelling(pg, target)})

    assert result.returncode == 1
    assert result.stderr.startswith(
        f"drill dev refused: CARABASE_DRILL_DATABASE_URL leads to {env}'s database")
    assert snapshot(pg, target) == before


def test_drill_refuses_when_a_configured_env_cannot_be_reached(drill_environ, scratch_name, pg):
    take_backup(drill_environ)
    result = run_invoke("backup.drill", "dev", env={
        **drill_environ, "CARABASE_STAGING_DATABASE_URL": "postgresql://u@127.0.0.1:1/x"})
    assert result.returncode == 1
    assert "cannot reach staging's database" in result.stderr
    assert not pg.database_exists(scratch_name)


def test_drill_never_drops_a_database_it_did_not_make(drill_environ, pg, scratch_name):
    take_backup(drill_environ)
    pg.psql("postgres", f'create database "{scratch_name}"')
    pg.psql(scratch_name, "create table precious (x int); insert into precious values (1)")

    result = run_invoke("backup.drill", "dev", env=drill_environ)

    assert result.returncode == 1
    assert "exists and was not made by a drill" in result.stderr
    assert pg.psql(scratch_name, "select x from precious") == "1\n"


@pytest.fixture
def sleepy_backup(pg, source_db, master_key, tmp_path):
    """A backup that stops half-way through its restore (for a minute)."""
    dump = pg_dump(pg, source_db).replace(b"\nCOPY ", b"\nSELECT pg_sleep(60);\nCOPY ", 1)
    return seal_backup(tmp_path / "2026-03-01T031700.sql.gz.enc", gzip.compress(dump),
                       master_key)


def sleeping_in(pg, dbname: str) -> bool:
    return pg.psql("postgres", "select count(*) from pg_stat_activity where query like"
                               f" '%pg_sleep%' and datname = '{dbname}'").strip() != "0"


def test_drill_sigkilled_mid_restore_leaves_a_database_the_next_drill_removes(
        drill_environ, pg, sleepy_backup, scratch_name):
    killed = start_invoke("backup.drill", "dev", "--file", str(sleepy_backup), env=drill_environ)
    wait_for(lambda: sleeping_in(pg, scratch_name), "the restore to be under way")

    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait(timeout=30)
    assert pg.database_exists(scratch_name)  # a SIGKILLed drill cleans nothing up...

    take_backup(drill_environ)
    after = run_invoke("backup.drill", "dev", env=drill_environ)

    assert after.returncode == 0, after.stderr  # ...the next one does, first
    assert "drill dev: PASS" in after.stdout
    assert not pg.database_exists(scratch_name)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_drill_interrupted_mid_restore_drops_the_scratch_database(
        drill_environ, pg, sleepy_backup, scratch_name, signum):
    drill = start_invoke("backup.drill", "dev", "--file", str(sleepy_backup), env=drill_environ)
    wait_for(lambda: sleeping_in(pg, scratch_name), "the restore to be under way")

    os.kill(drill.pid, signum)
    stdout, stderr = drill.communicate(timeout=60)

    assert drill.returncode == 128 + signum
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert not pg.database_exists(scratch_name)
