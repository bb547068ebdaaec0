"""The SQL of a restore that builds a fresh database and swaps it in, as text.

A restore never applies a dump over the env's database: it creates `<target>__carabase_
restoring`, applies the dump there, then one transaction renames the target to
`<target>__carabase_undo` and the fresh database to the target's name. The fresh
database takes the old one's identity (owner, encoding, locale, settings, comment,
grants), read from the catalog as a `DatabaseIdentity` and written back as SQL here.

Pure: names, quoting and statements. tasks.py runs them with psql.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from helpers.dumproles import RestoringRole

MAX_IDENTIFIER_BYTES = 63  # PostgreSQL's NAMEDATALEN - 1; longer names are cut silently
UNDO_SUFFIX = "__carabase_undo"
RESTORING_SUFFIX = "__carabase_restoring"
RETIRED_SUFFIX = "__carabase_retired"

# Settings whose value is a list of identifiers: pg_dump splits them the same way
# (variable_is_guc_list_quote), or `search_path = '"$user", public'` would come back as
# one schema named `"$user", public`.
LIST_SETTINGS = frozenset({"local_preload_libraries", "search_path",
                           "session_preload_libraries", "shared_preload_libraries",
                           "temp_tablespaces", "unix_socket_directories"})


def quote_ident(name: str) -> str:
    """An identifier, always double-quoted (as pg_dump --quote-all-identifiers does)."""
    return '"' + name.replace('"', '""') + '"'


def quote_literal(text: str) -> str:
    """A string literal, for standard_conforming_strings = on (the default since
    PostgreSQL 9.1, and set by the swap script): a backslash is an ordinary character."""
    return "'" + text.replace("'", "''") + "'"


def _derived_name(target: str, suffix: str) -> str:
    """`<target><suffix>`, or, when that would pass 63 bytes, the target cut short at a
    character boundary plus 8 hex digits of its hash: still one name per target,
    always the same, and never the name of another target's copy."""
    name = target + suffix
    if len(name.encode()) <= MAX_IDENTIFIER_BYTES:
        return name
    digest = hashlib.sha256(target.encode()).hexdigest()[:8]
    room = MAX_IDENTIFIER_BYTES - len(suffix.encode()) - len(digest) - 1
    head = target.encode()[:room].decode(errors="ignore")
    return f"{head}_{digest}{suffix}"


def undo_name(target: str) -> str:
    """The database a restore keeps the replaced target in (one per env)."""
    return _derived_name(target, UNDO_SUFFIX)


def restoring_name(target: str) -> str:
    """The database a restore builds before swapping it in; a leftover is half-built."""
    return _derived_name(target, RESTORING_SUFFIX)


def retired_name(target: str) -> str:
    """Where the swap moves the previous restore's undo copy, to drop it once the swap
    has committed (DROP DATABASE cannot run inside the swap's transaction)."""
    return _derived_name(target, RETIRED_SUFFIX)


# --- the identity of a database ------------------------------------------------------

# One row of JSON about the database named by psql's :'name' (empty when there is none).
# to_jsonb of the pg_database row keeps this one query valid on every version: the
# locale columns changed in 15 (ICU provider) and 17 (datlocale).
IDENTITY_QUERY = """
select jsonb_build_object(
  'owner', pg_get_userbyid(d.datdba),
  'encoding', pg_encoding_to_char(d.encoding),
  'row', to_jsonb(d) - 'datacl',
  'tablespace', (select spcname from pg_tablespace where oid = d.dattablespace),
  'comment', shobj_description(d.oid, 'pg_database'),
  'has_acl', d.datacl is not null,
  'grants', (select coalesce(jsonb_agg(jsonb_build_object(
                 'grantee', case when a.grantee = 0 then null
                                 else pg_get_userbyid(a.grantee) end,
                 'privilege', a.privilege_type, 'grantable', a.is_grantable)
               order by a.grantee, a.privilege_type), '[]')
             from aclexplode(d.datacl) a),
  'settings', (select coalesce(jsonb_agg(jsonb_build_object(
                   'role', case when s.setrole = 0 then null
                                else pg_get_userbyid(s.setrole) end,
                   'config', s.setconfig) order by s.setrole), '[]')
               from pg_db_role_setting s where s.setdatabase = d.oid),
  'size', pg_database_size(d.oid))
from pg_database d where d.datname = :'name'
"""


# The sessions the swap closes: client backends only (autovacuum and other background
# workers never block a rename: the server stops them itself, and a non-superuser may
# not signal them).
# Another role's session shows no backend_type to a role without pg_read_all_stats:
# one with a role is then taken for a client (autovacuum workers have none).
CLIENT_SESSIONS = ("coalesce(backend_type = 'client backend', usesysid IS NOT NULL)"
                   " AND pid <> pg_catalog.pg_backend_pid()")
# Whether the current role may end the session of pg_stat_activity row `a`
# (pg_terminate_backend's own rule: a superuser any; others not a superuser's, and only
# their roles' sessions unless they have pg_signal_backend).
MAY_END = ("(SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) OR"
           " (NOT coalesce((SELECT rolsuper FROM pg_catalog.pg_roles WHERE oid = a.usesysid),"
           " false) AND (pg_catalog.pg_has_role(a.usesysid, 'MEMBER')"
           " OR pg_catalog.pg_has_role('pg_signal_backend', 'MEMBER')))")

# The settings of database :'name' the current role could not set again on the fresh
# copy: a parameter only a superuser sets (context other than 'user'), or a role's
# setting in the database for a role it may not administer. (A parameter granted with
# GRANT SET ON PARAMETER still counts as unsettable: the query runs on every version.)
UNSETTABLE_SETTINGS = """(select coalesce(json_agg(json_build_object(
      'role', case when s.setrole = 0 then null else pg_get_userbyid(s.setrole) end,
      'item', item) order by s.setrole, item), '[]')
    from pg_db_role_setting s join pg_database d on d.oid = s.setdatabase
      cross join unnest(s.setconfig) item
      join pg_roles me on me.rolname = current_user
    where d.datname = :'name' and not me.rolsuper and not (
      coalesce((select context = 'user' from pg_settings
                where name = lower(split_part(item, '=', 1))), true)
      and (s.setrole in (0, me.oid) or (me.rolcreaterole
           and pg_has_role(s.setrole, 'MEMBER WITH ADMIN OPTION')
           and not (select rolsuper from pg_roles where oid = s.setrole)))))"""

# The current role, and what the dump's owners, grants and extensions will meet on this
# server (helpers.dumproles.RestoringRole).
RESTORING_ROLE_QUERY = """
select json_build_object(
  'name', current_user,
  'superuser', (select rolsuper from pg_roles where rolname = current_user),
  'roles', (select json_object_agg(r.rolname, me.rolsuper or pg_has_role(r.oid, 'MEMBER'))
            from pg_roles r, pg_roles me where me.rolname = current_user),
  'extensions', (select coalesce(json_object_agg(name, usable), '{}') from (
                   select name, bool_or(trusted or not superuser) as usable
                   from pg_available_extension_versions group by name) e))
"""


def restoring_role(data: dict) -> RestoringRole:
    """RESTORING_ROLE_QUERY's answer, parsed."""
    return RestoringRole(data["name"], bool(data["superuser"]), data["roles"] or {},
                         data["extensions"] or {})


# Everything a restore asks the server before it starts, in one query (one psql): where
# the connection leads (the cluster's system identifier and the database the server
# says it is: the prod guard compares these), the target's identity (None when it does
# not exist), whether this role may create databases and owns the target, the client
# sessions the swap will close and those it may not (on the target and its undo copy,
# :'undo'), the settings it could not set again, and the roles and extensions the
# dump's statements will meet (helpers.dumproles).
PROBE_QUERY = f"""
select json_build_object(
  'cluster', (select system_identifier::text from pg_control_system()),
  'database', current_database(),
  'identity', ({IDENTITY_QUERY.strip()}),
  'creates', (select rolcreatedb or rolsuper from pg_roles where rolname = current_user),
  'owns', (select r.rolsuper or pg_has_role(d.datdba, 'MEMBER')
           from pg_roles r, pg_database d where r.rolname = current_user
           and d.datname = :'name'),
  'sessions', (select count(*) from pg_stat_activity where datname = :'name'
               and {CLIENT_SESSIONS}),
  'blocking', (select coalesce(json_agg(json_build_object('role', a.usename,
                   'application', a.application_name, 'database', a.datname)
                   order by a.pid), '[]')
               from pg_stat_activity a where a.datname in (:'name', :'undo')
               and {CLIENT_SESSIONS} and not ({MAY_END})),
  'unsettable', {UNSETTABLE_SETTINGS},
  'restoring', ({RESTORING_ROLE_QUERY.strip()}))
"""


@dataclass(frozen=True)
class Session:
    """A client session the restoring role may not end."""

    role: str
    application: str
    database: str


@dataclass(frozen=True)
class Probe:
    """PROBE_QUERY's answer."""

    cluster: str  # the system identifier of the cluster the connection reached
    database: str  # the database it reached, as the server names it
    identity: DatabaseIdentity | None
    creates: bool  # may create databases
    owns: bool  # may rename the target (owns it, or is superuser); True with no target
    sessions: int  # client sessions on the target, which the swap closes
    blocking: tuple[Session, ...] = ()  # ... and those it may not end
    unsettable: tuple[Setting, ...] = ()  # target settings it could not set again
    restoring: RestoringRole = field(default_factory=lambda: RestoringRole("", False, {}))

    @classmethod
    def from_json(cls, text: str) -> Probe:
        data = json.loads(text)
        identity = data["identity"]
        return cls(str(data["cluster"]), data["database"],
                   DatabaseIdentity.from_json(json.dumps(identity)) if identity else None,
                   bool(data["creates"]), data["owns"] is not False, int(data["sessions"]),
                   blocking=tuple(Session(s["role"] or "?", s["application"] or "",
                                          s["database"]) for s in data.get("blocking", ())),
                   unsettable=tuple(Setting(s["role"], *split_setting(s["item"]))
                                    for s in data.get("unsettable", ())),
                   restoring=restoring_role(data["restoring"]))


@dataclass(frozen=True)
class Grant:
    grantee: str | None  # None: PUBLIC
    privilege: str  # CONNECT, CREATE, TEMPORARY
    grantable: bool = False


@dataclass(frozen=True)
class Setting:
    role: str | None  # None: ALTER DATABASE ... SET; else ALTER ROLE ... IN DATABASE
    name: str
    value: str


@dataclass(frozen=True)
class DatabaseIdentity:
    """What an env's database keeps across a restore: everything but its contents."""

    owner: str
    encoding: str = "UTF8"
    collate: str | None = None
    ctype: str | None = None
    locale_provider: str | None = None  # 'icu' or 'builtin'; None for libc
    icu_locale: str | None = None
    icu_rules: str | None = None
    builtin_locale: str | None = None
    tablespace: str | None = None
    connection_limit: int = -1
    comment: str | None = None
    has_acl: bool = False  # False: the default privileges, nothing to copy
    grants: tuple[Grant, ...] = ()
    settings: tuple[Setting, ...] = field(default=())
    size: int = 0
    oid: int | None = None  # changes when a swap puts another database under the name

    @classmethod
    def from_json(cls, text: str) -> DatabaseIdentity:
        data = json.loads(text)
        row = data["row"]
        provider = {"i": "icu", "b": "builtin"}.get(row.get("datlocprovider") or "c")
        locale = row.get("daticulocale") or row.get("datlocale")
        settings = tuple(
            Setting(entry["role"], *split_setting(item))
            for entry in data["settings"] for item in entry["config"] or ())
        return cls(
            owner=data["owner"],
            encoding=data["encoding"],
            collate=row.get("datcollate"),
            ctype=row.get("datctype"),
            locale_provider=provider,
            icu_locale=locale if provider == "icu" else None,
            icu_rules=row.get("daticurules"),
            builtin_locale=locale if provider == "builtin" else None,
            tablespace=data["tablespace"],
            connection_limit=int(row.get("datconnlimit", -1)),
            comment=data["comment"],
            has_acl=data["has_acl"],
            grants=tuple(Grant(g["grantee"], g["privilege"], g["grantable"])
                         for g in data["grants"]),
            settings=settings,
            size=int(data.get("size") or 0),
            oid=int(row["oid"]) if "oid" in row else None,
        )


def split_setting(item: str) -> tuple[str, str]:
    """'work_mem=64MB' -> ('work_mem', '64MB'), as pg_db_role_setting stores them."""
    name, _, value = item.partition("=")
    return name, value


def split_identifier_list(value: str) -> list[str]:
    """A list setting as the server prints it ('"$user", public') -> its elements,
    unquoted ('$user', 'public'). pg_dump's SplitGUCList, in Python."""
    items, current, quoted, i = [], [], False, 0
    while i < len(value):
        char = value[i]
        if quoted:
            if char == '"' and value[i + 1:i + 2] == '"':
                current.append('"')
                i += 1
            elif char == '"':
                quoted = False
            else:
                current.append(char)
        elif char == '"':
            quoted = True
        elif char == ",":
            items.append("".join(current).strip())
            current = []
        else:
            current.append(char)
        i += 1
    last = "".join(current).strip()
    if last or items:
        items.append(last)
    return items


def setting_value_sql(name: str, value: str) -> str:
    if name.lower() in LIST_SETTINGS:
        return ", ".join(quote_literal(item) for item in split_identifier_list(value))
    return quote_literal(value)


# --- statements -----------------------------------------------------------------------


def drop_database_sql(name: str, force: bool = False) -> list[str]:
    """DROP DATABASE, if it exists. An orphaned psql of a killed restore may still be
    connected: its client sessions are ended first (those the role may end), then a
    plain DROP, which waits a few seconds for them to go and stops autovacuum itself.
    `force` (only for a role that may end every session: a superuser) uses WITH (FORCE);
    as a non-superuser FORCE fails whenever an autovacuum worker is in the database."""
    if force:
        return [f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE);"]
    return [f"SELECT count(pg_catalog.pg_terminate_backend(pid)) FROM"
            f" pg_catalog.pg_stat_activity a WHERE datname = {quote_literal(name)}"
            f" AND {CLIENT_SESSIONS} AND ({MAY_END});",
            f"DROP DATABASE IF EXISTS {quote_ident(name)};"]


def create_database_sql(name: str, identity: DatabaseIdentity | None) -> str:
    """CREATE DATABASE for the fresh copy: empty (template0), with the target's owner,
    encoding, locale and tablespace, which only CREATE DATABASE can set."""
    parts = [f"CREATE DATABASE {quote_ident(name)} WITH TEMPLATE template0"]
    if identity is not None:
        parts.append(f"OWNER {quote_ident(identity.owner)}")
        parts.append(f"ENCODING {quote_literal(identity.encoding)}")
        if identity.collate:
            parts.append(f"LC_COLLATE {quote_literal(identity.collate)}")
        if identity.ctype:
            parts.append(f"LC_CTYPE {quote_literal(identity.ctype)}")
        if identity.locale_provider == "icu":
            parts.append("LOCALE_PROVIDER icu")
            if identity.icu_locale:
                parts.append(f"ICU_LOCALE {quote_literal(identity.icu_locale)}")
            if identity.icu_rules:
                parts.append(f"ICU_RULES {quote_literal(identity.icu_rules)}")
        elif identity.locale_provider == "builtin":
            parts.append("LOCALE_PROVIDER builtin")
            if identity.builtin_locale:
                parts.append(f"BUILTIN_LOCALE {quote_literal(identity.builtin_locale)}")
        if identity.tablespace and identity.tablespace != "pg_default":
            parts.append(f"TABLESPACE {quote_ident(identity.tablespace)}")
    return " ".join(parts) + ";"


def setting_sql(name: str, setting: Setting) -> str:
    """The statement that gives database `name` `setting`."""
    value = setting_value_sql(setting.name, setting.value)
    prefix = (f"ALTER ROLE {quote_ident(setting.role)} IN DATABASE {quote_ident(name)}"
              if setting.role else f"ALTER DATABASE {quote_ident(name)}")
    return f"{prefix} SET {quote_ident(setting.name)} TO {value};"


def identity_sql(name: str, identity: DatabaseIdentity) -> list[str]:
    """What the database `name` must be given to carry `identity` beyond CREATE DATABASE:
    settings, per-role settings, comment, connection limit, grants. Run after the dump
    was applied (a setting such as default_transaction_read_only must not apply to
    the restore itself)."""
    db = quote_ident(name)
    statements = [setting_sql(name, setting) for setting in identity.settings]
    if identity.comment is not None:
        statements.append(f"COMMENT ON DATABASE {db} IS {quote_literal(identity.comment)};")
    if identity.connection_limit != -1:
        statements.append(f"ALTER DATABASE {db} WITH CONNECTION LIMIT"
                          f" {identity.connection_limit};")
    if identity.has_acl:
        # Start from no privileges at all, then grant exactly what the target had.
        statements.append(f"REVOKE ALL ON DATABASE {db} FROM PUBLIC;")
        statements.append(f"REVOKE ALL ON DATABASE {db} FROM {quote_ident(identity.owner)};")
        for grant in identity.grants:
            grantee = "PUBLIC" if grant.grantee is None else quote_ident(grant.grantee)
            option = " WITH GRANT OPTION" if grant.grantable else ""
            statements.append(f"GRANT {grant.privilege} ON DATABASE {db} TO {grantee}{option};")
    return statements


ENDED = "carabase: ended sessions:"


def close_sessions_sql(name: str) -> str:
    """Terminate the other client sessions on database `name` (never a background
    worker), and have psql say which on stderr (`ENDED`, then `role (application) pid`
    for each, comma-separated; helpers.swap.ended_sessions reads them back)."""
    return ("SELECT coalesce(string_agg(CASE WHEN pg_catalog.pg_terminate_backend(pid) THEN"
            " format('%s (%s) pid %s', usename, coalesce(nullif(application_name, ''), '-'),"
            " pid) END, ', '), '') AS carabase_ended FROM pg_catalog.pg_stat_activity"
            f" WHERE datname = {quote_literal(name)} AND {CLIENT_SESSIONS} \\gset\n"
            f"\\warn '{ENDED}' :carabase_ended")


def ended_sessions(stderr: str) -> list[str]:
    """The sessions close_sessions_sql ended, from psql's stderr."""
    ended = []
    for line in stderr.splitlines():
        if line.startswith(ENDED):
            ended += [item for item in line[len(ENDED):].strip().split(", ") if item]
    return ended


def swap_sql(target: str, fresh: str, undo: str | None,
             identity: DatabaseIdentity | None) -> list[str]:
    """The statements of the swap transaction (without BEGIN and COMMIT, which the
    controlling process sends): the fresh database takes the target's identity, the
    previous undo copy (if any) moves aside to `retired_name`, the target's sessions are
    closed, the target becomes `undo` (None: there is no target yet) and the fresh
    database takes its name. ALTER DATABASE ... RENAME waits a few seconds for terminated
    sessions to go and is transactional: all the renames or none, so a swap that fails
    leaves the previous undo copy where it was. psql runs these (\\gexec: rename the old
    undo copy only if there is one)."""
    statements = ["SET standard_conforming_strings = on;", "SET lock_timeout = '30s';"]
    if identity is not None:
        statements += identity_sql(fresh, identity)
    if undo is not None:
        statements.append(close_sessions_sql(undo))
        statements.append(
            f"SELECT format('ALTER DATABASE %I RENAME TO %I', datname,"
            f" {quote_literal(retired_name(target))}) FROM pg_catalog.pg_database"
            f" WHERE datname = {quote_literal(undo)} \\gexec")
        statements.append(close_sessions_sql(target))
        statements.append(f"ALTER DATABASE {quote_ident(target)} RENAME TO {quote_ident(undo)};")
    statements.append(f"ALTER DATABASE {quote_ident(fresh)} RENAME TO {quote_ident(target)};")
    return statements


def after_swap_sql(target: str, drop_undo: bool, force: bool = False) -> list[str]:
    """What runs once the swap has committed: the previous undo copy goes, and with
    `drop_undo` (--no-keep) the database the swap just replaced."""
    statements = drop_database_sql(retired_name(target), force)
    if drop_undo:
        statements += drop_database_sql(undo_name(target), force)
    return statements


def undo_swap_sql(target: str, undo: str, spare: str) -> list[str]:
    """Swap the undo copy and the target, through the free name `spare`: afterwards
    the target is what it was before the last restore, and the undo copy holds what
    that restore brought (so undoing twice is a redo)."""
    return [
        "SET lock_timeout = '30s';",
        close_sessions_sql(target),
        close_sessions_sql(undo),
        f"ALTER DATABASE {quote_ident(target)} RENAME TO {quote_ident(spare)};",
        f"ALTER DATABASE {quote_ident(undo)} RENAME TO {quote_ident(target)};",
        f"ALTER DATABASE {quote_ident(spare)} RENAME TO {quote_ident(undo)};",
    ]


# --- --in-place -----------------------------------------------------------------------

# Empties the connected database inside the restore's own transaction, so that a pure
# create script applies: every schema but the system ones is dropped with what it holds
# (tables, types, functions, extensions living there), large objects are unlinked, and
# `public` comes back empty with its owner, grants and comment. DROP SCHEMA needs the
# schema's owner; each dropped object takes a lock, hence --in-place's lock-memory limit.
IN_PLACE_CLEAR_SQL = r"""
SET standard_conforming_strings = on;
DO $carabase$
DECLARE
  public_owner oid; public_acl aclitem[]; public_comment text; item record;
BEGIN
  SELECT nspowner, nspacl, obj_description(oid, 'pg_namespace')
    INTO public_owner, public_acl, public_comment
    FROM pg_namespace WHERE nspname = 'public';
  FOR item IN SELECT extname FROM pg_extension WHERE extname <> 'plpgsql' LOOP
    EXECUTE format('DROP EXTENSION IF EXISTS %I CASCADE', item.extname);
  END LOOP;
  FOR item IN SELECT nspname FROM pg_namespace
      WHERE nspname NOT IN ('pg_catalog', 'information_schema')
        AND nspname NOT LIKE 'pg\_toast%' AND nspname NOT LIKE 'pg\_temp\_%' LOOP
    EXECUTE format('DROP SCHEMA %I CASCADE', item.nspname);
  END LOOP;
  PERFORM pg_catalog.lo_unlink(oid) FROM pg_catalog.pg_largeobject_metadata;
  IF public_owner IS NOT NULL THEN
    EXECUTE format('CREATE SCHEMA public AUTHORIZATION %s', public_owner::regrole);
    IF public_acl IS NOT NULL THEN
      EXECUTE format('REVOKE ALL ON SCHEMA public FROM %s', public_owner::regrole);
      FOR item IN SELECT * FROM aclexplode(public_acl) LOOP
        EXECUTE format('GRANT %s ON SCHEMA public TO %s%s', item.privilege_type,
                       CASE WHEN item.grantee = 0 THEN 'PUBLIC'
                            ELSE item.grantee::regrole::text END,
                       CASE WHEN item.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
      END LOOP;
    END IF;
    IF public_comment IS NOT NULL THEN
      EXECUTE format('COMMENT ON SCHEMA public IS %L', public_comment);
    END IF;
  END IF;
END
$carabase$;
"""
