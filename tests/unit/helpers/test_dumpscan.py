"""Counting a plain dump's COPY rows and large objects, fed in pieces of every size."""
from __future__ import annotations

import pytest

from helpers.dumproles import DumpRoles
from helpers.dumpscan import DumpScanner, display_name, table_name

DUMP = b"""--
-- PostgreSQL database dump
--
SET statement_timeout = 0;
CREATE TABLE "public"."item" (
    "id" bigint NOT NULL,
    "body" "text"
);
CREATE FUNCTION "public"."f"() RETURNS integer LANGUAGE "sql"
    AS $$ select 1 $$;
SELECT pg_catalog.lo_create('16390');
SELECT pg_catalog.lo_create('16391');
--
-- Data for Name: item; Type: TABLE DATA; Schema: public; Owner: -
--

COPY "public"."item" ("id", "body") FROM stdin;
1\tplain
2\ta line\\nbreak and a backslash \\\\. in it
3\t\\\\.
\\.


COPY "public"."empty" ("id") FROM stdin;
\\.


COPY "odd schema"."odd ""name"" table" ("x") FROM stdin;
a
b
\\.


COPY public.nocolumns  FROM stdin;



\\.


SELECT pg_catalog.lo_open('16390', 131072);
SELECT pg_catalog.lowrite(0, '\\x4c4f');
SELECT pg_catalog.lo_close(0);
--
-- PostgreSQL database dump complete
--
"""

EXPECTED = {
    ("public", "item"): 3,
    ("public", "empty"): 0,
    ("odd schema", 'odd "name" table'): 2,
    ("public", "nocolumns"): 3,
}


def scan(pieces) -> DumpScanner:
    scanner = DumpScanner()
    for piece in pieces:
        scanner.feed(piece)
    scanner.finish()
    return scanner


def in_pieces(data: bytes, size: int) -> list[bytes]:
    return [data[start:start + size] for start in range(0, len(data), size)]


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 64, 10_000])
def test_rows_per_table_are_the_same_whatever_the_piece_size(size):
    scanner = scan(in_pieces(DUMP, size))
    assert scanner.rows == EXPECTED
    assert scanner.large_objects == 2
    assert scanner.unfinished_table is None


def test_a_table_name_that_is_not_utf8_is_counted_not_a_crash():
    # pg_dump writes in the database's encoding: a LATIN1 database's "café".
    scanner = scan([b'COPY public."caf\xe9" (a) FROM stdin;\n1\n2\n\\.\n'])
    assert list(scanner.rows.values()) == [2]
    assert scanner.unfinished_table is None


def test_dump_that_ends_inside_a_copy_block_names_that_table():
    cut = DUMP[:DUMP.index(b"b\n\\.") + 2]
    scanner = scan([cut])
    assert scanner.unfinished_table == ("odd schema", 'odd "name" table')
    assert scanner.rows[("odd schema", 'odd "name" table')] == 2


def test_copy_inside_a_function_body_is_not_a_copy_block():
    dump = (b"CREATE FUNCTION f() AS $$\nCOPY x TO stdout;\n$$;\n"
            b"COPY public.t (a) FROM stdin;\n1\n\\.\n")
    assert scan([dump]).rows == {("public", "t"): 1}


def test_a_copy_line_in_a_function_body_or_a_string_is_not_a_copy_block():
    # Read as psql reads it (helpers.dumpsql): the body's lines are one string.
    dump = (b"CREATE FUNCTION public.f() RETURNS text LANGUAGE sql AS $$\n"
            b"COPY public.t (a) FROM stdin;\n$$;\n"
            b"COMMENT ON TABLE public.t IS '\nCOPY public.t (a) FROM stdin;\n';\n"
            b"COPY public.t (a) FROM stdin;\n1\n2\n\\.\n")
    scanner = scan([dump])
    assert scanner.rows == {("public", "t"): 2}
    assert scanner.unfinished_table is None


def test_the_drill_counts_on_the_reader_that_lists_the_roles():
    scanner = DumpScanner()
    named = DumpRoles(also=scanner.piece)
    for piece in in_pieces(DUMP, 7):
        named.feed(piece)
    named.finish()
    scanner.finish()
    assert scanner.rows == EXPECTED and scanner.large_objects == 2


def test_last_line_without_newline_still_ends_the_block():
    assert scan([b"COPY public.t (a) FROM stdin;\n1\n2\n\\."]).rows == {("public", "t"): 2}
    assert scan([b"COPY public.t (a) FROM stdin;\n1\n2\n\\."]).unfinished_table is None


def test_dump_without_data_counts_nothing():
    scanner = scan([b"SET x = 1;\nCREATE TABLE t (a int);\n"])
    assert scanner.rows == {} and scanner.large_objects == 0


@pytest.mark.parametrize("qualified, expected", [
    (b'"public"."item"', ("public", "item")),
    (b"public.item", ("public", "item")),
    (b'"odd schema"."odd ""name"" table"', ("odd schema", 'odd "name" table')),
    (b'"a.b"."c.d"', ("a.b", "c.d")),
])
def test_table_name_unquotes_each_part(qualified, expected):
    assert table_name(qualified) == expected


def test_display_name_quotes_only_what_needs_it():
    assert display_name(("public", "item")) == "public.item"
    assert display_name(("odd schema", 'odd "name"')) == '"odd schema"."odd ""name"""'
