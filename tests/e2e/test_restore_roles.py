"""Restores keep owners and grants, and work for the database's own role: `app` with only
LOGIN CREATEDB, owning the target (the usual managed or least-privilege set-up)."""
from __future__ import annotations

import gzip
import os
import signal
import subprocess
import time
import uuid

import pytest

from helpers import swap
from tests.e2e.test_faults import start_invoke
from tests.pg import PgServer, ThrowawayCluster
from tests.support import clean_environ, run_invoke, seal_backup, take_backup, wait_for

APP = "restore_app"


def restore(environ, backup, *options: str, env: str = "dev"):
    result = run_invoke("backup.restore", env, str(backup), "--yes", *options, env=environ,
                        timeout=300)
    assert "Traceback" not in result.stderr
    return result


def ensure_app_role(pg) -> None:
    pg.psql("postgres", f"""
        do $$ begin
          if not exists (select from pg_roles where rolname = '{APP}') then
            create role {APP} login createdb;
          end if;
        end $$;
    """)


# Who may do what: owners of every relation, table and column grants, default
# privileges (what `\\dp` and `\\ddp` show).
PRIVILEGES_SQL = """
select 'relation', c.relname, pg_get_userbyid(c.relowner), coalesce(c.relacl::text, '-')
  from pg_class c where c.relnamespace = 'public'::regnamespace
union all
select 'column', a.attrelid::regclass::text || '.' || a.attname, '', a.attacl::text
  from pg_attribute a join pg_class c on c.oid = a.attrelid
  where c.relnamespace = 'public'::regnamespace and a.attacl is not null
union all
select 'default', d.defaclobjtype::text, pg_get_userbyid(d.defaclrole), d.defaclacl::text
  from pg_default_acl d
union all
select 'function', p.proname, pg_get_userbyid(p.proowner), coalesce(p.proacl::text, '-')
  from pg_proc p where p.pronamespace = 'public'::regnamespace
order by 1, 2
"""


def privileges(pg, db: str) -> list[str]:
    return pg.psql(db, PRIVILEGES_SQL).splitlines()


def contents(pg, db: str) -> str:
    return pg.psql(db, "select id, name from items order by id")


@pytest.fixture
def app_db(pg, database_factory, keyed_environ, tmp_path):
    """(database owned by `app`, `reader` role, environ with dev as app): a table with
    a table grant and a column grant to reader, and default privileges for reader."""
    ensure_app_role(pg)
    reader = f"restore_reader_{uuid.uuid4().hex[:8]}"
    db = database_factory()
    for name in (swap.undo_name(db), swap.restoring_name(db), swap.retired_name(db)):
        database_factory.adopt(name)
    pg.psql("postgres", f'create role {reader}; alter database "{db}" owner to {APP};')
    pg.psql(db, f"""
        set role {APP};
        create table items (id int primary key, name text, secret text);
        insert into items select g, 'item ' || g, 'secret' from generate_series(1, 50) g;
        grant select on items to {reader};
        grant select (id, name) on items to {reader};
        alter default privileges in schema public grant select on tables to {reader};
        create function answer() returns int language sql as $$ select 42 $$;
        revoke execute on function answer() from public;
        grant execute on function answer() to {reader};
    """)
    app = PgServer(pg.host, pg.port, APP, pg.password)
    environ = {**keyed_environ, "CARABASE_DEV_DATABASE_URL": app.url(db),
               "CARABASE_PROD_DATABASE_URL": pg.url("carabase_prod_absent"),
               "TMPDIR": str(tmp_path)}
    yield db, reader, environ
    for name in (db, *(n for n in pg.psql("postgres", "select datname from pg_database")
                       .split() if n.startswith(db))):
        pg.drop_database(name)
    pg.psql("postgres", f"drop owned by {reader}; drop role if exists {reader}", check=False)


def test_a_restore_as_app_into_the_same_env_gives_back_every_owner_and_grant(pg, app_db):
    db, reader, environ = app_db
    before = privileges(pg, db)
    assert any(reader in row for row in before if row.startswith("column|"))
    assert any(reader in row for row in before if row.startswith("default|"))
    backup = take_backup(environ)
    pg.psql(db, f"revoke all on items from {reader}; delete from items where id > 10;")

    result = restore(environ, backup)

    assert result.returncode == 0, result.stderr
    assert "left out" not in result.stderr
    assert privileges(pg, db) == before
    assert contents(pg, db).count("\n") == 50


def test_a_server_lacking_the_roles_restores_owned_by_the_restoring_role_with_a_warning(
        pg, app_db):
    db, reader, environ = app_db
    owner = f"restore_owner_{uuid.uuid4().hex[:8]}"
    pg.psql("postgres", f"create role {owner}; grant {owner} to {APP};")
    pg.psql(db, f"create table theirs (x int); alter table theirs owner to {owner};"
                f" grant select on theirs to {reader};")
    backup = take_backup(environ)
    # The laptop: neither role exists there.
    pg.psql(db, f"drop owned by {reader}; drop table theirs;")
    pg.psql("postgres", f"drop role {reader}; drop role {owner};")

    result = restore(environ, backup)

    assert result.returncode == 0, result.stderr
    # reader: the table grant, one per granted column, the default privileges, the
    # function's grant and the grant on theirs; owner: theirs's OWNER TO.
    lacking = ", ".join(sorted([reader, owner]))
    assert (f"restore into dev: warning: owners and grants for roles this server lacks were"
            f" left out: {lacking} (7 statements)") in result.stderr.splitlines()
    rows = privileges(pg, db)
    assert [row.split("|")[2] for row in rows if row.startswith("relation|")] == [APP] * 3
    assert not any(reader in row or owner in row for row in rows)
    assert contents(pg, db).count("\n") == 50


@pytest.fixture
def new_role(pg, app_db):
    """make(prefix) -> a new role's name; each is dropped, with what it holds in the test's
    databases (the target, its undo copy), after the test."""
    db = app_db[0]
    made = []

    def make(prefix: str) -> str:
        made.append(f"{prefix}_{uuid.uuid4().hex[:8]}")
        pg.psql("postgres", f"create role {made[-1]}")
        return made[-1]

    yield make
    databases = [name for name in pg.psql("postgres", "select datname from pg_database")
                 .split() if name.startswith(db)]
    for role in made:
        for name in databases:
            pg.psql(name, f"drop owned by {role}", check=False)
        pg.psql("postgres", f"drop role if exists {role}", check=False)


def drop_role_everywhere(pg, db: str, role: str) -> None:
    """The laptop: `role` does not exist there (nor its policies' share of it)."""
    pg.psql(db, f"drop owned by {role}")
    pg.psql("postgres", f"drop role {role}")


POLICIES_SQL = """
select policyname, permissive, array_to_string(roles, ','), qual, coalesce(
  obj_description((select oid from pg_policy where polname = policyname), 'pg_policy'), '-')
from pg_policies where tablename = 'items' order by 1
"""


def test_policies_for_a_role_the_server_lacks_keep_every_other_role_as_it_was(
        pg, app_db, new_role):
    db, reader, environ = app_db
    gone = new_role("restore_gone")
    pg.psql(db, f"""
        set role {APP};
        alter table items enable row level security;
        create policy shared on items for select to {reader}, {gone} using (id <= 10);
        create policy limited on items as restrictive for select to {gone}, {reader}
          using (id > 2);
        create policy gone_only on items for select to {gone} using (true);
        create policy gone_limit on items as restrictive to {gone} using (false);
        comment on policy gone_only on items is 'for {gone} only';
        comment on policy shared on items is 'ten';
    """)
    reader_sees = f"set role {reader}; select count(*) from items"
    assert pg.psql(db, reader_sees).split()[-1] == "8"  # after psql's "SET"
    backup = take_backup(environ)
    drop_role_everywhere(pg, db, gone)

    result = restore(environ, backup)

    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "polic" in line]
    assert warnings == [
        "restore into dev: warning: policies kept for their other roles, without roles this"
        f" server lacks: limited on public.items ({gone}), shared on public.items ({gone})",
        "restore into dev: warning: policies for roles this server lacks only were left out"
        " (they apply to no role here): gone_limit on public.items"
        f" ({gone}), gone_only on public.items ({gone})"]
    # Exactly the access every role here had: no policy widened, none for no one.
    assert pg.psql(db, POLICIES_SQL).splitlines() == [
        f"limited|RESTRICTIVE|{reader}|(id > 2)|-",
        f"shared|PERMISSIVE|{reader}|(id <= 10)|ten"]
    assert pg.psql(db, reader_sees).split()[-1] == "8"


def test_a_user_mapping_for_a_role_the_server_lacks_is_left_out_and_named(
        pg, app_db, new_role):
    db, reader, environ = app_db
    gone = new_role("restore_gone")
    # Foreign-data wrappers are a superuser's: this restore runs as one.
    pg.psql(db, f"""
        create foreign data wrapper restore_fdw;
        create server restore_srv foreign data wrapper restore_fdw;
        create user mapping for {reader} server restore_srv options (user 'r');
        create user mapping for {gone} server restore_srv options (password 'hunter2');
        create user mapping for public server restore_srv options (user 'anyone');
    """)
    superuser = {**environ, "CARABASE_DEV_DATABASE_URL": pg.url(db)}
    backup = take_backup(superuser)
    drop_role_everywhere(pg, db, gone)

    result = restore(superuser, backup)

    assert result.returncode == 0, result.stderr
    assert ("restore into dev: warning: user mappings for roles this server lacks were left"
            f" out: {gone} on server restore_srv") in result.stderr.splitlines()
    assert "hunter2" not in result.stderr + result.stdout
    assert pg.psql(db, "select usename, array_to_string(umoptions, ',') from"
                       " pg_user_mappings order by 1").splitlines() == [
        "public|user=anyone", f"{reader}|user=r"]


ACL_SQL = """
select c.relname, a.grantor::regrole, a.grantee::regrole, a.privilege_type
from pg_class c, aclexplode(c.relacl) a
where c.relnamespace = 'public'::regnamespace order by 1, 2, 3, 4
"""


def test_a_grant_by_a_grantor_app_may_not_act_as_is_left_out_not_given_by_app(
        pg, app_db, new_role):
    db, reader, environ = app_db
    grantor = new_role("restore_grantor")
    pg.psql(db, f"""
        set role {APP};
        grant update on items to {grantor} with grant option;
        set role {grantor};
        grant update on items to {reader};
    """)
    before = pg.psql(db, ACL_SQL).splitlines()
    assert f"items|{grantor}|{reader}|UPDATE" in before
    backup = take_backup(environ)

    result = restore(environ, backup)

    assert result.returncode == 0, result.stderr
    after = pg.psql(db, ACL_SQL).splitlines()
    assert [row for row in after if row not in before] == []  # none by another grantor
    assert [row for row in before if row not in after] == [
        f"items|{APP}|{grantor}|UPDATE", f"items|{grantor}|{reader}|UPDATE"]
    # The grant to the grantor, its SET SESSION AUTHORIZATION, and the grant it made,
    # which would otherwise run as app.
    assert (f"restore into dev: warning: owners and grants for roles {APP} may not act as"
            f" were left out: {grantor} (3 statements)") in result.stderr.splitlines()


def test_a_superuser_session_on_the_target_is_refused_up_front_with_nothing_loaded(
        pg, app_db):
    db, _, environ = app_db
    backup = take_backup(environ)
    before = contents(pg, db)
    session = subprocess.Popen(["psql", "-X", "-q", "-d", db], stdin=subprocess.PIPE,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, **pg.libpq_env(), "PGAPPNAME": "psql"})
    try:
        session.stdin.write(b"select 1;\n")
        session.stdin.flush()
        wait_for(lambda: pg.psql("postgres", "select count(*) from pg_stat_activity where"
                                 f" datname = '{db}'").strip() == "1", "psql to connect")
        started = time.monotonic()
        result = restore(environ, backup)
        elapsed = time.monotonic() - started
    finally:
        session.kill()
        session.wait()

    assert result.returncode != 0
    assert result.stderr.strip() == (
        f"restore into dev refused: a session of postgres (psql) is connected to {db} and"
        f" role {APP} may not end it: close it, or restore as a superuser")
    assert elapsed < 2
    assert contents(pg, db) == before
    assert not pg.database_exists(swap.restoring_name(db))


def test_an_admin_set_role_setting_is_refused_then_left_out_with_drop_settings(pg, app_db):
    db, reader, environ = app_db
    backup = take_backup(environ)
    pg.psql("postgres", f"alter role {reader} in database \"{db}\" set work_mem = '4MB';"
                        f" alter database \"{db}\" set statement_timeout = '7s';")
    statement = f"ALTER ROLE \"{reader}\" IN DATABASE \"{db}\" SET \"work_mem\" TO '4MB';"
    settings_sql = ("select coalesce(pg_get_userbyid(nullif(setrole, 0)), '-') || ' '"
                    " || array_to_string(setconfig, ',') from pg_db_role_setting where"
                    f" setdatabase = (select oid from pg_database where datname = '{db}')"
                    " order by 1")

    refused = restore(environ, backup)

    assert refused.returncode != 0
    assert refused.stderr.strip() == (
        f"restore into dev refused: role {APP} could not set again what an administrator"
        f" set on {db}: {statement} (restore as a superuser, or pass --drop-settings to"
        " leave them out)")
    assert not pg.database_exists(swap.restoring_name(db))

    dropped = restore(environ, backup, "--drop-settings")

    assert dropped.returncode == 0, dropped.stderr
    assert f"restore into dev: --drop-settings: left out {statement}" in dropped.stderr
    # The database's own setting, which app may set, stays.
    assert pg.psql("postgres", settings_sql).splitlines() == ["- statement_timeout=7s"]


EVENT_TRIGGER_SQL = """
create function note_ddl() returns event_trigger language plpgsql as
  $$ begin raise notice 'ddl'; end $$;
create event trigger note_ddl on ddl_command_end execute function note_ddl();
create table items (id int primary key, name text);
insert into items values (1, 'from the backup');
"""


def test_an_event_trigger_is_refused_up_front_for_app_and_restored_by_a_superuser(
        pg, app_db, database_factory):
    db, _, environ = app_db
    source = database_factory()
    pg.psql(source, EVENT_TRIGGER_SQL)
    backup = take_backup({**environ, "CARABASE_STAGING_DATABASE_URL": pg.url(source)},
                         "staging")
    before = contents(pg, db)

    refused = restore(environ, backup)

    assert refused.returncode != 0
    assert refused.stderr.strip() == (
        f"restore into dev refused: role {APP} cannot create what the backup holds: event"
        " trigger note_ddl; restore as a superuser (or install what is missing), nothing"
        " was changed")
    assert contents(pg, db) == before
    assert not pg.database_exists(swap.restoring_name(db))

    as_superuser = restore({**environ, "CARABASE_DEV_DATABASE_URL": pg.url(db)}, backup)

    assert as_superuser.returncode == 0, as_superuser.stderr
    assert pg.psql(db, "select evtname, evtenabled from pg_event_trigger") == "note_ddl|O\n"
    assert contents(pg, db) == "1|from the backup\n"


def test_sigkill_mid_apply_leaves_no_plaintext_in_tmpdir(pg, app_db, master_key, tmp_path):
    db, _, environ = app_db
    sql = "CREATE TABLE public.from_the_backup (id int);\nSELECT pg_sleep(60);\n"
    backup = seal_backup(tmp_path / "2026-02-02T031700.sql.gz.enc", gzip.compress(sql.encode()),
                         master_key)
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    # What an older version left behind when it was killed: removed by this restore.
    leftover = tmpdir / "carabase-restore-old12345.sql.gz"
    leftover.write_bytes(b"an older restore's plaintext")
    restoring = swap.restoring_name(db)

    killed = start_invoke("backup.restore", "dev", str(backup), "--yes",
                          env={**environ, "TMPDIR": str(tmpdir)})
    wait_for(lambda: pg.psql("postgres", "select count(*) from pg_stat_activity where"
                             f" datname = '{restoring}' and query like '%pg_sleep%'")
             .strip() == "1", "the apply to be under way")
    during = sorted(path.name for path in tmpdir.iterdir())
    os.kill(killed.pid, signal.SIGKILL)
    killed.communicate(timeout=30)

    assert during == []  # the decrypted backup has no name, even while it is read
    assert list(tmpdir.iterdir()) == []


# --- an autovacuum worker in the target --------------------------------------------------


@pytest.fixture(scope="module")
def busy_cluster():
    """A cluster of its own whose autovacuum visits every database each second
    (autovacuum_naptime is cluster-wide: the suite's cluster keeps its default)."""
    cluster = ThrowawayCluster()
    server = cluster.start()
    try:
        server.psql("postgres", "alter system set autovacuum_naptime = 1;"
                                " select pg_reload_conf();")
        yield server
    finally:
        cluster.stop()


def test_a_restore_as_app_goes_through_while_autovacuum_works_in_the_target(
        busy_cluster, tmp_path):
    pg = busy_cluster
    ensure_app_role(pg)
    db = pg.create_database()
    pg.psql("postgres", f'alter database "{db}" owner to {APP}')
    app = PgServer(pg.host, pg.port, APP, pg.password)
    key = tmp_path / "master.key"
    key.write_text(os.urandom(32).hex() + "\n")
    key.chmod(0o600)
    (tmp_path / "home").mkdir()
    environ = clean_environ(tmp_path / "home", tmp_path / "backups",
                            HOST_MASTER_KEY_FILE=str(key),
                            CARABASE_DEV_DATABASE_URL=app.url(db),
                            CARABASE_PROD_DATABASE_URL=pg.url("carabase_prod_absent"))
    pg.psql(db, f"set role {APP}; create table items (id int primary key, name text);"
                " insert into items select g, 'item ' || g from generate_series(1, 20) g;")
    backup = take_backup(environ)
    # A table autovacuum must vacuum at once, and slowly: a page's worth of cost, then
    # a long nap.
    pg.psql(db, f"set role {APP}; create table churn (id int, pad text) with"
                " (autovacuum_vacuum_threshold = 0, autovacuum_vacuum_scale_factor = 0,"
                " autovacuum_vacuum_cost_delay = 100, autovacuum_vacuum_cost_limit = 1);"
                " insert into churn select g, repeat('x', 500) from generate_series(1, 20000) g;"
                " delete from churn;")
    worker = ("select count(*) from pg_stat_activity where backend_type = 'autovacuum"
              f" worker' and datname = '{db}'")
    wait_for(lambda: pg.psql("postgres", worker).strip() == "1", "an autovacuum worker",
             timeout=30)

    result = restore(environ, backup)

    assert result.returncode == 0, result.stderr
    assert "ended" not in result.stdout  # the worker was never ours to signal
    assert pg.psql(db, "select count(*) from items").strip() == "20"
    assert pg.psql(db, "select count(*) from pg_class where relname = 'churn'").strip() == "0"
