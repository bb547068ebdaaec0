"""Names of the fresh and undo databases, and the SQL that gives the fresh one the
target's identity and swaps it in."""
from __future__ import annotations

import json

from helpers import swap
from helpers.swap import DatabaseIdentity, Grant, Setting


def test_copies_are_named_after_the_target_and_what_they_are():
    assert swap.undo_name("carabase_dev") == "carabase_dev__carabase_undo"
    assert swap.restoring_name("carabase_dev") == "carabase_dev__carabase_restoring"
    assert swap.retired_name("carabase_dev") == "carabase_dev__carabase_retired"


def test_a_long_target_name_still_gets_distinct_names_within_63_bytes_every_time():
    long_a = "é" * 30 + "_app_a"  # 66 bytes of UTF-8
    long_b = "é" * 30 + "_app_b"
    names = {swap.undo_name(long_a), swap.restoring_name(long_a), swap.retired_name(long_a),
             swap.undo_name(long_b), swap.restoring_name(long_b), swap.retired_name(long_b)}

    assert len(names) == 6
    assert all(len(name.encode()) <= 63 for name in names)
    assert swap.undo_name(long_a) == swap.undo_name(long_a)
    assert swap.undo_name(long_a).endswith("__carabase_undo")
    assert swap.undo_name(long_a).encode().decode() == swap.undo_name(long_a)  # whole chars


def test_identifiers_and_literals_are_quoted():
    assert swap.quote_ident('a "b"') == '"a ""b"""'
    assert swap.quote_literal("it's \\ here") == "'it''s \\ here'"


def test_list_settings_are_split_into_elements_as_pg_dump_does():
    assert swap.split_identifier_list('"$user", public, "Odd ""Schema"""') == [
        "$user", "public", 'Odd "Schema"']
    assert swap.setting_value_sql("search_path", '"$user", public') == "'$user', 'public'"
    assert swap.setting_value_sql("work_mem", "64MB") == "'64MB'"


def identity_json(**overrides) -> str:
    data = {
        "owner": "app", "encoding": "UTF8",
        "row": {"datcollate": "en_US.UTF-8", "datctype": "en_US.UTF-8",
                "datlocprovider": "c", "datconnlimit": 20, "daticulocale": None},
        "tablespace": "pg_default", "comment": "the app's db", "has_acl": True,
        "grants": [{"grantee": None, "privilege": "TEMPORARY", "grantable": False},
                   {"grantee": "app", "privilege": "CONNECT", "grantable": True}],
        "settings": [{"role": None, "config": ["work_mem=64MB",
                                               'search_path="$user", public']},
                     {"role": "reporter", "config": ["statement_timeout=5s"]}],
        "size": 8192,
    }
    data.update(overrides)
    return json.dumps(data)


def test_identity_is_read_from_the_catalog_row():
    identity = DatabaseIdentity.from_json(identity_json())

    assert identity.oid is None  # as from a server before 12
    assert DatabaseIdentity.from_json(identity_json(row={"oid": 16384})).oid == 16384
    assert identity.owner == "app" and identity.collate == "en_US.UTF-8"
    assert identity.locale_provider is None and identity.connection_limit == 20
    assert identity.grants == (Grant(None, "TEMPORARY"), Grant("app", "CONNECT", True))
    assert identity.settings == (Setting(None, "work_mem", "64MB"),
                                 Setting(None, "search_path", '"$user", public'),
                                 Setting("reporter", "statement_timeout", "5s"))
    assert identity.size == 8192


def test_fresh_database_is_created_empty_with_the_targets_owner_encoding_and_locale():
    identity = DatabaseIdentity.from_json(identity_json())

    assert swap.create_database_sql("db__carabase_restoring", identity) == (
        'CREATE DATABASE "db__carabase_restoring" WITH TEMPLATE template0 OWNER "app"'
        " ENCODING 'UTF8' LC_COLLATE 'en_US.UTF-8' LC_CTYPE 'en_US.UTF-8';")
    assert swap.create_database_sql("x", None) == 'CREATE DATABASE "x" WITH TEMPLATE template0;'


def test_an_icu_database_keeps_its_provider_and_locale():
    row = {"datcollate": "C", "datctype": "C", "datlocprovider": "i", "daticulocale": "de-DE"}
    identity = DatabaseIdentity.from_json(identity_json(row=row))

    assert "LOCALE_PROVIDER icu ICU_LOCALE 'de-DE'" in swap.create_database_sql("x", identity)


def test_identity_statements_copy_settings_comment_limit_and_exact_grants():
    statements = swap.identity_sql("new", DatabaseIdentity.from_json(identity_json()))

    assert statements == [
        """ALTER DATABASE "new" SET "work_mem" TO '64MB';""",
        """ALTER DATABASE "new" SET "search_path" TO '$user', 'public';""",
        """ALTER ROLE "reporter" IN DATABASE "new" SET "statement_timeout" TO '5s';""",
        """COMMENT ON DATABASE "new" IS 'the app''s db';""",
        """ALTER DATABASE "new" WITH CONNECTION LIMIT 20;""",
        """REVOKE ALL ON DATABASE "new" FROM PUBLIC;""",
        """REVOKE ALL ON DATABASE "new" FROM "app";""",
        """GRANT TEMPORARY ON DATABASE "new" TO PUBLIC;""",
        """GRANT CONNECT ON DATABASE "new" TO "app" WITH GRANT OPTION;""",
    ]


def test_default_privileges_are_left_as_they_are():
    identity = DatabaseIdentity.from_json(identity_json(has_acl=False, grants=[],
                                                        comment=None, settings=[]))
    statements = swap.identity_sql("new", identity)

    assert statements == ['ALTER DATABASE "new" WITH CONNECTION LIMIT 20;']


def test_swap_closes_sessions_then_renames_target_aside_and_fresh_into_place():
    statements = swap.swap_sql("db", "db__carabase_restoring", "db__carabase_undo", None)

    assert "pg_catalog.pg_terminate_backend(pid)" in statements[-3]
    assert "WHERE datname = 'db'" in statements[-3]
    # Client sessions only: never an autovacuum worker, which a non-superuser may not end.
    assert "coalesce(backend_type = 'client backend', usesysid IS NOT NULL)" in statements[-3]
    assert statements[-2:] == [
        'ALTER DATABASE "db" RENAME TO "db__carabase_undo";',
        'ALTER DATABASE "db__carabase_restoring" RENAME TO "db";']
    assert not any(s.startswith(("BEGIN", "COMMIT")) for s in statements)  # ours to send


def test_swap_moves_the_previous_undo_copy_aside_only_if_there_is_one():
    statements = swap.swap_sql("db", "db__carabase_restoring", "db__carabase_undo", None)

    [aside] = [s for s in statements if s.endswith("\\gexec")]  # psql runs what it selects
    assert "format('ALTER DATABASE %I RENAME TO %I', datname, 'db__carabase_retired')" in aside
    assert "WHERE datname = 'db__carabase_undo'" in aside
    # ...after closing the old copy's sessions, and before the target takes its name.
    assert statements.index(aside) < statements.index(
        'ALTER DATABASE "db" RENAME TO "db__carabase_undo";')
    assert "WHERE datname = 'db__carabase_undo'" in statements[statements.index(aside) - 1]


def test_after_the_swap_the_retired_copy_goes_and_with_no_keep_the_new_undo_copy():
    assert swap.after_swap_sql("db", drop_undo=False, force=True) == [
        'DROP DATABASE IF EXISTS "db__carabase_retired" WITH (FORCE);']
    assert swap.after_swap_sql("db", drop_undo=True, force=True) == [
        'DROP DATABASE IF EXISTS "db__carabase_retired" WITH (FORCE);',
        'DROP DATABASE IF EXISTS "db__carabase_undo" WITH (FORCE);']


def test_a_drop_without_force_ends_the_client_sessions_it_may_then_drops_plainly():
    end, drop = swap.drop_database_sql("db")

    assert "pg_terminate_backend" in end and "backend_type = 'client backend'" in end
    assert "pg_has_role(a.usesysid, 'MEMBER')" in end  # only sessions it may end
    assert drop == 'DROP DATABASE IF EXISTS "db";'


def test_ended_sessions_are_read_back_from_psqls_stderr():
    stderr = ("psql: NOTICE: something\n"
              "carabase: ended sessions: app (psql) pid 12, reader (-) pid 13\n"
              "carabase: ended sessions: \n")

    assert swap.ended_sessions(stderr) == ["app (psql) pid 12", "reader (-) pid 13"]


def test_swap_without_a_target_only_renames_the_fresh_database():
    statements = swap.swap_sql("db", "fresh", None, None)

    assert statements[-1] == 'ALTER DATABASE "fresh" RENAME TO "db";'
    assert not any("pg_terminate_backend" in s or '"db" RENAME' in s for s in statements)


def test_undo_swaps_the_copy_and_the_target_through_a_spare_name():
    statements = swap.undo_swap_sql("db", "db__u", "db__spare")

    assert statements[-3:] == ['ALTER DATABASE "db" RENAME TO "db__spare";',
                               'ALTER DATABASE "db__u" RENAME TO "db";',
                               'ALTER DATABASE "db__spare" RENAME TO "db__u";']


def test_the_probe_reads_blocking_sessions_unsettable_settings_and_the_restoring_role():
    probe = swap.Probe.from_json(json.dumps({
        "cluster": 7, "database": "db", "identity": None, "creates": True, "owns": None,
        "sessions": 2,
        "blocking": [{"role": "postgres", "application": "psql", "database": "db"}],
        "unsettable": [{"role": "reader", "item": "work_mem=4MB"}],
        "restoring": {"name": "app", "superuser": False,
                      "roles": {"app": True, "reader": False}, "extensions": None}}))

    assert probe.blocking == (swap.Session("postgres", "psql", "db"),)
    assert probe.unsettable == (Setting("reader", "work_mem", "4MB"),)
    assert probe.restoring.name == "app" and probe.restoring.roles == {"app": True,
                                                                       "reader": False}
    assert probe.owns and probe.sessions == 2
    assert swap.setting_sql("db", probe.unsettable[0]) == (
        'ALTER ROLE "reader" IN DATABASE "db" SET "work_mem" TO \'4MB\';')
