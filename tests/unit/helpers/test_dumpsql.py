"""helpers.dumpsql: a plain dump read as entries and COPY rows, in any chunking."""
from __future__ import annotations

import io

import pytest

from helpers import dumpsql
from helpers.dumpsql import DumpReader, Header, read_dump, statements

PREAMBLE = (b"--\n-- PostgreSQL database dump\n--\n\n\\restrict abc123\n\n"
            b"SET standard_conforming_strings = on;\n"
            b"SELECT pg_catalog.set_config('search_path', '', false);\n\n")


def entry(kind: str, name: str, body: bytes, owner: str = "app", data: bool = False) -> bytes:
    label = "Data for Name" if data else "Name"
    return (f"--\n-- {label}: {name}; Type: {kind}; Schema: public; Owner: {owner}\n--\n\n"
            .encode() + body + b"\n\n\n")


# A function whose body holds what would otherwise look like an entry, a statement end
# and a COPY; strings of every kind; a rule with two statements in parentheses.
TRICKY_FUNCTION = entry("FUNCTION", "f()", (
    b'CREATE FUNCTION "public"."f"() RETURNS "text"\n    LANGUAGE "sql"\n'
    b"    AS $body$ select 'x;\n--\n-- Name: fake; Type: TABLE; Schema: public; Owner: x\n"
    b"--\nCOPY t FROM stdin;\n' || $q$;$q$ $body$;\n\n"
    b'ALTER FUNCTION "public"."f"() OWNER TO "app";'))
STRINGS = entry("TABLE", "s", (
    b"CREATE TABLE \"public\".\"we;ird\n--name\" (\n    \"a\" text DEFAULT E'it\\'s; --',\n"
    b"    \"b\" text DEFAULT 'don''t; /*' /* a /* nested */ comment; */\n);\n\n"
    b'ALTER TABLE "public"."we;ird\n--name" OWNER TO "app";'))
RULE = entry("RULE", "t r", (
    b'CREATE RULE "r" AS ON INSERT TO "public"."t" DO ( INSERT INTO "public"."log" VALUES (1);'
    b' INSERT INTO "public"."log" VALUES (2); );'))
ROWS = b"1\ta\n2\tends with \\\\.\n3\t\\\\.\n"  # rows that end like the end marker
TABLE_DATA = entry("TABLE DATA", "t", b'COPY "public"."t" ("id", "v") FROM stdin;\n'
                   + ROWS + b"\\.", data=True)
EMPTY_DATA = entry("TABLE DATA", "e", b'COPY "public"."e" ("id") FROM stdin;\n\\.', data=True)
ACL = entry("ACL", 'TABLE "t"', b'GRANT SELECT ON TABLE "public"."t" TO "reader";')
TRAILER = b"--\n-- PostgreSQL database dump complete\n--\n\n\\unrestrict abc123\n\n"
DUMP = PREAMBLE + TRICKY_FUNCTION + STRINGS + RULE + TABLE_DATA + EMPTY_DATA + ACL + TRAILER


def pieces_of(data: bytes, chunk: int) -> list[dumpsql.Piece]:
    found: list[dumpsql.Piece] = []
    reader = DumpReader(found.append)
    for start in range(0, len(data), chunk):
        reader.feed(data[start:start + chunk])
    reader.finish()
    return found


def merged(pieces) -> list[tuple]:
    """Pieces with consecutive ones of the same kind and entry joined: what does not
    depend on where the chunks happened to end."""
    out: list[list] = []
    for piece in pieces:
        if out and not piece.starts_entry and out[-1][0] == piece.kind \
                and out[-1][1] == piece.header and not out[-1][3]:
            out[-1][2] += piece.text
            out[-1][3] = piece.ends_copy
        else:
            out.append([piece.kind, piece.header, piece.text, piece.ends_copy,
                        piece.starts_entry])
    return [tuple(item) for item in out]


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 17, 4096, len(DUMP)])
def test_any_chunking_gives_back_the_dump_byte_for_byte_in_the_same_pieces(chunk):
    pieces = pieces_of(DUMP, chunk)
    assert b"".join(piece.text for piece in pieces) == DUMP
    assert merged(pieces) == merged(pieces_of(DUMP, len(DUMP)))


def test_entries_are_the_headers_pg_dump_wrote_and_none_inside_a_function_body():
    pieces = list(read_dump(io.BytesIO(DUMP), chunk_size=7))
    starts = [piece.header for piece in pieces if piece.starts_entry]
    assert [(h.type, h.name) for h in starts] == [
        ("FUNCTION", "f()"), ("TABLE", "s"), ("RULE", "t r"), ("TABLE DATA", "t"),
        ("TABLE DATA", "e"), ("ACL", 'TABLE "t"')]
    assert starts[3] == Header(name="t", type="TABLE DATA", schema="public", owner="app",
                               data=True)
    assert pieces[0].header is None and pieces[0].text == PREAMBLE


def test_copy_rows_come_as_data_ending_at_the_end_marker_not_at_a_lookalike_row():
    pieces = pieces_of(DUMP, 3)
    rows = b"".join(piece.text for piece in pieces
                    if piece.kind == "data" and piece.header.name == "t")
    assert rows == ROWS + b"\\.\n"
    ends = [piece for piece in pieces if piece.ends_copy]
    assert [piece.header.name for piece in ends] == ["t", "e"]
    assert [piece.text for piece in pieces if piece.header and piece.header.name == "e"
            and piece.kind == "data"] == [b"\\.\n"]
    copy_line = next(piece for piece in pieces if piece.kind == "sql" and piece.header
                     and piece.header.name == "t" and piece.header.data)
    assert copy_line.text.endswith(b'COPY "public"."t" ("id", "v") FROM stdin;\n')


def test_a_copy_inside_a_function_body_does_not_start_rows():
    pieces = pieces_of(DUMP, 1)
    assert not [piece for piece in pieces if piece.kind == "data"
                and piece.header.type != "TABLE DATA"]


def test_a_long_entry_comes_in_pieces_cut_at_statement_ends(monkeypatch):
    monkeypatch.setattr(dumpsql, "PIECE_SIZE", 1000)
    writes = b"".join(b"SELECT pg_catalog.lowrite(0, '\\x%s');\n" % (b"ab" * 100)
                      for _ in range(30))
    blobs = entry("BLOBS", "BLOBS", b"BEGIN;\n\n" + writes + b"\nCOMMIT;", data=True)
    pieces = pieces_of(PREAMBLE + blobs, 256)
    mine = [piece for piece in pieces if piece.header]
    assert len(mine) > 5 and mine[0].starts_entry
    assert not any(piece.starts_entry for piece in mine[1:])
    assert all(piece.text.rstrip().endswith(b";") for piece in mine[:-1])
    assert max(len(piece.text) for piece in mine) < 1000 + 300
    assert b"".join(piece.text for piece in pieces) == PREAMBLE + blobs


def test_a_truncated_dump_hands_on_what_it_has():
    cut = DUMP[:DUMP.index(b"2\tends with")]
    pieces = pieces_of(cut, 5)
    assert b"".join(piece.text for piece in pieces) == cut
    assert pieces[-1].kind == "data" and not pieces[-1].ends_copy


def test_bytes_that_are_not_utf8_pass_through_untouched():
    latin1 = entry("TABLE", "caf\xe9".encode("latin-1").decode("latin-1"),
                   b'CREATE TABLE "public"."caf\xe9" ("\xe9" text);')
    data = PREAMBLE + latin1.replace(b"caf\xc3\xa9", b"caf\xe9")
    pieces = pieces_of(data, 4)
    assert b"".join(piece.text for piece in pieces) == data


def test_statements_are_cut_after_top_level_semicolons_and_meta_commands_only():
    parts = statements(TRICKY_FUNCTION)
    assert b"".join(parts) == TRICKY_FUNCTION
    assert [part.strip().splitlines()[-1] for part in parts[:2]] == [
        b"--\nCOPY t FROM stdin;\n' || $q$;$q$ $body$;".splitlines()[-1],
        b'ALTER FUNCTION "public"."f"() OWNER TO "app";']
    assert len(statements(STRINGS)) == 3  # two statements and the blank lines after
    # Between a rule's actions too (psql would count parentheses): pieces of one entry
    # always go to one session together, so only the filter sees the difference.
    assert [part.strip()[-4:] for part in statements(RULE)] == [b"(1);", b"(2);", b");", b""]
    assert statements(b"\\restrict abc\nSET a = 1;\n") == [b"\\restrict abc\n",
                                                          b"SET a = 1;", b"\n"]


def test_positional_parameters_and_dollars_in_names_are_not_dollar_quotes():
    sql = b"CREATE FUNCTION a$b(int) RETURNS int AS 'select $1'; SELECT $1;\nSELECT 2;"
    assert statements(sql) == [b"CREATE FUNCTION a$b(int) RETURNS int AS 'select $1';",
                               b" SELECT $1;", b"\nSELECT 2;"]


@pytest.mark.parametrize("rows", [
    b"1\tplain\n2\ttext\n",
    b"".join(b"%d\t\\\\x%s\n" % (i, b"ab" * 40) for i in range(200)),  # bytea: many \
    b"1\t\\.x\n2\ta\\\\.\n",  # backslash-dot that is not the end marker
])
def test_the_end_of_rows_is_found_with_few_or_many_backslashes_in_them(rows):
    block = b"x\n" + rows + b"\\.\nafter"
    assert dumpsql.find_end_of_rows(block, 0) == block.index(b"\n\\.\nafter")
    assert dumpsql.find_end_of_rows(block[:-len(b".\nafter")], 0) == -1
