"""Leaving out the DROP block of an older --clean dump, and only that."""
from __future__ import annotations

import os

from helpers.clean_section import starts_with_clean_section, strip_clean_section

HEADER = (b"--\n-- PostgreSQL database dump\n--\n\n\\restrict abc\n\n"
          b"SET statement_timeout = 0;\n"
          b"SELECT pg_catalog.set_config('search_path', '', false);\n\n")
CLEAN = (b'DROP POLICY IF EXISTS "p" ON "public"."t";\n'
         b'ALTER DOMAIN "public"."d" DROP CONSTRAINT IF EXISTS "c";\n'
         b"SELECT pg_catalog.lo_unlink(oid) FROM pg_catalog.pg_largeobject_metadata"
         b" WHERE oid = '16706';\n"
         b'DROP TABLE IF EXISTS "public"."two\nlines";\n')
BODY = (b"--\n-- Name: t; Type: TABLE\n--\n\nCREATE TABLE t (x text);\n"
        b"COPY t (x) FROM stdin;\nDROP TABLE IF EXISTS looks like SQL but is data;\n\\.\n")


def filtered(data: bytes) -> bytes:
    src_read, src_write = os.pipe()
    dst_read, dst_write = os.pipe()
    os.write(src_write, data)
    os.close(src_write)
    strip_clean_section(src_read, dst_write)
    os.close(dst_write)
    out = b""
    while chunk := os.read(dst_read, 65536):
        out += chunk
    os.close(src_read)
    os.close(dst_read)
    return out


def test_clean_dump_loses_its_drop_block_and_nothing_else():
    assert filtered(HEADER + CLEAN + BODY) == HEADER + BODY


def test_pure_create_script_passes_through_unchanged():
    assert filtered(HEADER + BODY) == HEADER + BODY


def test_dumps_are_told_apart_by_their_first_statement():
    assert starts_with_clean_section(HEADER + CLEAN + BODY)
    assert not starts_with_clean_section(HEADER + BODY)
    assert not starts_with_clean_section(b"")
