"""Restores of real schemas through the command line: a fresh database built beside the
target and swapped in, the undo copy, the target's identity, SIGKILL at the worst
moments, and the role that may not create databases."""
from __future__ import annotations

import gzip
import os
import signal
import subprocess
from pathlib import Path
from urllib.parse import quote

import pytest

from helpers import swap
from tasks import PG_DUMP_OPTIONS
from tests.e2e.real_schemas import (LARGE_OBJECTS_SQL, MANY_TABLES_SQL, available_extensions,
                                    features_sql, full_snapshot)
from tests.backup_tree import files_under
from tests.e2e.test_faults import start_invoke
from tests.pg import PgServer
from tests.sample_db import VARIED_SCHEMA, snapshot
from tests.support import (clean_environ, read_only, run_invoke, seal_backup, take_backup,
                           wait_for)


def databases_like(pg, target: str) -> list[str]:
    """The target and any database a restore of it made (undo copy, half-built one)."""
    return pg.psql("postgres", "select datname from pg_database where datname like"
                               f" '{target}%' order by 1").split()


def restore(environ, env: str, backup: Path, *options: str):
    result = run_invoke("backup.restore", env, str(backup), "--yes", *options, env=environ,
                        timeout=300)
    assert "Traceback" not in result.stderr
    return result


# --- real schemas: one backup per schema, shared by the tests ---------------------------


@pytest.fixture(scope="module")
def module_environ(tmp_path_factory, pg):
    """A key, a backup root and an absent prod for the whole module."""
    root = tmp_path_factory.mktemp("restore-swap")
    (root / "home").mkdir()
    key = root / "master.key"
    key.write_text(os.urandom(32).hex() + "\n")
    key.chmod(0o600)
    return clean_environ(root / "home", root / "backups", HOST_MASTER_KEY_FILE=str(key),
                         CARABASE_PROD_DATABASE_URL=pg.url("carabase_prod_absent"))


SCHEMAS = {
    "features": None,  # built from real_schemas.features_sql with this server's extensions
    "2000 tables": MANY_TABLES_SQL,
    "2000 large objects": LARGE_OBJECTS_SQL,
}


@pytest.fixture(scope="module", params=list(SCHEMAS))
def schema_backup(request, pg, module_environ):
    """(source database, its backup, its snapshot) for each nasty schema."""
    sql = SCHEMAS[request.param] or features_sql(available_extensions(pg))
    source = pg.create_database("carabase_real")
    try:
        pg.psql(source, sql)
        environ = {**module_environ, "CARABASE_DEV_DATABASE_URL": pg.url(source)}
        backup = take_backup(environ)
        yield request.param, source, backup, full_snapshot(pg, source)
    finally:
        pg.drop_database(source)


def test_each_schema_holds_what_it_claims(pg, schema_backup):
    name, _, _, expected = schema_backup
    catalog = "\n".join(expected["catalog"])
    if name == "2000 tables":
        assert len([row for row in expected["rows"] if row.startswith("public.t")]) == 2000
    elif name == "2000 large objects":
        assert "large objects|2000|" in catalog
    else:
        assert "domain|public|positive_int|CHECK ((VALUE > 0)) NOT VALID validated=false" \
            in catalog
        assert "relation|public|measurement|p" in catalog
        assert "rls|public|secrets|true true" in catalog
        assert "relation|public|big_shapes|m" in catalog
        assert 'Weird "Schema"' in catalog
        assert "DEFERRABLE INITIALLY DEFERRED" in catalog and "trigger|account|" in catalog
        assert "comment|index measurement_peak_idx|peaks|" in catalog
        assert "public.big_copy|60000|" in "\n".join(expected["rows"])
        if not available_extensions(pg):
            pytest.skip("no contrib extension (pg_trgm, hstore, citext) on this server")
        assert "extension|" in catalog.replace("extension|plpgsql", "")


def test_restore_in_one_session_over_another_schema_then_in_three_gives_exactly_the_backup(
        pg, module_environ, schema_backup, database_factory):
    _, _, backup, expected = schema_backup
    target = database_factory()
    # Other contents, including a table of the same name as one of the backup's.
    pg.psql(target, VARIED_SCHEMA + "create table measurement (other text);"
                                    " create table t1 (x int references item(id));")
    before = full_snapshot(pg, target)
    environ = {**module_environ, "CARABASE_STAGING_DATABASE_URL": pg.url(target)}

    first = restore(environ, "staging", backup, "--jobs", "1")
    assert first.returncode == 0, first.stderr
    assert full_snapshot(pg, target) == expected
    assert full_snapshot(pg, swap.undo_name(target)) == before
    database_factory.adopt(swap.undo_name(target))

    # Three sessions (helpers.parallel_apply), whatever the size of the backup.
    second = restore(environ, "staging", backup, "--jobs", "3")
    assert second.returncode == 0, second.stderr
    assert full_snapshot(pg, target) == expected
    assert databases_like(pg, target) == [target, swap.undo_name(target)]
    assert "backup.undo-restore staging" in second.stdout.splitlines()[-1]


# The features schema: its NOT VALID domain constraint and partitioned keys are what the
# old --clean block failed on.
@pytest.mark.parametrize("schema_backup", ["features"], indirect=True)
def test_older_backup_made_with_clean_if_exists_still_restores(
        pg, module_environ, schema_backup, database_factory, tmp_path):
    _, source, _, expected = schema_backup
    dump = subprocess.run(["pg_dump", "--clean", "--if-exists", "--no-owner", "--no-privileges",
                           "--quote-all-identifiers", "--dbname", pg.url(source)],
                          capture_output=True, check=True).stdout
    assert b"ALTER DOMAIN" in dump and b"DROP CONSTRAINT IF EXISTS" in dump
    key = Path(module_environ["HOST_MASTER_KEY_FILE"]).read_text().strip()
    old = seal_backup(tmp_path / "2025-01-01T031700.sql.gz.enc", gzip.compress(dump), key)
    target = database_factory()
    environ = {**module_environ, "CARABASE_STAGING_DATABASE_URL": pg.url(target)}

    # Asked for three sessions: its DROP block, left out, is for one; it gets one.
    result = restore(environ, "staging", old, "--no-keep", "--jobs", "3")

    assert result.returncode == 0, result.stderr
    assert full_snapshot(pg, target) == expected
    assert databases_like(pg, target) == [target]  # --no-keep: no undo copy


# --- undo ---------------------------------------------------------------------------


@pytest.fixture
def varied_backup(dev_environ, pg, source_db):
    """A backup of the varied database, then the database changed after it."""
    backup = take_backup(dev_environ)
    pg.psql(source_db, "update item set name = 'changed after the backup';"
                       " create table added_after (id int); insert into added_after values (1);")
    return backup


def test_undo_restore_brings_back_exactly_the_replaced_contents_and_undo_again_redoes(
        pg, dev_environ, source_db, varied_backup, database_factory):
    replaced = full_snapshot(pg, source_db)
    assert restore(dev_environ, "dev", varied_backup).returncode == 0
    database_factory.adopt(swap.undo_name(source_db))
    restored = full_snapshot(pg, source_db)
    assert restored != replaced and "added_after" not in str(restored)

    undo = run_invoke("backup.undo-restore", "dev", "--yes", env=dev_environ)

    assert undo.returncode == 0, undo.stderr
    assert full_snapshot(pg, source_db) == replaced
    redo = run_invoke("backup.undo-restore", "dev", "--yes", env=dev_environ)
    assert redo.returncode == 0, redo.stderr
    assert full_snapshot(pg, source_db) == restored


def test_a_read_only_backup_tree_restores_and_undoes_and_other_writes_fail_in_one_line(
        pg, dev_environ, source_db, varied_backup, database_factory, backup_dir):
    replaced = full_snapshot(pg, source_db)
    files = files_under(backup_dir)
    with read_only(backup_dir):  # a backup disk mounted read-only for a recovery
        restored = restore(dev_environ, "dev", varied_backup)
        assert restored.returncode == 0, restored.stderr
        database_factory.adopt(swap.undo_name(source_db))
        assert "added_after" not in str(full_snapshot(pg, source_db))

        undo = run_invoke("backup.undo-restore", "dev", "--yes", env=dev_environ)
        assert undo.returncode == 0, undo.stderr
        assert full_snapshot(pg, source_db) == replaced

        backup = run_invoke("backup.dev", env=dev_environ)
        assert backup.returncode == 1
        assert backup.stderr.strip().splitlines() == [
            f"backup dev failed: {backup_dir / 'dev' / '.lock'}: Read-only file system"]
    assert files_under(backup_dir) == files


def test_undo_restore_of_an_env_never_restored_says_there_is_no_restore_to_undo(
        pg, dev_environ, source_db):
    before = full_snapshot(pg, source_db)

    result = run_invoke("backup.undo-restore", "dev", "--yes", env=dev_environ)

    assert result.returncode == 1
    assert result.stderr.startswith("undo-restore dev: no restore of dev to undo: there is no"
                                    f" undo copy {swap.undo_name(source_db)} (")
    assert len(result.stderr.strip().splitlines()) == 1
    assert full_snapshot(pg, source_db) == before
    assert databases_like(pg, source_db) == [source_db]


def test_undo_restore_of_prod_needs_i_know(dev_environ):
    result = run_invoke("backup.undo-restore", "prod", "--yes", env=dev_environ)

    assert result.returncode != 0 and "--i-know" in result.stderr


def test_restore_closes_the_targets_sessions_after_saying_how_many(
        pg, dev_environ, source_db, varied_backup, database_factory):
    database_factory.adopt(swap.undo_name(source_db))
    idle = subprocess.Popen(["psql", "-X", "-q", "-d", source_db], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, **pg.libpq_env()})
    try:
        idle.stdin.write(b"select 1;\n")
        idle.stdin.flush()
        idle_pid = wait_for(lambda: pg.psql("postgres", "select pid from pg_stat_activity"
                                                        f" where datname = '{source_db}'")
                            .strip(), "the idle session to connect")
        controller, terminal = os.openpty()
        try:
            os.write(controller, b"yes\n")
            result = run_invoke("backup.restore", "dev", str(varied_backup), env=dev_environ,
                                stdin=terminal, timeout=120)
        finally:
            os.close(controller)
            os.close(terminal)
    finally:
        idle.kill()
        idle.wait()

    assert "1 session is connected to it and will be closed." in result.stdout
    assert result.returncode == 0, result.stderr
    assert f"restore into dev: ended 1 session(s): postgres (psql) pid {idle_pid}" \
        in result.stdout
    assert "added_after" not in str(full_snapshot(pg, source_db))


# --- identity -------------------------------------------------------------------------


IDENTITY_SQL = """
select pg_get_userbyid(d.datdba), pg_encoding_to_char(d.encoding), d.datcollate, d.datctype,
       d.datconnlimit, d.datacl, shobj_description(d.oid, 'pg_database'),
       (select string_agg(coalesce(pg_get_userbyid(nullif(s.setrole, 0)), '-') || ' '
                          || array_to_string(s.setconfig, ';'), ' | ' order by s.setrole)
          from pg_db_role_setting s where s.setdatabase = d.oid)
from pg_database d where d.datname = '{name}'
"""


def test_the_env_database_keeps_owner_settings_comment_and_grants_across_a_restore(
        pg, keyed_environ, source_db, database_factory):
    backup = take_backup({**keyed_environ, "CARABASE_DEV_DATABASE_URL": pg.url(source_db),
                          "CARABASE_PROD_DATABASE_URL": pg.url("carabase_prod_absent")})
    target = "carabase_identity_" + "x" * 45  # 63 bytes: the copies' names must be cut
    database_factory.adopt(target)
    database_factory.adopt(swap.undo_name(target))
    pg.psql("postgres", f"""
        do $$ begin
          if not exists (select from pg_roles where rolname = 'carabase_app') then
            create role carabase_app;
          end if;
        end $$;
        create database "{target}" owner carabase_app connection limit 40;
        alter database "{target}" set work_mem = '7MB';
        alter database "{target}" set search_path = '$user', public, "Odd Schema";
        alter role carabase_app in database "{target}" set statement_timeout = '5s';
        comment on database "{target}" is 'the env''s own database';
        revoke all on database "{target}" from public;
        grant connect on database "{target}" to carabase_app;
    """)
    identity = pg.psql("postgres", IDENTITY_SQL.format(name=target))
    environ = {**keyed_environ, "CARABASE_STAGING_DATABASE_URL": pg.url(target),
               "CARABASE_PROD_DATABASE_URL": pg.url("carabase_prod_absent")}

    result = restore(environ, "staging", backup)

    assert result.returncode == 0, result.stderr
    assert pg.psql("postgres", IDENTITY_SQL.format(name=target)) == identity
    assert "carabase_app" in identity and "Odd Schema" in identity and "7MB" in identity
    assert snapshot(pg, target) == snapshot(pg, source_db)
    assert len(swap.undo_name(target).encode()) <= 63
    assert pg.database_exists(swap.undo_name(target))


def test_a_target_whose_name_needs_quoting_everywhere_restores_twice(
        pg, dev_environ, source_db, database_factory):
    backup = take_backup(dev_environ)
    # A quote, a backslash, '=' and spaces: SQL, psql's \\connect and libpq's
    # key=value syntax each read this name differently.
    target = "carabase we'ird = db \\x"
    for name in (target, swap.undo_name(target), swap.retired_name(target)):
        database_factory.adopt(name)
    pg.psql("postgres", f'create database "{target}"')
    environ = {**dev_environ, "CARABASE_STAGING_DATABASE_URL": pg.url(quote(target, safe=""))}

    for _ in range(2):
        result = restore(environ, "staging", backup)
        assert result.returncode == 0, result.stderr
        # (psql -d takes a name with '=' for key=value settings: give it them.)
        conninfo = "dbname='" + target.replace("\\", "\\\\").replace("'", "\\'") + "'"
        assert snapshot(pg, conninfo) == snapshot(pg, source_db)
    assert pg.psql("postgres", "select datname from pg_database where datname like"
                               " 'carabase we%' order by 1").splitlines() == [
        target, swap.undo_name(target)]


def test_sql_that_looks_like_a_psql_variable_of_ours_is_applied_as_written(
        pg, dev_environ, source_db, master_key, tmp_path, database_factory):
    # An array slice `a[1:fresh]` outside quotes: psql would replace `:fresh` with the
    # value of a variable of that name, were one still set while it reads the dump.
    sql = (b"CREATE TABLE public.t (a int[], fresh int,"
           b" CHECK (cardinality(a[1:fresh]) = fresh));\n"
           b"INSERT INTO public.t VALUES ('{1,2,3}', 2);\n")
    backup = seal_backup(tmp_path / "2026-02-06T031700.sql.gz.enc", gzip.compress(sql),
                         master_key)
    database_factory.adopt(swap.undo_name(source_db))

    result = restore(dev_environ, "dev", backup)

    assert result.returncode == 0, result.stderr
    assert pg.psql(source_db, "select a, fresh from t") == "{1,2,3}|2\n"
    assert "a[1:fresh]" in pg.psql(source_db, "select pg_get_constraintdef(oid)"
                                              " from pg_constraint where conname = 't_check'")


# --- SIGKILL of the controlling process -----------------------------------------------


def sleepy_backup(folder: Path, stamp: str, key: str, seconds: int) -> Path:
    """A backup whose apply creates a table, then sleeps `seconds` in pg_sleep (where
    a test can find it, and act while the restore waits)."""
    sql = f"CREATE TABLE public.from_the_backup (id int);\nSELECT pg_sleep({seconds});\n"
    return seal_backup(folder / f"{stamp}.sql.gz.enc", gzip.compress(sql.encode()), key)


@pytest.fixture
def slow_backup(master_key, tmp_path):
    """A backup whose apply creates a table, then dawdles."""
    return sleepy_backup(tmp_path, "2026-02-02T031700", master_key, 60)


def no_session_of_ours(pg) -> bool:
    """No session of the restore's (psql's application name) is left on the server."""
    return pg.psql("postgres", "select count(*) from pg_stat_activity where"
                               " application_name = 'carabase-backup'").strip() == "0"


def query_waiting(pg, dbname: str, like: str) -> bool:
    return pg.psql("postgres", "select count(*) from pg_stat_activity where query like"
                               f" '{like}' and datname = '{dbname}'").strip() != "0"


def test_sigkill_during_the_apply_leaves_the_target_and_the_next_restore_cleans_up(
        pg, dev_environ, source_db, slow_backup, database_factory):
    good = take_backup(dev_environ)
    pg.psql(source_db, "update item set name = 'live'")
    before = snapshot(pg, source_db)
    restoring = swap.restoring_name(source_db)
    database_factory.adopt(swap.undo_name(source_db))

    killed = start_invoke("backup.restore", "dev", str(slow_backup), "--yes", env=dev_environ)
    wait_for(lambda: query_waiting(pg, restoring, "%pg_sleep%"), "the apply to be under way")
    os.kill(killed.pid, signal.SIGKILL)
    killed.communicate(timeout=30)

    assert snapshot(pg, source_db) == before
    assert databases_like(pg, source_db) == [source_db, restoring]  # half-built, left over
    after = restore(dev_environ, "dev", good)  # the orphaned psql is still sleeping in it
    assert after.returncode == 0, after.stderr
    assert databases_like(pg, source_db) == [source_db, swap.undo_name(source_db)]
    assert snapshot(pg, swap.undo_name(source_db)) == before


def test_sigkill_while_the_swap_waits_commits_nothing(
        pg, dev_environ, source_db, database_factory, master_key, tmp_path):
    good = take_backup(dev_environ)
    backup = sleepy_backup(tmp_path, "2026-02-04T031700", master_key, 2)
    pg.psql(source_db, "update item set name = 'live'")
    before = snapshot(pg, source_db)
    restoring = swap.restoring_name(source_db)
    database_factory.adopt(restoring)
    killed = start_invoke("backup.restore", "dev", str(backup), "--yes", env=dev_environ)
    wait_for(lambda: query_waiting(pg, restoring, "%pg_sleep%"), "the apply to be under way")
    # Meanwhile another session renames the target and back in an open transaction: it
    # holds the lock the swap's own rename needs, so the swap waits, inside its transaction.
    blocker = subprocess.Popen(["psql", "-X", "-q", "-d", "postgres"], stdin=subprocess.PIPE,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, **pg.libpq_env()})
    try:
        blocker.stdin.write(f'begin; alter database "{source_db}" rename to "{source_db}_x";'
                            f' alter database "{source_db}_x" rename to "{source_db}";\n'
                            .encode())
        blocker.stdin.flush()
        wait_for(lambda: query_waiting(pg, "postgres", "ALTER DATABASE%RENAME%")
                 and pg.psql("postgres", "select count(*) from pg_stat_activity where"
                                         " wait_event_type = 'Lock'").strip() != "0",
                 "the swap to wait for the lock")
        os.kill(killed.pid, signal.SIGKILL)
        killed.communicate(timeout=30)
        blocker.stdin.write(b"rollback;\n")
        blocker.stdin.close()
        blocker.wait(timeout=30)
    finally:
        blocker.kill()
    # The swap's psql gets its lock now, then finds the end of its script: no COMMIT.
    wait_for(lambda: no_session_of_ours(pg),
             "the orphaned psql to end")

    assert snapshot(pg, source_db) == before
    assert databases_like(pg, source_db) == [source_db, restoring]  # left for the next one
    database_factory.adopt(swap.undo_name(source_db))
    after = restore(dev_environ, "dev", good)
    assert after.returncode == 0, after.stderr
    assert databases_like(pg, source_db) == [source_db, swap.undo_name(source_db)]
    assert snapshot(pg, swap.undo_name(source_db)) == before


def test_a_swap_that_fails_keeps_the_target_and_the_previous_undo_copy(
        pg, dev_environ, source_db, database_factory, master_key, tmp_path):
    good = take_backup(dev_environ)
    pg.psql(source_db, "update item set name = 'live'")
    live = snapshot(pg, source_db)
    database_factory.adopt(swap.undo_name(source_db))
    assert restore(dev_environ, "dev", good).returncode == 0
    restored = snapshot(pg, source_db)
    slow = sleepy_backup(tmp_path, "2026-02-05T031700", master_key, 2)
    restoring, retired = swap.restoring_name(source_db), swap.retired_name(source_db)

    failing = start_invoke("backup.restore", "dev", str(slow), "--yes", env=dev_environ)
    wait_for(lambda: query_waiting(pg, restoring, "%pg_sleep%"), "the apply to be under way")
    # The name the swap moves the old undo copy to is taken: the swap's rename fails.
    pg.psql("postgres", f'create database "{retired}"')
    database_factory.adopt(retired)
    _, stderr = failing.communicate(timeout=60)

    assert failing.returncode != 0
    assert f"{source_db} was not changed: could not swap in the restored database" in stderr
    assert "already exists" in stderr
    assert snapshot(pg, source_db) == restored
    assert snapshot(pg, swap.undo_name(source_db)) == live  # not dropped before the swap
    assert databases_like(pg, source_db) == sorted([source_db, retired,
                                                    swap.undo_name(source_db)])
    # The next restore drops the leftover and keeps only the newest undo copy.
    assert restore(dev_environ, "dev", good).returncode == 0
    assert databases_like(pg, source_db) == [source_db, swap.undo_name(source_db)]
    assert snapshot(pg, swap.undo_name(source_db)) == restored


def test_an_old_copy_that_cannot_be_dropped_after_the_swap_is_a_warning_not_a_failure(
        pg, dev_environ, source_db, database_factory):
    backed_up = snapshot(pg, source_db)
    good = take_backup(dev_environ)
    undo, retired = swap.undo_name(source_db), swap.retired_name(source_db)
    database_factory.adopt(undo)
    database_factory.adopt(retired)
    assert restore(dev_environ, "dev", good).returncode == 0
    # A template database cannot be dropped: the previous undo copy, moved aside by the
    # swap, stays after it.
    pg.psql("postgres", f'alter database "{undo}" is_template true')
    pg.psql(source_db, "update item set name = 'live'")
    live = snapshot(pg, source_db)

    result = restore(dev_environ, "dev", good, "--no-keep")

    assert result.returncode == 0, result.stderr
    assert "warning: the restore is done, but an old copy could not be dropped" in result.stderr
    assert "cannot drop a template database" in result.stderr
    assert "was dropped (--no-keep)" not in result.stdout
    assert snapshot(pg, source_db) == backed_up  # swapped in
    assert snapshot(pg, undo) == live  # --no-keep's drop comes after the failed one
    assert pg.database_exists(retired)
    pg.psql("postgres", f'alter database "{retired}" is_template false')


def test_sigkill_during_an_in_place_apply_commits_nothing(pg, dev_environ, source_db,
                                                           master_key, tmp_path):
    pg.psql(source_db, "update item set name = 'live'")
    before = snapshot(pg, source_db)
    short = sleepy_backup(tmp_path, "2026-02-03T031700", master_key, 2)

    killed = start_invoke("backup.restore", "dev", str(short), "--yes", "--in-place",
                          env=dev_environ)
    wait_for(lambda: query_waiting(pg, source_db, "%pg_sleep%"), "the apply to be under way")
    os.kill(killed.pid, signal.SIGKILL)
    killed.communicate(timeout=30)
    # psql goes on to the end of the dump, then finds no COMMIT.
    wait_for(lambda: no_session_of_ours(pg),
             "the orphaned psql to end")

    assert snapshot(pg, source_db) == before


# --- several sessions (helpers.parallel_apply) -------------------------------------------


TWO_TABLES_SQL = """
create table one (id int primary key, v text);
insert into one values (1, 'a'), (2, 'b');
create table two (id int primary key, n int);
insert into two values (1, 10), (2, 20);
create table three (id int primary key);
insert into three values (1);
"""


@pytest.mark.parametrize("rows, damaged, said", [
    # a row the table refuses: its COPY, in one of the sessions loading data
    (b"1\t10\n2\t20\n", b"1\t10\n2\tzz\n",
     'failed in TABLE DATA public.two: ERROR:  invalid input syntax for type integer: "zz"'),
    # a key the rows break: its build, in one of the sessions building keys
    (b"1\ta\n2\tb\n", b"1\ta\n1\tb\n",
     'failed in CONSTRAINT public.one one_pkey: ERROR:  could not create unique index'
     ' "one_pkey" DETAIL:  Key (id)=(1) is duplicated.'),
], ids=["bad-row", "duplicate-key"])
def test_a_failure_in_any_session_names_its_entry_and_changes_nothing(
        pg, dev_environ, source_db, master_key, tmp_path, database_factory, rows, damaged,
        said):
    other = database_factory()
    pg.psql(other, TWO_TABLES_SQL)
    dump = subprocess.run(["pg_dump", *PG_DUMP_OPTIONS, "--dbname", pg.url(other)],
                          capture_output=True, check=True).stdout
    assert dump.count(rows) == 1
    backup = seal_backup(tmp_path / "2026-02-07T031700.sql.gz.enc",
                         gzip.compress(dump.replace(rows, damaged)), master_key)
    before = snapshot(pg, source_db)

    result = restore(dev_environ, "dev", backup, "--jobs", "3")

    assert result.returncode != 0
    assert result.stderr.strip() == f"restore into dev failed, nothing was changed: psql: {said}"
    assert snapshot(pg, source_db) == before
    assert databases_like(pg, source_db) == [source_db]  # the fresh one dropped


def test_sigkill_during_a_parallel_apply_stops_its_sessions_at_once(
        pg, dev_environ, source_db, master_key, tmp_path, database_factory):
    before = snapshot(pg, source_db)
    restoring = swap.restoring_name(source_db)
    database_factory.adopt(restoring)
    # An entry built in one of the sessions that build indexes, sleeping there.
    sql = ("--\n-- Name: t; Type: TABLE; Schema: public; Owner: -\n--\n\n"
           "CREATE TABLE public.t (id int);\n\n"
           "--\n-- Name: t_idx; Type: INDEX; Schema: public; Owner: -\n--\n\n"
           "SELECT pg_sleep(120);\n")
    backup = seal_backup(tmp_path / "2026-02-08T031700.sql.gz.enc",
                         gzip.compress(sql.encode()), master_key)

    killed = start_invoke("backup.restore", "dev", str(backup), "--yes", "--jobs", "3",
                          env=dev_environ)
    wait_for(lambda: query_waiting(pg, restoring, "%pg_sleep%"), "the apply to be under way")
    os.kill(killed.pid, signal.SIGKILL)
    killed.communicate(timeout=30)

    # Its lifeline cut, the apply cancels the sleep rather than sleeping on for minutes.
    wait_for(lambda: no_session_of_ours(pg),
             "the sessions to end", timeout=15)
    assert snapshot(pg, source_db) == before
    assert databases_like(pg, source_db) == [source_db, restoring]  # for the next restore


# --- a role that may not create databases -----------------------------------------------


@pytest.fixture
def plain_role_environ(pg, dev_environ, source_db):
    """dev's URL as a role that owns the database but may not create databases."""
    pg.psql("postgres", f"""
        do $$ begin
          if not exists (select from pg_roles where rolname = 'carabase_plain') then
            create role carabase_plain login nocreatedb;
          end if;
        end $$;
        alter database "{source_db}" owner to carabase_plain;
    """)
    pg.psql(source_db, "alter table item owner to carabase_plain;"
            " alter table note owner to carabase_plain;"
            " alter view happy_item owner to carabase_plain;"
            " alter sequence invoice_number owner to carabase_plain;"
            " alter type mood owner to carabase_plain;"
            " alter function item_count(bigint) owner to carabase_plain;")
    plain = PgServer(pg.host, pg.port, "carabase_plain", pg.password)
    return {**dev_environ, "CARABASE_DEV_DATABASE_URL": plain.url(source_db)}


def test_role_without_createdb_gets_a_one_line_refusal_then_in_place_works(
        pg, dev_environ, plain_role_environ, source_db):
    backup = take_backup(dev_environ)
    expected = snapshot(pg, source_db)
    pg.psql(source_db, "update item set name = 'live'; create table extra (id int);")
    before = snapshot(pg, source_db)

    refused = restore(plain_role_environ, "dev", backup)

    assert refused.returncode != 0
    assert len(refused.stderr.strip().splitlines()) == 1
    assert "may not create databases" in refused.stderr and "--in-place" in refused.stderr
    assert snapshot(pg, source_db) == before

    in_place = restore(plain_role_environ, "dev", backup, "--in-place")

    assert in_place.returncode == 0, in_place.stderr
    assert snapshot(pg, source_db) == expected
    assert databases_like(pg, source_db) == [source_db]
    assert in_place.stdout.splitlines()[-1] == \
        "restore into dev: applied in place: there is no undo copy"


def test_after_an_in_place_restore_the_message_names_the_older_undo_copy_undo_brings_back(
        pg, dev_environ, source_db, varied_backup, database_factory):
    first_replaced = full_snapshot(pg, source_db)
    assert restore(dev_environ, "dev", varied_backup).returncode == 0
    database_factory.adopt(swap.undo_name(source_db))
    pg.psql(source_db, "create table after_first_restore (id int);")

    in_place = restore(dev_environ, "dev", varied_backup, "--in-place")

    assert in_place.returncode == 0, in_place.stderr
    line = in_place.stdout.splitlines()[-1]
    assert line.startswith("restore into dev: applied in place: no copy of what it replaced"
                           f" was kept; undo-restore dev would bring back"
                           f" {swap.undo_name(source_db)} (")
    assert line.endswith("), the copy an earlier restore kept, and replace this restore's"
                         " result")
    undo = run_invoke("backup.undo-restore", "dev", "--yes", env=dev_environ)
    assert undo.returncode == 0, undo.stderr
    assert full_snapshot(pg, source_db) == first_replaced  # as the message said


# --- also fixed -------------------------------------------------------------------------


def test_missing_psql_is_named(dev_environ, tmp_path):
    backup = take_backup(dev_environ)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "gzip", "pg_dump"):
        (bin_dir / tool).symlink_to(subprocess.check_output(["which", tool], text=True).strip())

    result = restore({**dev_environ, "PATH": str(bin_dir)}, "dev", backup)

    assert result.returncode != 0
    assert result.stderr.strip() == ("restore into dev: psql is not installed or not on PATH"
                                     " (install the PostgreSQL client tools)")


def test_unusable_tmpdir_is_refused_naming_it(dev_environ, tmp_path):
    backup = take_backup(dev_environ)
    missing = tmp_path / "no-such-dir"

    result = restore({**dev_environ, "TMPDIR": str(missing)}, "dev", backup)

    assert result.returncode != 0
    assert f"TMPDIR={missing} does not exist" in result.stderr


def test_role_that_does_not_own_the_target_is_refused_before_anything_is_built(
        pg, dev_environ, source_db):
    backup = take_backup(dev_environ)
    pg.psql("postgres", """
        do $$ begin
          if not exists (select from pg_roles where rolname = 'carabase_creator') then
            create role carabase_creator login createdb;
          end if;
        end $$;
    """)
    before = snapshot(pg, source_db)
    creator = PgServer(pg.host, pg.port, "carabase_creator", pg.password)

    result = restore({**dev_environ, "CARABASE_DEV_DATABASE_URL": creator.url(source_db)},
                     "dev", backup)

    assert result.returncode != 0 and len(result.stderr.strip().splitlines()) == 1
    assert "does not own" in result.stderr and "its owner is postgres" in result.stderr
    assert snapshot(pg, source_db) == before
    assert databases_like(pg, source_db) == [source_db]
