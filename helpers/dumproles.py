"""The roles a dump names, and the dump without the statements that name some of them.

A backup carries owners and grants (`ALTER ... OWNER TO`, and pg_dump's ACL and DEFAULT
ACL entries: `GRANT ... TO`, `REVOKE ... FROM`, `ALTER DEFAULT PRIVILEGES FOR ROLE`,
`SET SESSION AUTHORIZATION` for a grantor other than the owner). Restored on a server
that lacks one of those roles, or as a role that may not act as it, each such statement
would fail; the restore leaves exactly those statements out and says so. Only whole
top-level statements of "sql" pieces are looked at (helpers.dumpsql): never COPY rows,
never a function body or a string.

`python -m helpers.dumproles ROLE...` is the filter as a pipeline stage (stdin to
stdout); `leave_out` is the same filter for one piece, however the pieces are fed.
"""
from __future__ import annotations

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

_ROLE = rb'(?:"(?:[^"]|"")*"|[A-Za-z_\x80-\xff][A-Za-z0-9_$\x80-\xff]*)'
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
SESSION_AUTHORIZATION = re.compile(
    rb"SET SESSION AUTHORIZATION\s+(?P<authorization>" + _ROLE + rb"|'(?:[^']|'')*')" + _END,
    re.S)
SHAPES = (OWNER_TO, DEFAULT_PRIVILEGES, GRANT, REVOKE, SESSION_AUTHORIZATION)
# A quick look before splitting a piece into statements: most pieces name no role.
MENTIONS = re.compile(rb"OWNER TO|GRANT|REVOKE|SESSION AUTHORIZATION")
NOT_ROLES = frozenset({"public"})  # PUBLIC, unquoted: everyone, not a role


def _role(word: bytes) -> str | None:
    text = word.decode(errors="surrogateescape")
    if text.startswith('"'):
        return text[1:-1].replace('""', '"')
    if text.startswith("'"):
        return text[1:-1].replace("''", "'")
    lowered = text.lower()  # an unquoted identifier: folded, as the server does
    return None if lowered in NOT_ROLES else lowered


def roles_named(statement: bytes) -> frozenset[tuple[str, str]]:
    """(role, how) for each role `statement` (one top-level statement, with the
    comments before it) names as an owner, grantee or authorization; empty for any
    other statement."""
    code = statement[code_start(statement):]
    for shape in SHAPES:
        match = shape.match(code)
        if match:
            named = ((_role(word), how) for how, word in match.groupdict().items() if word)
            return frozenset((role, how) for role, how in named if role is not None)
    return frozenset()


def leave_out(sql: bytes, roles: Collection[str]) -> tuple[bytes, int]:
    """`sql` (one "sql" piece) without the statements naming any of `roles`, and how
    many were left out. A statement left out keeps the comments before it (an
    entry's header), so the pieces still read as pg_dump wrote them."""
    if not roles or not MENTIONS.search(sql):
        return sql, 0
    kept, dropped = [], 0
    for statement in statements(sql):
        if any(role in roles for role, _ in roles_named(statement)):
            kept.append(statement[:code_start(statement)])
            dropped += 1
        else:
            kept.append(statement)
    return b"".join(kept), dropped


# --- what the decrypt-and-check pass learns ----------------------------------------------


@dataclass
class DumpRoles:
    """Fed the dump's SQL as it streams by (`feed`, then `finish`): the roles it names
    and the objects in it only a superuser may create. `also` is given every piece its
    reader reads (the drill counts COPY rows on them: the dump is read once)."""

    naming: Counter = field(default_factory=Counter)  # roles_named(statement) -> count
    event_triggers: list[str] = field(default_factory=list)
    extensions: list[str] = field(default_factory=list)
    publications: list[str] = field(default_factory=list)  # FOR ALL TABLES / IN SCHEMA
    also: Callable[[Piece], None] | None = None

    def __post_init__(self) -> None:
        self._reader = DumpReader(self._piece)

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
            if header.type == "EVENT TRIGGER":
                self.event_triggers.append(header.name)
            elif header.type == "EXTENSION":
                self.extensions.append(header.name)
            elif header.type == "PUBLICATION TABLES IN SCHEMA" or (
                    header.type == "PUBLICATION" and b"FOR ALL TABLES" in piece.text):
                self.publications.append(header.name)
        if MENTIONS.search(piece.text):
            for statement in statements(piece.text):
                named = roles_named(statement)
                if named:
                    self.naming[named] += 1

    def roles(self, how: str) -> set[str]:
        return {role for named in self.naming for role, kind in named if kind == how}

    def statements_naming(self, roles: Collection[str]) -> int:
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
    dump names: the statements naming either are left out."""
    named = dump.roles(GRANTEE) | dump.roles(ACTOR) | dump.roles(AUTHORIZATION)
    missing = sorted(name for name in named if name not in role.roles)
    if role.superuser:
        return missing, []
    acts = {name for name in dump.roles(ACTOR) if name in role.roles
            and not role.roles[name] and name != DATABASE_OWNER}
    acts |= {name for name in dump.roles(AUTHORIZATION) if name in role.roles
             and name != role.name}
    return missing, sorted(acts)


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
    """One line for each kind of role left out, naming them and counting statements."""
    missing, unusable = unusable_roles(dump, role)
    lines = []
    if missing:
        lines.append(f"owners and grants for roles this server lacks were left out:"
                     f" {', '.join(missing)} ({_statements(dump.statements_naming(missing))})")
    if unusable:
        lines.append(f"owners and grants for roles {role.name} may not act as were left"
                     f" out: {', '.join(unusable)}"
                     f" ({_statements(dump.statements_naming(unusable))})")
    return lines


def _statements(count: int) -> str:
    return f"{count} statement" + ("" if count == 1 else "s")


def filter_stream(pieces: Iterable[Piece], roles: Collection[str], out) -> None:
    for piece in pieces:
        out.write(leave_out(piece.text, roles)[0] if piece.kind == "sql" else piece.text)


if __name__ == "__main__":
    try:
        filter_stream(read_dump(sys.stdin.buffer), frozenset(sys.argv[1:]), sys.stdout.buffer)
        sys.stdout.buffer.flush()
    except BrokenPipeError:  # psql stopped first; it says why
        sys.exit(1)
