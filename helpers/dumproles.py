"""The roles a dump names, and the dump without the statements that name some of them.

A backup carries owners and grants (`ALTER ... OWNER TO`, and pg_dump's ACL and DEFAULT
ACL entries: `GRANT ... TO`, `REVOKE ... FROM`, `ALTER DEFAULT PRIVILEGES FOR ROLE`,
`SET SESSION AUTHORIZATION` for a grantor other than the owner), row-level security
policies for some roles (`CREATE POLICY ... TO`) and user mappings (`CREATE USER MAPPING
FOR`). Restored on a server that lacks one of those roles, or as a role that may not act
as it, each such statement would fail, or run as someone else; the restore leaves exactly
those statements out and says so:

- an owner, a grant, default privileges: left out when they name a role the server
  lacks or one the restoring role may not act as;
- the GRANT and REVOKE statements between a grantor's `SET SESSION AUTHORIZATION` that is
  left out and its `RESET` (pg_dump's wrapper for a grant by a non-owner): left out
  too, else they would run as the restoring role, a grant by someone else or none;
- a user mapping for a role the server lacks: left out;
- a policy keeps the roles of its TO list the server has: it applies to exactly the
  roles the whole list would apply to here (no role can be a member of a missing one).
  A policy left with none applies to no role here: it is left out (with its COMMENT), an
  `ALTER POLICY ... TO` of such roles only becomes `DROP POLICY`. An empty TO list would
  mean PUBLIC, and never stands in for one: access is never widened.

Only whole top-level statements of "sql" pieces are looked at (helpers.dumpsql): never
COPY rows, never a function body or a string.

`python -m helpers.dumproles [--lacks=ROLE]... [--may-not-act-as=ROLE]...` is the filter
as a pipeline stage (stdin to stdout); `RoleFilter` is the same filter for the pieces,
however they are fed.
"""
from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field

from helpers.dumpsql import DumpReader, Piece, code_start, read_dump, statements

# How a statement names a role, which decides what the restoring role needs of it:
GRANTEE = "grantee"  # GRANT ... TO / REVOKE ... FROM: the role must exist
ACTOR = "actor"  # OWNER TO, FOR ROLE: the restoring role must be able to act as it
AUTHORIZATION = "authorization"  # SET SESSION AUTHORIZATION: superuser, or itself
POLICY_ROLE = "policy"  # a policy's TO list: the role must exist, the others stay
MAPPED = "user mapping"  # CREATE USER MAPPING FOR: the role must exist

_ROLE = rb'(?:"(?:[^"]|"")*"|[A-Za-z_\x80-\xff][A-Za-z0-9_$\x80-\xff]*)'
_QUALIFIED = _ROLE + rb"(?:\." + _ROLE + rb")?"
_GRANTED_BY = rb"(?:\s+GRANTED BY\s+" + _ROLE + rb")?"
_END = rb"\s*;\s*\Z"
OWNER_TO = re.compile(rb"ALTER\s.*\sOWNER TO\s+(?P<actor>" + _ROLE + rb")" + _END, re.S)
DEFAULT_PRIVILEGES = re.compile(
    rb"ALTER DEFAULT PRIVILEGES(?:\s+FOR ROLE\s+(?P<actor>" + _ROLE + rb"))?\s.*"
    rb"\s(?:TO|FROM)\s+(?P<grantee>" + _ROLE + rb")(?:\s+WITH GRANT OPTION)?"
    rb"(?:\s+(?:CASCADE|RESTRICT))?" + _END, re.S)
GRANT = re.compile(rb"GRANT\s.*\sTO\s+(?P<grantee>" + _ROLE + rb")"
                   rb"(?:\s+WITH (?:GRANT|ADMIN) OPTION)?" + _GRANTED_BY + _END, re.S)
REVOKE = re.compile(rb"REVOKE\s.*\sFROM\s+(?P<grantee>" + _ROLE + rb")" + _GRANTED_BY
                    + rb"(?:\s+(?:CASCADE|RESTRICT))?" + _END, re.S)
# pg_dump writes a grantor as an identifier ("app", then RESET), an owner under
# --use-set-session-authorization as a string ('app', up to the next one).
SESSION_AUTHORIZATION = re.compile(
    rb"SET SESSION AUTHORIZATION\s+(?P<authorization>" + _ROLE + rb"|'(?:[^']|'')*')" + _END,
    re.S)
RESET_AUTHORIZATION = re.compile(rb"RESET SESSION AUTHORIZATION" + _END)
SHAPES = (OWNER_TO, DEFAULT_PRIVILEGES, GRANT, REVOKE, SESSION_AUTHORIZATION)
POLICY_TO = re.compile(
    rb"(?P<verb>CREATE|ALTER) POLICY\s+(?P<policy>" + _ROLE + rb")\s+ON\s+(?P<table>"
    + _QUALIFIED + rb")(?:\s+AS\s+(?:PERMISSIVE|RESTRICTIVE))?"
    rb"(?:\s+FOR\s+(?:ALL|SELECT|INSERT|UPDATE|DELETE))?"
    rb"\s+TO\s+(?P<roles>" + _ROLE + rb"(?:\s*,\s*" + _ROLE + rb")*)"
    rb"(?:\s+(?:USING|WITH CHECK)\s.*)?" + _END, re.S)
POLICY_COMMENT = re.compile(rb"COMMENT ON POLICY\s+(?P<policy>" + _ROLE + rb")\s+ON\s+"
                            rb"(?P<table>" + _QUALIFIED + rb")\s+IS\s.*" + _END, re.S)
USER_MAPPING = re.compile(
    rb"(?:CREATE|ALTER) USER MAPPING(?:\s+IF NOT EXISTS)?\s+FOR\s+(?P<mapped>" + _ROLE
    + rb")\s+SERVER\s+(?P<server>" + _ROLE + rb")(?:\s+OPTIONS\s.*)?" + _END, re.S)
ROLE_WORD = re.compile(_ROLE)
# A quick look before splitting a piece into statements: most pieces name no role.
MENTIONS = re.compile(rb"OWNER TO|GRANT|REVOKE|SESSION AUTHORIZATION|POLICY|USER MAPPING")
# Unquoted, these stand for no role (PUBLIC: everyone); "public" quoted too, which the
# server reads as PUBLIC where a role is expected and no role may be named.
NOT_ROLES = frozenset({"public", "current_user", "current_role", "session_user", "user",
                       "default"})


def _role(word: bytes) -> str | None:
    text = word.decode(errors="surrogateescape")
    if text.startswith('"'):
        name = text[1:-1].replace('""', '"')
        return None if name == "public" else name
    if text.startswith("'"):
        return text[1:-1].replace("''", "'")
    lowered = text.lower()  # an unquoted identifier: folded, as the server does
    return None if lowered in NOT_ROLES else lowered


def _name(word: bytes) -> str:
    """An identifier as the server reads it (unquoted, or folded)."""
    text = word.decode(errors="surrogateescape")
    return text[1:-1].replace('""', '"') if text.startswith('"') else text.lower()


def _table_key(policy: bytes, table: bytes) -> tuple[str, ...]:
    return (*(_name(part) for part in ROLE_WORD.findall(table)), _name(policy))


@dataclass(frozen=True)
class Policy:
    """A policy statement's TO list: `CREATE POLICY`, or `ALTER POLICY ... TO`."""

    key: tuple[str, ...]  # (schema, table, policy), as the server reads the names
    creates: bool
    roles: tuple[str | None, ...]  # each entry of the TO list; None for PUBLIC and the like

    @property
    def name(self) -> str:
        *table, policy = self.key
        return f"{policy} on {'.'.join(table)}"

    def kept(self, lacking: Collection[str]) -> list[bool]:
        return [role is None or role not in lacking for role in self.roles]


def policy_to(statement: bytes) -> tuple[Policy, re.Match] | None:
    match = POLICY_TO.match(statement, code_start(statement))
    if match is None:
        return None
    roles = tuple(_role(word) for word in ROLE_WORD.findall(match.group("roles")))
    key = _table_key(match.group("policy"), match.group("table"))
    return Policy(key, match.group("verb") == b"CREATE", roles), match


def user_mapping(statement: bytes) -> tuple[str, str] | None:
    """(role, server) of a user mapping for a role (not for PUBLIC or the current user)."""
    match = USER_MAPPING.match(statement, code_start(statement))
    role = match and _role(match.group("mapped"))
    return (role, _name(match.group("server"))) if role else None


def roles_named(statement: bytes) -> frozenset[tuple[str, str]]:
    """(role, how) for each role `statement` (one top-level statement, with the
    comments before it) names as an owner, grantee, authorization, in a policy's TO list
    or for a user mapping; empty for any other statement."""
    named = _owner_or_grant(statement, code_start(statement))
    if named:
        return named
    policy = policy_to(statement)
    if policy is not None:
        return frozenset((role, POLICY_ROLE) for role in policy[0].roles if role is not None)
    mapping = user_mapping(statement)
    return frozenset({(mapping[0], MAPPED)}) if mapping else frozenset()


def _owner_or_grant(statement: bytes, start: int) -> frozenset[tuple[str, str]]:
    """roles_named for the SHAPES: owners, grants, authorizations."""
    for shape in SHAPES:
        match = shape.match(statement, start)
        if match:
            named = ((_role(word), how) for how, word in match.groupdict().items() if word)
            return frozenset((role, how) for role, how in named if role is not None)
    return frozenset()


class Grantors:
    """Whose `SET SESSION AUTHORIZATION` the statements being read run under: the GRANT
    and REVOKE statements up to its RESET name that grantor too (AUTHORIZATION)."""

    def __init__(self) -> None:
        self.grantor: str | None = None

    def entry(self) -> None:
        self.grantor = None  # pg_dump resets within the entry; never carry one over

    def named(self, statement: bytes) -> frozenset[tuple[str, str]]:
        """The owners, grantees and authorizations `statement` names, the grantor's
        included, noting SET and RESET."""
        start = code_start(statement)
        named = _owner_or_grant(statement, start)
        authorization = SESSION_AUTHORIZATION.match(statement, start)
        if authorization:
            word = authorization.group("authorization")
            self.grantor = None if word.startswith(b"'") else _role(word)
        elif RESET_AUTHORIZATION.match(statement, start):
            self.grantor = None
        elif self.grantor is not None and (GRANT.match(statement, start)
                                           or REVOKE.match(statement, start)):
            named |= {(self.grantor, AUTHORIZATION)}
        return named


def _read(statement: bytes, grantors: Grantors):
    """What the scan counts and the filter decides `statement` on, as (kind, value):
    ("roles", roles named, the grantor's included), ("policy", (Policy, match)),
    ("mapping", (role, server)), ("comment", a policy's key); None for anything else."""
    named = grantors.named(statement)
    if named:
        return "roles", named
    policy = policy_to(statement)
    if policy is not None:
        return "policy", policy
    mapping = user_mapping(statement)
    if mapping is not None:
        return "mapping", mapping
    comment = POLICY_COMMENT.match(statement, code_start(statement))
    if comment is not None:
        return "comment", _table_key(comment.group("policy"), comment.group("table"))
    return None


# --- what the decrypt-and-check pass learns ----------------------------------------------


@dataclass
class DumpRoles:
    """Fed the dump's SQL as it streams by (`feed`, then `finish`): the roles it names
    and the objects in it only a superuser may create. `also` is given every piece its
    reader reads (the drill counts COPY rows on them: the dump is read once)."""

    naming: Counter = field(default_factory=Counter)  # owners, grants: roles named -> count
    policies: list[Policy] = field(default_factory=list)  # every policy TO list, in order
    policy_comments: Counter = field(default_factory=Counter)  # a policy's key -> count
    mappings: list[tuple[str, str]] = field(default_factory=list)  # (role, server)
    event_triggers: list[str] = field(default_factory=list)
    extensions: list[str] = field(default_factory=list)
    publications: list[str] = field(default_factory=list)  # FOR ALL TABLES / IN SCHEMA
    also: Callable[[Piece], None] | None = None

    def __post_init__(self) -> None:
        self._reader = DumpReader(self._piece)
        self._grantors = Grantors()

    def feed(self, sql: bytes) -> None:
        self._reader.feed(sql)

    def finish(self) -> None:
        self._reader.finish()

    def _piece(self, piece: Piece) -> None:
        if self.also is not None:
            self.also(piece)
        if piece.kind != "sql":
            return
        header = piece.header
        if header is not None and piece.starts_entry:
            self._grantors.entry()
            if header.type == "EVENT TRIGGER":
                self.event_triggers.append(header.name)
            elif header.type == "EXTENSION":
                self.extensions.append(header.name)
            elif header.type == "PUBLICATION TABLES IN SCHEMA" or (
                    header.type == "PUBLICATION" and b"FOR ALL TABLES" in piece.text):
                self.publications.append(header.name)
        if MENTIONS.search(piece.text):
            for statement in statements(piece.text):
                self._statement(statement)

    def _statement(self, statement: bytes) -> None:
        read = _read(statement, self._grantors)
        if read is None:
            return
        kind, value = read
        if kind == "roles":
            self.naming[value] += 1
        elif kind == "policy":
            self.policies.append(value[0])
        elif kind == "mapping":
            self.mappings.append(value)
        else:
            self.policy_comments[value] += 1

    def roles(self, how: str) -> set[str]:
        found = {role for named in self.naming for role, kind in named if kind == how}
        if how == POLICY_ROLE:
            found.update(role for policy in self.policies for role in policy.roles if role)
        elif how == MAPPED:
            found.update(role for role, _ in self.mappings)
        return found

    def statements_naming(self, roles: Collection[str]) -> int:
        """The owners and grants (and grants under a grantor) naming any of `roles`."""
        return sum(count for named, count in self.naming.items()
                   if any(role in roles for role, _ in named))


@dataclass(frozen=True)
class RestoringRole:
    """The target server's roles as the restoring role sees them."""

    name: str
    superuser: bool
    roles: dict[str, bool]  # every role on the server -> the restoring role may act as it
    # each extension available on the server -> a non-superuser may create it
    extensions: dict[str, bool] = field(default_factory=dict)


# Every database has this role's members as its owner: restoring into a database the
# restoring role owns, it may act as it.
DATABASE_OWNER = "pg_database_owner"


def unusable_roles(dump: DumpRoles, role: RestoringRole) -> tuple[list[str], list[str]]:
    """(roles the server lacks, roles it has that `role` may not act as) among those the
    dump names: the statements naming either are left out (RoleFilter says how)."""
    named = set().union(*(dump.roles(how) for how in (GRANTEE, ACTOR, AUTHORIZATION,
                                                      POLICY_ROLE, MAPPED)))
    missing = sorted(name for name in named if name not in role.roles)
    if role.superuser:
        return missing, []
    acts = {name for name in dump.roles(ACTOR) if name in role.roles
            and not role.roles[name] and name != DATABASE_OWNER}
    acts |= {name for name in dump.roles(AUTHORIZATION) if name in role.roles
             and name != role.name}
    return missing, sorted(acts)


def filter_arguments(dump: DumpRoles, role: RestoringRole) -> tuple[str, ...]:
    """The arguments of the filter stage (`python -m helpers.dumproles ...`) for this
    dump and role; none when nothing is left out."""
    missing, unusable = unusable_roles(dump, role)
    return (*(f"--lacks={name}" for name in missing),
            *(f"--may-not-act-as={name}" for name in unusable))


def superuser_only(dump: DumpRoles, role: RestoringRole) -> list[str]:
    """The objects in the dump `role` could not create (none for a superuser), named;
    and any extension this server does not have at all."""
    absent = [f"extension {name} (not available on this server)"
              for name in dump.extensions if name not in role.extensions]
    if role.superuser:
        return absent
    return [*(f"event trigger {name}" for name in dump.event_triggers),
            *(f"extension {name} (not trusted on this server)" for name in dump.extensions
              if name in role.extensions and not role.extensions[name]),
            *absent,
            *(f"publication {name}" for name in dump.publications)]


def left_out_warnings(dump: DumpRoles, role: RestoringRole) -> list[str]:
    """One line for each kind of statement left out or changed, naming the roles and
    counting the statements, or naming the user mappings and policies."""
    missing, unusable = unusable_roles(dump, role)
    granting = {name for named in dump.naming for name, _ in named}
    lines = []
    if granting.intersection(missing):
        lines.append(f"owners and grants for roles this server lacks were left out:"
                     f" {', '.join(name for name in missing if name in granting)}"
                     f" ({_statements(dump.statements_naming(missing))})")
    if unusable:
        lines.append(f"owners and grants for roles {role.name} may not act as were left"
                     f" out: {', '.join(unusable)}"
                     f" ({_statements(dump.statements_naming(unusable))})")
    mappings = [f"{name} on server {server}" for name, server in dump.mappings
                if name in missing]
    if mappings:
        lines.append(f"user mappings for roles this server lacks were left out:"
                     f" {', '.join(mappings)}")
    narrowed, dropped = [], []
    for policy in dump.policies:
        kept = policy.kept(missing)
        lacking = ", ".join(name for name, keep in zip(policy.roles, kept) if not keep)
        if not all(kept):
            (narrowed if any(kept) else dropped).append(f"{policy.name} ({lacking})")
    if narrowed:
        lines.append(f"policies kept for their other roles, without roles this server"
                     f" lacks: {', '.join(narrowed)}")
    if dropped:
        lines.append(f"policies for roles this server lacks only were left out (they"
                     f" apply to no role here): {', '.join(dropped)}")
    return lines


def _statements(count: int) -> str:
    return f"{count} statement" + ("" if count == 1 else "s")


# --- the filter ----------------------------------------------------------------------


class RoleFilter:
    """The dump's pieces, in order, without the statements naming roles the server
    `lacking` or that the restoring role may not act as (`acting`), policies narrowed to
    the roles the server has (the module's docstring says what and why)."""

    def __init__(self, lacking: Collection[str], acting: Collection[str] = ()) -> None:
        self.lacking = frozenset(lacking)
        self.unusable = self.lacking | frozenset(acting)
        self.left_out = 0  # statements left out whole
        self._grantors = Grantors()
        self._removed: set[tuple[str, ...]] = set()  # policies applying to no role here

    def piece(self, piece: Piece) -> bytes:
        if piece.kind != "sql":
            return piece.text
        if piece.starts_entry:
            self._grantors.entry()
        if not self.unusable or not MENTIONS.search(piece.text):
            return piece.text
        return b"".join(self._statement(statement) for statement in statements(piece.text))

    def _statement(self, statement: bytes) -> bytes:
        read = _read(statement, self._grantors)
        if read is None:
            return statement
        kind, value = read
        if kind == "roles":
            out = any(name in self.unusable for name, _ in value)
        elif kind == "mapping":
            out = value[0] in self.lacking
        elif kind == "comment":
            out = value in self._removed
        else:
            return self._policy(statement, *value)
        if not out:
            return statement
        self.left_out += 1
        return statement[:code_start(statement)]  # the comments before it (its header) stay

    def _policy(self, statement: bytes, policy: Policy, match: re.Match) -> bytes:
        kept = policy.kept(self.lacking)
        if all(kept):
            return statement
        words = ROLE_WORD.findall(match.group("roles"))
        if any(kept):
            roles = b", ".join(word for word, keep in zip(words, kept) if keep)
            return statement[:match.start("roles")] + roles + statement[match.end("roles"):]
        self._removed.add(policy.key)  # and its COMMENT, which would fail without it
        self.left_out += 1
        header = statement[:code_start(statement)]
        if policy.creates:
            return header
        # It applied to these roles only: to none here, as if it were not there.
        return (header + b"DROP POLICY " + match.group("policy") + b" ON "
                + match.group("table") + b";")


def filter_stream(pieces: Iterable[Piece], role_filter: RoleFilter, out) -> None:
    for piece in pieces:
        out.write(role_filter.piece(piece))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m helpers.dumproles", allow_abbrev=False,
        description="pg_dump's plain SQL (stdin to stdout) without the statements naming"
                    " these roles")
    parser.add_argument("--lacks", action="append", default=[], metavar="ROLE",
                        help="a role the server lacks")
    parser.add_argument("--may-not-act-as", action="append", default=[], metavar="ROLE",
                        help="a role the server has that the restoring role may not act as")
    options = parser.parse_args(argv)
    try:
        filter_stream(read_dump(sys.stdin.buffer),
                      RoleFilter(options.lacks, options.may_not_act_as), sys.stdout.buffer)
        sys.stdout.buffer.flush()
    except BrokenPipeError:  # psql stopped first; it says why
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
