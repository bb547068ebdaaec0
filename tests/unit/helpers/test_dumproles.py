"""Which roles a dump names, and the dump without the statements naming some of them."""
from __future__ import annotations

import io
import subprocess
import sys

import pytest

from helpers.dumproles import (ACTOR, AUTHORIZATION, GRANTEE, MAPPED, POLICY_ROLE, DumpRoles,
                               RestoringRole, RoleFilter, filter_arguments, left_out_warnings,
                               roles_named, superuser_only, unusable_roles)
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


def filtered(dump: bytes, lacking=(), acting=(), chunk: int = 5) -> tuple[bytes, int]:
    """The dump through RoleFilter, read in small chunks; and how many it left out."""
    role_filter = RoleFilter(lacking, acting)
    text = b"".join(role_filter.piece(piece)
                    for piece in read_dump(io.BytesIO(dump), chunk_size=chunk))
    return text, role_filter.left_out


def removed_lines(dump: bytes, result: bytes) -> list[bytes]:
    return [line for line in dump.splitlines() if line not in result.splitlines()]


def test_the_filter_drops_exactly_the_statements_naming_the_roles_and_keeps_headers():
    result, dropped = filtered(DUMP, {"reader"})

    assert dropped == 3
    assert removed_lines(DUMP, result) == [
        b'GRANT SELECT ON TABLE "public"."items" TO "reader";',
        b'GRANT SELECT ON TABLE "public"."owned_by_etl" TO "reader";',
        b'ALTER DEFAULT PRIVILEGES FOR ROLE "app" IN SCHEMA "public" GRANT'
        b' SELECT ON TABLES  TO "reader";']
    # The function body and the COPY row that look like such statements stay.
    assert b"""$$ select 'ALTER TABLE x OWNER TO "reader";' $$;""" in result
    assert b'1\tGRANT SELECT ON TABLE "public"."items" TO "reader";\n' in result
    assert b"-- Name: TABLE \"items\"; Type: ACL" in result


def test_a_filter_of_no_roles_returns_the_dump_itself():
    assert filtered(DUMP) == (DUMP, 0)


def test_the_filter_stage_streams_the_dump_as_the_filter_reads_it():
    filtered_out = subprocess.run(
        [sys.executable, "-m", "helpers.dumproles", "--lacks=reader", "--may-not-act-as=etl"],
        input=DUMP, capture_output=True, check=True, cwd=REPO).stdout

    assert filtered_out == filtered(DUMP, {"reader"}, {"etl"}, chunk=256 * 1024)[0]
    assert b'ALTER TABLE "public"."owned_by_etl" OWNER TO "etl";' not in filtered_out
    assert b'ALTER TABLE "public"."items" OWNER TO "app";' in filtered_out


def test_the_filter_stage_takes_odd_role_names_and_refuses_bare_ones():
    odd = subprocess.run([sys.executable, "-m", "helpers.dumproles", "--lacks=-odd=name"],
                         input=b'GRANT ALL ON TABLE "t" TO "-odd=name";\n',
                         capture_output=True, check=True, cwd=REPO)
    assert odd.stdout == b"\n"
    bare = subprocess.run([sys.executable, "-m", "helpers.dumproles", "reader"], input=DUMP,
                          capture_output=True, cwd=REPO)
    assert bare.returncode == 2 and b"unrecognized arguments: reader" in bare.stderr
    assert b"Traceback" not in bare.stderr


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


# --- a grantor's SET SESSION AUTHORIZATION, policies, user mappings ------------------------

# What pg_dump 15 writes (trimmed): t owned by owner, granted to app with grant option,
# app's grants to reader and (by column) to etl; four policies; three user mappings.
GRANTORS_POLICIES = b"""--
-- Name: USER MAPPING app SERVER other; Type: USER MAPPING; Schema: -; Owner: postgres
--

CREATE USER MAPPING FOR "app" SERVER "other";


--
-- Name: USER MAPPING public SERVER other; Type: USER MAPPING; Schema: -; Owner: postgres
--

CREATE USER MAPPING FOR "public" SERVER "other" OPTIONS (
    "user" 'p'
);


--
-- Name: USER MAPPING reader SERVER other; Type: USER MAPPING; Schema: -; Owner: postgres
--

CREATE USER MAPPING FOR "reader" SERVER "other" OPTIONS (
    "password" 'secret',
    "user" 'r'
);


--
-- Name: items p_app; Type: POLICY; Schema: public; Owner: owner
--

CREATE POLICY "p_app" ON "public"."items" TO "app", "reader" USING (true);


--
-- Name: items p_pub; Type: POLICY; Schema: public; Owner: owner
--

CREATE POLICY "p_pub" ON "public"."items" USING (true);


--
-- Name: items p_read; Type: POLICY; Schema: public; Owner: owner
--

CREATE POLICY "p_read" ON "public"."items" FOR SELECT TO "reader", "Odd, Role" USING (true);


--
-- Name: POLICY "p_read" ON "items"; Type: COMMENT; Schema: public; Owner: owner
--

COMMENT ON POLICY "p_read" ON "public"."items" IS 'TO "app"';


--
-- Name: t p_limit; Type: POLICY; Schema: public; Owner: owner
--

CREATE POLICY "p_limit" ON "public"."t" AS RESTRICTIVE TO "Odd, Role", "app" USING ((n <> 'TO x'));


--
-- Name: TABLE "items"; Type: ACL; Schema: public; Owner: owner
--

GRANT SELECT ON TABLE "public"."items" TO "app" WITH GRANT OPTION;
SET SESSION AUTHORIZATION "app";
GRANT SELECT ON TABLE "public"."items" TO "reader";
RESET SESSION AUTHORIZATION;
GRANT UPDATE ON TABLE "public"."items" TO "etl";


--
-- Name: COLUMN "items"."id"; Type: ACL; Schema: public; Owner: owner
--

SET SESSION AUTHORIZATION "app";
GRANT SELECT("id") ON TABLE "public"."items" TO "etl";
RESET SESSION AUTHORIZATION;
"""


@pytest.mark.parametrize("statement, expected", [
    (b'CREATE POLICY "p" ON "public"."t" TO "app", "Odd, Role" USING (true);',
     {("app", POLICY_ROLE), ("Odd, Role", POLICY_ROLE)}),
    (b'CREATE POLICY p ON t AS RESTRICTIVE FOR ALL TO PUBLIC, reader WITH CHECK (a);',
     {("reader", POLICY_ROLE)}),
    (b"ALTER POLICY p ON s.t TO app USING (x = 'TO y');", {("app", POLICY_ROLE)}),
    (b"ALTER POLICY p ON s.t RENAME TO q;", set()),
    (b'CREATE POLICY "p" ON "public"."t" USING (true);', set()),
    (b'CREATE USER MAPPING FOR "reader" SERVER "s" OPTIONS ("password" \'x\');',
     {("reader", MAPPED)}),
    (b'CREATE USER MAPPING FOR "public" SERVER "s";', set()),
    (b"CREATE USER MAPPING FOR CURRENT_USER SERVER s;", set()),
    (b"SET SESSION AUTHORIZATION DEFAULT;", set()),
    (b"SET SESSION AUTHORIZATION 'Owner';", {("Owner", AUTHORIZATION)}),
])
def test_roles_named_reads_policy_roles_and_user_mappings(statement, expected):
    assert roles_named(b"\n" + statement) == frozenset(expected)


def test_a_grant_under_a_grantor_left_out_is_left_out_with_it():
    result, dropped = filtered(GRANTORS_POLICIES, acting={"app"})

    assert removed_lines(GRANTORS_POLICIES, result) == [
        b'GRANT SELECT ON TABLE "public"."items" TO "app" WITH GRANT OPTION;',
        b'SET SESSION AUTHORIZATION "app";',
        b'GRANT SELECT ON TABLE "public"."items" TO "reader";',
        b'SET SESSION AUTHORIZATION "app";',
        b'GRANT SELECT("id") ON TABLE "public"."items" TO "etl";']
    # Both SETs and both grants app made (the RESETs stay), and, as for any role the
    # restoring role may not act as, the grant to app.
    assert dropped == 5
    # Grants by the owner, after the RESET, stay; so do policies and user mappings for
    # app, a role the server has.
    assert b'GRANT UPDATE ON TABLE "public"."items" TO "etl";' in result
    assert b'CREATE USER MAPPING FOR "app" SERVER "other";' in result
    assert b'TO "app", "reader" USING (true);' in result


def test_an_owner_switch_under_set_session_authorization_is_no_grantor():
    # pg_dump --use-set-session-authorization: an owner as a string, up to the next one.
    dump = (b"SET SESSION AUTHORIZATION 'gone';\n"
            b"CREATE TABLE t (a int);\nGRANT SELECT ON TABLE t TO reader;\n")
    result, dropped = filtered(dump, {"gone"})
    assert (result, dropped) == (dump.replace(b"SET SESSION AUTHORIZATION 'gone';", b""), 1)


def test_policies_keep_the_roles_the_server_has_and_apply_to_no_one_else():
    result, dropped = filtered(GRANTORS_POLICIES, {"reader", "Odd, Role"})

    assert b'CREATE POLICY "p_app" ON "public"."items" TO "app" USING (true);' in result
    assert (b'CREATE POLICY "p_limit" ON "public"."t" AS RESTRICTIVE TO "app"'
            b' USING ((n <> \'TO x\'));') in result
    assert b'CREATE POLICY "p_pub" ON "public"."items" USING (true);' in result
    # p_read was only for roles this server lacks: no role here, so no policy (an empty
    # TO list would be PUBLIC); its comment goes with it. So does reader's user mapping,
    # the grant to reader (and app's SET, RESET, owner's grant to etl) stay.
    assert b'CREATE POLICY "p_read"' not in result and b"COMMENT ON POLICY" not in result
    assert b'CREATE USER MAPPING FOR "reader"' not in result
    assert b'CREATE USER MAPPING FOR "public" SERVER "other"' in result
    assert dropped == 1 + 1 + 1 + 1  # p_read, its comment, the mapping, app's grant to reader


def test_an_alter_policy_to_roles_the_server_lacks_only_drops_the_policy():
    dump = (b'ALTER POLICY "p" ON "public"."t" TO "gone" USING (true);\n'
            b'ALTER POLICY "q" ON "public"."t" TO "gone", "app";\n'
            b'COMMENT ON POLICY "p" ON "public"."t" IS \'x\';\n')
    result, _ = filtered(dump, {"gone"})
    # Leaving the first out would keep p for its earlier roles, PUBLIC maybe: wider.
    assert result == (b'DROP POLICY "p" ON "public"."t";\n'
                      b'ALTER POLICY "q" ON "public"."t" TO "app";\n\n')


def test_what_is_left_out_or_narrowed_is_named_and_counted_as_the_filter_does():
    named = scanned(GRANTORS_POLICIES)
    laptop = RestoringRole("postgres", True, {"app": True, "etl": True, "owner": True})

    assert unusable_roles(named, laptop) == (["Odd, Role", "reader"], [])
    assert filter_arguments(named, laptop) == ("--lacks=Odd, Role", "--lacks=reader")
    assert left_out_warnings(named, laptop) == [
        "owners and grants for roles this server lacks were left out: reader (1 statement)",
        "user mappings for roles this server lacks were left out: reader on server other",
        "policies kept for their other roles, without roles this server lacks:"
        " p_app on public.items (reader), p_limit on public.t (Odd, Role)",
        "policies for roles this server lacks only were left out (they apply to no role"
        " here): p_read on public.items (reader, Odd, Role)"]
    assert not any("secret" in line for line in left_out_warnings(named, laptop))


@pytest.mark.parametrize("dump", [DUMP, GRANTORS_POLICIES])
@pytest.mark.parametrize("restoring", [
    RestoringRole("postgres", True, {}),
    RestoringRole("app", False, {"app": True, "etl": False, "reader": True}),
    RestoringRole("owner", False, {"owner": True, "app": False, "reader": True}),
])
def test_the_warnings_count_what_the_filter_leaves_out(dump, restoring):
    named = scanned(dump)
    missing, unusable = unusable_roles(named, restoring)
    _, dropped = filtered(dump, missing, unusable)
    counted = named.statements_naming({*missing, *unusable}) + sum(
        1 for name, _ in named.mappings if name in missing)
    # a policy left out, with its comments
    counted += sum(1 + named.policy_comments[policy.key] for policy in named.policies
                   if not any(policy.kept(missing)))
    assert dropped == counted
