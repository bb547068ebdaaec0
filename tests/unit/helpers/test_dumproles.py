"""Which roles a dump names, and the dump without the statements naming some of them."""
from __future__ import annotations

import io
import subprocess
import sys

import pytest

from helpers.dumproles import (ACTOR, AUTHORIZATION, GRANTEE, DumpRoles, RestoringRole,
                               leave_out, left_out_warnings, roles_named, superuser_only,
                               unusable_roles)
from helpers.dumpsql import read_dump
from tests.support import REPO

# What pg_dump 15 writes for a table owned by app, granted to reader and (by column) to
# etl, another owned by etl granted on by app, and default privileges (trimmed).
DUMP = b"""--
-- PostgreSQL database dump
--

SET statement_timeout = 0;

--
-- Name: f(); Type: FUNCTION; Schema: public; Owner: app
--

CREATE FUNCTION "public"."f"() RETURNS "text"
    LANGUAGE "sql"
    AS $$ select 'ALTER TABLE x OWNER TO "reader";' $$;


ALTER FUNCTION "public"."f"() OWNER TO "app";

--
-- Name: items; Type: TABLE; Schema: public; Owner: app
--

CREATE TABLE "public"."items" (
    "id" integer NOT NULL,
    "note" "text"
);


ALTER TABLE "public"."items" OWNER TO "app";

--
-- Name: owned_by_etl; Type: TABLE; Schema: public; Owner: etl
--

CREATE TABLE "public"."owned_by_etl" (
    "x" integer
);


ALTER TABLE "public"."owned_by_etl" OWNER TO "etl";

--
-- Data for Name: items; Type: TABLE DATA; Schema: public; Owner: app
--

COPY "public"."items" ("id", "note") FROM stdin;
1\tGRANT SELECT ON TABLE "public"."items" TO "reader";
\\.


--
-- Name: TABLE "items"; Type: ACL; Schema: public; Owner: app
--

GRANT SELECT ON TABLE "public"."items" TO "reader";


--
-- Name: COLUMN "items"."id"; Type: ACL; Schema: public; Owner: app
--

GRANT SELECT("id") ON TABLE "public"."items" TO "etl";


--
-- Name: TABLE "owned_by_etl"; Type: ACL; Schema: public; Owner: etl
--

GRANT SELECT ON TABLE "public"."owned_by_etl" TO "app" WITH GRANT OPTION;
SET SESSION AUTHORIZATION "app";
GRANT SELECT ON TABLE "public"."owned_by_etl" TO "reader";
RESET SESSION AUTHORIZATION;


--
-- Name: DEFAULT PRIVILEGES FOR TABLES; Type: DEFAULT ACL; Schema: public; Owner: app
--

ALTER DEFAULT PRIVILEGES FOR ROLE "app" IN SCHEMA "public" GRANT SELECT ON TABLES  TO "reader";


--
-- Name: SCHEMA "public"; Type: ACL; Schema: -; Owner: pg_database_owner
--

REVOKE USAGE ON SCHEMA "public" FROM PUBLIC;
"""


def scanned(dump: bytes = DUMP, chunk: int = 7) -> DumpRoles:
    named = DumpRoles()
    for start in range(0, len(dump), chunk):  # small chunks: every boundary is crossed
        named.feed(dump[start:start + chunk])
    named.finish()
    return named


@pytest.mark.parametrize("statement, expected", [
    (b'\n--\n-- Name: t\n--\n\nALTER TABLE "public"."t" OWNER TO "app";',
     {("app", ACTOR)}),
    (b'\nGRANT SELECT("a b") ON TABLE "public"."t TO x" TO "Odd ""Role""";',
     {('Odd "Role"', GRANTEE)}),
    (b"\nGRANT ALL ON SCHEMA s TO reader WITH GRANT OPTION;", {("reader", GRANTEE)}),
    (b'\nREVOKE ALL ON TABLE "public"."t" FROM "etl";', {("etl", GRANTEE)}),
    (b'\nREVOKE USAGE ON SCHEMA "public" FROM PUBLIC;', set()),
    (b'\nALTER DEFAULT PRIVILEGES FOR ROLE "app" IN SCHEMA "public" REVOKE ALL ON TABLES'
     b'  FROM "app";', {("app", ACTOR), ("app", GRANTEE)}),
    (b'\nSET SESSION AUTHORIZATION "etl";', {("etl", AUTHORIZATION)}),
    (b"\nRESET SESSION AUTHORIZATION;", set()),
    (b"\nCREATE FUNCTION f() RETURNS void LANGUAGE sql AS $$ GRANT x TO y; $$;", set()),
    (b"\nCREATE TABLE t (owner_to text);", set()),
])
def test_roles_named_reads_owners_grantees_and_authorizations_only(statement, expected):
    assert roles_named(statement) == frozenset(expected)


def test_the_scan_counts_every_role_the_dump_names_outside_bodies_and_rows():
    named = scanned()

    assert named.roles(GRANTEE) == {"reader", "etl", "app"}
    assert named.roles(ACTOR) == {"app", "etl"}
    assert named.roles(AUTHORIZATION) == {"app"}
    assert named.statements_naming({"reader"}) == 2 + 1  # two grants, one default ACL
    assert named.statements_naming({"etl"}) == 2


def test_a_server_lacking_reader_leaves_its_statements_out_and_says_how_many():
    named = scanned()
    laptop = RestoringRole("app", False, {"app": True, "etl": True})

    assert unusable_roles(named, laptop) == (["reader"], [])
    assert left_out_warnings(named, laptop) == [
        "owners and grants for roles this server lacks were left out: reader (3 statements)"]


def test_a_role_the_restorer_may_not_act_as_is_named_as_such():
    named = scanned()
    app = RestoringRole("app", False, {"app": True, "etl": False, "reader": False})

    assert unusable_roles(named, app) == ([], ["etl"])  # reader is only a grantee
    assert left_out_warnings(named, app) == [
        "owners and grants for roles app may not act as were left out: etl (2 statements)"]
    assert unusable_roles(named, RestoringRole("postgres", True, {"app": True, "etl": True,
                                                                  "reader": True})) == ([], [])


def test_leave_out_drops_exactly_the_statements_naming_the_roles_and_keeps_headers():
    kept, dropped = [], 0
    for piece in read_dump(io.BytesIO(DUMP), chunk_size=5):
        if piece.kind == "sql":
            text, count = leave_out(piece.text, {"reader"})
            kept.append(text)
            dropped += count
        else:
            kept.append(piece.text)
    result = b"".join(kept)

    assert dropped == 3
    removed = [line for line in DUMP.splitlines() if line not in result.splitlines()]
    assert removed == [b'GRANT SELECT ON TABLE "public"."items" TO "reader";',
                       b'GRANT SELECT ON TABLE "public"."owned_by_etl" TO "reader";',
                       b'ALTER DEFAULT PRIVILEGES FOR ROLE "app" IN SCHEMA "public" GRANT'
                       b' SELECT ON TABLES  TO "reader";']
    # The function body and the COPY row that look like such statements stay.
    assert b"""$$ select 'ALTER TABLE x OWNER TO "reader";' $$;""" in result
    assert b'1\tGRANT SELECT ON TABLE "public"."items" TO "reader";\n' in result
    assert b"-- Name: TABLE \"items\"; Type: ACL" in result


def test_leave_out_of_no_roles_returns_the_piece_itself():
    assert leave_out(DUMP, set()) == (DUMP, 0)


def test_the_filter_stage_streams_the_dump_as_leave_out_filters_each_piece():
    filtered = subprocess.run([sys.executable, "-m", "helpers.dumproles", "reader", "etl"],
                              input=DUMP, capture_output=True, check=True, cwd=REPO).stdout

    expected = b"".join(leave_out(piece.text, {"reader", "etl"})[0] if piece.kind == "sql"
                        else piece.text for piece in read_dump(io.BytesIO(DUMP)))
    assert filtered == expected
    assert b'ALTER TABLE "public"."owned_by_etl" OWNER TO "etl";' not in filtered
    assert b'ALTER TABLE "public"."items" OWNER TO "app";' in filtered


SUPERUSER_ONLY = b"""--
-- Name: pg_trgm; Type: EXTENSION; Schema: -; Owner: -
--

CREATE EXTENSION IF NOT EXISTS "pg_trgm" WITH SCHEMA "public";


--
-- Name: postgis; Type: EXTENSION; Schema: -; Owner: -
--

CREATE EXTENSION IF NOT EXISTS "postgis" WITH SCHEMA "public";


--
-- Name: everything; Type: PUBLICATION; Schema: -; Owner: postgres
--

CREATE PUBLICATION "everything" FOR ALL TABLES WITH (publish = 'insert');


--
-- Name: plain; Type: PUBLICATION; Schema: -; Owner: postgres
--

CREATE PUBLICATION "plain" WITH (publish = 'insert');


--
-- Name: plain s; Type: PUBLICATION TABLES IN SCHEMA; Schema: s; Owner: postgres
--

ALTER PUBLICATION "plain" ADD TABLES IN SCHEMA "s";


--
-- Name: audit; Type: EVENT TRIGGER; Schema: -; Owner: postgres
--

CREATE EVENT TRIGGER "audit" ON "ddl_command_end"
   EXECUTE FUNCTION "public"."audit"();
"""


def test_objects_only_a_superuser_may_create_are_named_for_anyone_else():
    named = scanned(SUPERUSER_ONLY)
    extensions = {"pg_trgm": True, "postgis": False}

    assert superuser_only(named, RestoringRole("app", False, {}, extensions)) == [
        "event trigger audit", "extension postgis (not trusted on this server)",
        "publication everything", "publication plain s"]
    assert superuser_only(named, RestoringRole("postgres", True, {}, extensions)) == []
    assert superuser_only(named, RestoringRole("postgres", True, {}, {"pg_trgm": True})) == [
        "extension postgis (not available on this server)"]
