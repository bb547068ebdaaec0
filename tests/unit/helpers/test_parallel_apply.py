"""helpers.parallel_apply's routing: which entry goes where, and where the barriers are
(the end-to-end tests apply real dumps with it: tests/e2e/test_restore_swap.py)."""
from __future__ import annotations

import io

from helpers.dumpsql import Header, read_dump
from helpers.parallel_apply import (BUILD, CHECKS, DATA, FOREIGN_KEYS, ORDERED, Barrier, Planner,
                                    ends_cleanly,
                                    Send, Start, explain_failure, pick_session, psql_command,
                                    settings_in, stage_of)


def entry(name: str, kind: str, sql: str, data: bool = False) -> str:
    label = "Data for Name" if data else "Name"
    return f"--\n-- {label}: {name}; Type: {kind}; Schema: public; Owner: -\n--\n\n{sql}\n\n"


# A dump as pg_dump 15 writes it, cut short: preamble, schema, data, post-data.
DUMP = "".join([
    "--\n-- PostgreSQL database dump\n--\n\n\\restrict k3y\n\nSET statement_timeout = 0;\n"
    "SELECT pg_catalog.set_config('search_path', '', false);\n\n",
    entry("a", "TABLE", 'CREATE TABLE "public"."a" ("id" integer);'),
    entry("f", "FUNCTION", "CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $$\n"
                           "BEGIN\nSET search_path = x;\nRETURN 1;\nEND $$;"),
    "SET default_table_access_method = \"heap\";\n\n",
    entry("b", "TABLE", 'CREATE TABLE "public"."b" ("id" integer);'),
    entry("a", "TABLE DATA", 'COPY "public"."a" ("id") FROM stdin;\n1\n2\n\\.\n', data=True),
    entry("b", "TABLE DATA", 'COPY "public"."b" ("id") FROM stdin;\n1\n\\.\n', data=True),
    entry("s", "SEQUENCE SET", "SELECT pg_catalog.setval('\"public\".\"s\"', 5, true);"),
    entry("a a_pkey", "CONSTRAINT",
          'ALTER TABLE ONLY "public"."a"\n    ADD CONSTRAINT "a_pkey" PRIMARY KEY ("id");'),
    entry("a_id_idx", "INDEX", 'CREATE INDEX "a_id_idx" ON "public"."a" USING "btree" ("id");'),
    entry('INDEX "a_id_idx"', "COMMENT", 'COMMENT ON INDEX "public"."a_id_idx" IS \'hi\';'),
    entry("b_id_idx", "INDEX", 'CREATE INDEX "b_id_idx" ON "public"."b" USING "btree" ("id");'),
    entry("a_trg", "TRIGGER", 'CREATE TRIGGER "a_trg" AFTER INSERT ON "public"."a"'
                              ' FOR EACH ROW EXECUTE FUNCTION "public"."f"();'),
    entry("b b_id_fkey", "FK CONSTRAINT", 'ALTER TABLE ONLY "public"."b"\n    ADD CONSTRAINT'
          ' "b_id_fkey" FOREIGN KEY ("id") REFERENCES "public"."a"("id");'),
    entry("mv", "MATERIALIZED VIEW DATA", 'REFRESH MATERIALIZED VIEW "public"."mv";'),
    "--\n-- PostgreSQL database dump complete\n--\n\n\\unrestrict k3y\n\n",
]).encode()


def plan(dump: bytes) -> list[tuple]:
    """What the planner does, in short: ("start", stage), ("barrier",), ("end",), and
    ("send", type) for each entry's first piece (None: SQL before any entry)."""
    planner = Planner()
    steps = []
    for action in [a for piece in read_dump(io.BytesIO(dump)) for a in planner.route(piece)] \
            + planner.finish():
        if isinstance(action, Start):
            steps.append(("start", action.unit.stage))
        elif isinstance(action, Send):
            header = action.piece.header
            step = ("send", header.type if header else None)
            if action.piece.starts_entry or (header is None and steps[-1] != step):
                steps.append(step)
        else:
            steps.append(("barrier",) if isinstance(action, Barrier) else ("end",))
    return steps


def test_schema_then_data_and_keys_then_foreign_keys_with_barriers_between():
    assert plan(DUMP) == [
        # the preamble and the schema, in order, in one session
        ("start", ORDERED), ("send", None), ("send", "TABLE"), ("send", "FUNCTION"),
        ("send", "TABLE"), ("end",),
        # once the schema is in: each table's rows, each SEQUENCE SET, a unit of its own
        ("barrier",), ("start", DATA), ("send", "TABLE DATA"), ("end",),
        ("start", DATA), ("send", "TABLE DATA"), ("end",),
        ("start", DATA), ("send", "SEQUENCE SET"), ("end",),
        # keys and indexes, an index's comment with it: no barrier, each queues behind
        # its table's rows (pick_session), or starts at once when they are in
        ("start", BUILD), ("send", "CONSTRAINT"), ("end",),
        ("start", BUILD), ("send", "INDEX"), ("send", "COMMENT"), ("end",),
        ("start", BUILD), ("send", "INDEX"), ("end",),
        # what it does not split, at a barrier, in order
        ("barrier",), ("start", ORDERED), ("send", "TRIGGER"), ("end",),
        ("barrier",), ("start", FOREIGN_KEYS), ("send", "FK CONSTRAINT"), ("end",),
        ("barrier",), ("start", ORDERED), ("send", "MATERIALIZED VIEW DATA"), ("end",),
    ]


def test_a_dump_without_entry_headers_goes_whole_to_one_session():
    sql = b"CREATE TABLE t (id int);\nCOPY t FROM stdin;\n1\n\\.\nSELECT pg_sleep(1);\n"

    assert plan(sql) == [("start", ORDERED), ("send", None), ("end",)]


def test_every_piece_of_the_dump_is_sent_once_in_order():
    planner = Planner()
    sent = b"".join(action.piece.text for piece in read_dump(io.BytesIO(DUMP), chunk_size=7)
                    for action in planner.route(piece) if isinstance(action, Send))

    assert sent == DUMP


def header(kind: str) -> Header:
    return Header(name="x", type=kind, schema="public", owner=None)


def test_keys_and_foreign_keys_lock_the_tables_they_name():
    key = stage_of(header("CONSTRAINT"), b'ALTER TABLE ONLY "public"."a"\n    ADD CONSTRAINT'
                                         b' "a_pkey" PRIMARY KEY ("id");')
    index = stage_of(header("INDEX"), b'CREATE UNIQUE INDEX "i" ON ONLY "s"."Odd ""t"""'
                                      b' USING "btree" ("id");')
    foreign = stage_of(header("FK CONSTRAINT"), b"ALTER TABLE ONLY public.b\n    ADD CONSTRAINT"
                                                b" b_fk FOREIGN KEY (id) REFERENCES public.a(id);")

    assert (key.stage, key.tables) == (BUILD, {b'"public"."a"'})
    assert (index.stage, index.tables) == (BUILD, {b'"s"."Odd ""t"""'})
    assert (foreign.stage, foreign.tables) == (FOREIGN_KEYS, {b"public.b", b"public.a"})


def test_a_tables_rows_lock_it_so_that_its_keys_and_indexes_queue_behind_them():
    rows = stage_of(header("TABLE DATA"), b'--\n\nCOPY "public"."a" ("id") FROM stdin;\n')
    value = stage_of(header("SEQUENCE SET"), b"SELECT pg_catalog.setval('public.s', 5, true);")

    assert (rows.stage, rows.tables) == (DATA, {b'"public"."a"'})
    assert (value.stage, value.tables) == (DATA, frozenset())
    # the key of a table whose rows a session still loads goes to that session
    assert pick_session([rows.tables, None], frozenset({b'"public"."a"'}), 2) == 0


def test_checks_added_after_the_data_wait_for_every_tables_rows():
    dump = "".join([
        entry("a", "TABLE", 'CREATE TABLE "public"."a" ("id" integer);'),
        entry("a", "TABLE DATA", 'COPY "public"."a" ("id") FROM stdin;\n1\n\\.\n', data=True),
        entry("a a_pkey", "CONSTRAINT",
              'ALTER TABLE ONLY "public"."a"\n    ADD CONSTRAINT "a_pkey" PRIMARY KEY ("id");'),
        entry("a positive", "CHECK CONSTRAINT", 'ALTER TABLE "public"."a"\n    ADD CONSTRAINT'
              ' "positive" CHECK (("id" > 0)) NOT VALID;'),
    ]).encode()

    assert plan(dump)[-7:] == [
        ("start", BUILD), ("send", "CONSTRAINT"), ("end",),
        # a NOT VALID check must see no row arrive after it, in any session
        ("barrier",), ("start", CHECKS), ("send", "CHECK CONSTRAINT"), ("end",)]


def test_a_foreign_key_whose_tables_cannot_be_read_runs_on_its_own():
    assert stage_of(header("FK CONSTRAINT"), b"-- something else\n").stage == ORDERED


def test_entries_it_does_not_know_keep_the_dumps_order():
    for kind in ("INDEX ATTACH", "TRIGGER", "RULE", "POLICY", "ACL", "DEFAULT ACL",
                 "MATERIALIZED VIEW DATA", "EVENT TRIGGER", "PUBLICATION", "SOMETHING NEW"):
        assert stage_of(header(kind), b"").stage == ORDERED


def test_a_free_session_takes_a_unit_else_a_new_one_else_it_waits():
    assert pick_session([frozenset({b"a"}), None], frozenset({b"b"}), 2) == 1  # idle
    assert pick_session([frozenset({b"a"})], frozenset({b"b"}), 2) == 1  # start another
    assert pick_session([frozenset({b"a"}), frozenset()], frozenset({b"b"}), 2) is None
    assert pick_session([], frozenset(), 4) == 0  # the first session of all


def test_a_unit_on_a_table_in_use_queues_behind_it_in_that_session():
    busy = [frozenset({b"a"}), frozenset({b"b"}), None]

    assert pick_session(busy, frozenset({b"b"}), 3) == 1  # not the idle one
    assert pick_session(busy, frozenset({b"a", b"b"}), 3) is None  # two sessions: wait


def test_settings_for_the_rest_of_the_script_are_found_only_at_top_level():
    sql = (b"\\restrict k3y\n\nSET statement_timeout = 0;\n"
           b"SELECT pg_catalog.set_config('search_path', '', false);\n"
           b"CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $$\nBEGIN\n"
           b"SET search_path = x;\nRETURN 1;\nEND $$;\n"
           b"SET LOCAL work_mem = '1MB';\nSELECT 'SET x = 1';\n"
           b"\n--\nSET default_tablespace = '';\n")

    assert settings_in(sql) == [
        (b"\\restrict", b"\\restrict k3y\n"),
        (b"statement_timeout", b"SET statement_timeout = 0;\n"),
        (b"search_path", b"SELECT pg_catalog.set_config('search_path', '', false);\n"),
        (b"default_tablespace", b"SET default_tablespace = '';\n"),
    ]
    assert settings_in(b"CREATE TABLE t (id int);\n") == []


def test_a_failure_names_the_entry_from_the_line_psql_gives():
    entries = [(1, Header("a", "TABLE DATA", "public", None, True)),
               (9, Header("b", "TABLE DATA", "public", None, True))]
    errors = ['psql:<stdin>:12: ERROR:  invalid input syntax for type integer: "zz"',
              'CONTEXT:  COPY b, line 2, column id: "zz"']

    assert explain_failure(errors, entries, 3) == (
        'psql: failed in TABLE DATA public.b: ERROR:  invalid input syntax for type integer:'
        ' "zz"')
    duplicate = ["psql:<stdin>:3: ERROR:  could not create unique index \"a_pkey\"",
                 "DETAIL:  Key (id)=(1) is duplicated."]
    assert explain_failure(duplicate, entries, 3) == (
        'psql: failed in TABLE DATA public.a: ERROR:  could not create unique index "a_pkey"'
        "\nDETAIL:  Key (id)=(1) is duplicated.")


def test_a_failure_before_the_dump_is_psqls_own_line():
    assert explain_failure(['ERROR:  database "x" already exists'], [], 1) == \
        'psql: ERROR:  database "x" already exists'
    assert explain_failure([], [], 0) == "psql: a session ended early (exit status 0)"


def test_every_session_connects_to_the_fresh_database_and_reads_its_sql_on_stdin():
    command = psql_command("postgresql://u@h/fresh")

    assert command[command.index("--dbname"):] == ["--dbname", "postgresql://u@h/fresh",
                                                   "--file", "-"]
    assert "ON_ERROR_STOP=on" in command and "-X" in command


def test_a_dump_cut_inside_rows_or_a_statement_does_not_end_cleanly():
    pieces = list(read_dump(io.BytesIO(DUMP)))
    cut_in_rows = list(read_dump(io.BytesIO(DUMP[:DUMP.index(b"2\n\\.\n")])))
    cut_after_copy = list(read_dump(io.BytesIO(DUMP[:DUMP.index(b"1\n2\n\\.\n")])))
    cut_in_function = list(read_dump(io.BytesIO(DUMP[:DUMP.index(b"RETURN 1;")])))

    assert ends_cleanly(pieces[-1])
    assert not ends_cleanly(cut_in_rows[-1])
    assert not ends_cleanly(cut_after_copy[-1])
    assert not ends_cleanly(cut_in_function[-1])
    assert ends_cleanly(list(read_dump(io.BytesIO(b"SELECT 1;\n-- done")))[-1])
