"""helpers.dumpsql on what the real pg_dump writes for schemas that hurt."""
from __future__ import annotations

import subprocess

import pytest

from helpers import dumpscan
from helpers.dumpsql import DumpReader
from tasks import PG_DUMP_OPTIONS
from tests.e2e.real_schemas import (LARGE_OBJECTS_SQL, available_extensions, features_sql)
from tests.sample_db import VARIED_SCHEMA


@pytest.fixture(scope="module")
def real_dump(pg):
    """pg_dump's plain SQL, with the backup's own options, of every awkward schema."""
    source = pg.create_database("carabase_dumpsql")
    try:
        pg.psql(source, features_sql(available_extensions(pg)) + LARGE_OBJECTS_SQL)
        pg.psql(source, "create schema varied; set search_path = varied;" + VARIED_SCHEMA)
        yield subprocess.run(["pg_dump", *PG_DUMP_OPTIONS, "--dbname", pg.url(source)],
                             capture_output=True, check=True, timeout=120).stdout
    finally:
        pg.drop_database(source)


@pytest.mark.parametrize("chunk", [997, 256 * 1024])
def test_a_real_dump_reads_back_byte_for_byte_with_one_copy_block_per_table(real_dump,
                                                                            chunk):
    pieces = []
    reader = DumpReader(pieces.append)
    for start in range(0, len(real_dump), chunk):
        reader.feed(real_dump[start:start + chunk])
    reader.finish()

    assert b"".join(piece.text for piece in pieces) == real_dump
    scanner = dumpscan.DumpScanner()
    scanner.feed(real_dump)
    scanner.finish()
    tables_with_rows = [piece.header for piece in pieces if piece.ends_copy]
    assert len(tables_with_rows) == len(scanner.rows) > 10
    assert {piece.header.type for piece in pieces if piece.kind == "data"} == {"TABLE DATA"}
    headers = real_dump.count(b"\n--\n-- Name: ") + real_dump.count(b"\n--\n-- Data for Name: ")
    assert len([piece for piece in pieces if piece.starts_entry]) == headers
