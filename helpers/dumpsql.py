"""pg_dump's plain SQL, read the way pg_dump wrote it: entries, and the rows of COPY blocks.

A plain dump is a run of entries, each introduced by a comment pg_dump writes for it:

    --
    -- Name: t; Type: TABLE; Schema: public; Owner: app
    --

    CREATE TABLE "public"."t" (...);

(`-- Data for Name: ...` for a table's rows, which follow a `COPY ... FROM stdin;` line
up to a `\\.` line). `DumpReader` turns the stream into `Piece`s: each entry's SQL, and
the rows of each COPY block in bulk, without ever holding much more than a megabyte.
The restore leaves out statements (helpers.dumproles) and spreads entries over several
sessions (the parallel apply) from these pieces; joined, they are the stream again,
byte for byte. This module only reads bytes: it starts no process (helpers/lifeline.py
is the one process runner).

The SQL between COPY blocks is lexed as psql lexes it (quotes, E'' strings, quoted
identifiers, dollar quotes, comments, meta-command lines), so that a header or a `;`
inside a function body or a string is never taken for one. Unlike psql, it does not
count parentheses: the `;` between the actions of a rule (`DO (INSERT ...; INSERT ...)`)
counts as an end here, which is harmless, since an entry's pieces always stay together.
Rows are never lexed: in COPY's text format no row can look like the `\\.` line that
ends them. Bytes are never decoded (a dump is in its database's encoding, LATIN1 say).
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

# An entry's SQL is handed on in pieces of about this size, cut at a statement's end:
# a BLOBS entry (every large object's lowrite calls) can be gigabytes.
PIECE_SIZE = 1024 * 1024

HEADER = re.compile(
    rb"--\n-- (?P<data>Data for )?Name: (?P<name>[^\n]*?); Type: (?P<type>[^\n]*?);"
    rb" Schema: (?P<schema>[^\n]*?)(?:; Owner: (?P<owner>[^\n]*?))?"
    rb"(?:; Tablespace: [^\n]*)?\n--\n")
HEADER_START = (b"--\n-- Name: ", b"--\n-- Data for Name: ")
HEADER_WINDOW = 64 * 1024  # a header's three lines fit in this, whatever the name
END_OF_COPY = b"\\.\n"
RARE_BACKSLASHES = 64  # in a chunk of rows: below this, look at each one
# At top level, what needs no decision: ordinary text, quoted identifiers, standard
# strings (not E'' ones, whose backslashes escape), a lone - or /. The regex engine
# skips it; the lexer looks only at what ends it (a statement's end, a comment, a dollar
# quote, an E'' string, a backslash, or the end of the text so far).
ORDINARY = re.compile(rb"""(?:[^-/'"$;\\]+|"[^"]*"|(?<![Ee])'[^']*'|-(?=[^-])|/(?=[^*]))*""")
DOLLAR_TAG = re.compile(rb"\$(?:[A-Za-z_\x80-\xff][A-Za-z0-9_\x80-\xff]*)?\$")
ESCAPE_OR_QUOTE = re.compile(rb"[\\']")
COMMENT_MARK = re.compile(rb"/\*|\*/")
IDENTIFIER_BYTE = re.compile(rb"[A-Za-z0-9_$\x80-\xff]")
COPY_STATEMENT = re.compile(rb"COPY .* FROM stdin;\Z", re.DOTALL)
LEADING_COMMENTS = re.compile(rb"(?:\s+|--[^\n]*(?:\n|\Z))*")

# Lexer states between tokens.
TOP, QUOTE, ESCAPE_QUOTE, IDENTIFIER, DOLLAR, LINE_COMMENT, BLOCK_COMMENT, ROWS = range(8)


@dataclass(frozen=True)
class Header:
    """What pg_dump's comment says of an entry."""

    name: str  # "t", "SCHEMA public", "DEFAULT PRIVILEGES FOR TABLES", "BLOBS", ...
    type: str  # "TABLE", "TABLE DATA", "ACL", "INDEX", "FK CONSTRAINT", ...
    schema: str | None  # None where the comment says "-"
    owner: str | None  # None where it says "-", or has no Owner field
    data: bool = False  # a "-- Data for Name:" header


@dataclass(frozen=True)
class Piece:
    """A run of the dump: `kind` "sql" (statements, comments) or "data" (COPY rows)."""

    kind: str
    header: Header | None  # the entry it belongs to; None before the first entry
    text: bytes
    starts_entry: bool = False  # the entry's first piece: it begins with its header
    ends_copy: bool = False  # the "data" piece that ends a COPY block with its "\." line


def parse_header(match: re.Match) -> Header:
    def field(name: str) -> str | None:
        value = match.group(name)
        text = None if value is None else value.decode(errors="surrogateescape")
        return None if text in (None, "-") else text

    return Header(name=field("name") or "", type=field("type") or "",
                  schema=field("schema"), owner=field("owner"),
                  data=match.group("data") is not None)


class DumpReader:
    """Push parser: `feed` the dump in chunks, `finish` at its end; `emit` receives the
    pieces in order."""

    def __init__(self, emit: Callable[[Piece], None]) -> None:
        self._emit = emit
        self._buf = b""  # _buf[_base:] is not handed on yet
        self._base = 0
        self._scanned = 0  # how far into _buf the lexer has got
        self._state = TOP
        self._depth = 0  # how deeply block comments nest
        self._tag = b""  # the closing dollar quote
        self._statement = 0  # where in _buf the current top-level statement starts
        self._before = b"\n"  # the byte before _buf[0]: where a line starts
        self._header: Header | None = None
        self._new_entry = False  # the next piece starts an entry
        self._final = False
        self._cuts: list[int] | None = None  # statements(): note ends, hand nothing on

    # --- feeding ---------------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        if not data:
            return
        if self._base:  # drop what was handed on (once a chunk, not once a piece)
            base = self._base
            self._before = self._buf[base - 1:base]
            self._buf = self._buf[base:] + data
            self._base, self._scanned, self._statement = 0, max(0, self._scanned - base), \
                max(0, self._statement - base)
        else:
            self._buf += data
        self._advance()

    def finish(self) -> None:
        self._final = True
        self._advance()
        if len(self._buf) > self._base:
            self._hand_on(len(self._buf), "data" if self._state == ROWS else "sql")

    # --- the lexer -------------------------------------------------------------------

    def _advance(self) -> None:
        while True:
            if self._state == ROWS:
                if not self._rows():
                    return
            elif not self._step():
                return

    def _byte_before(self, position: int) -> bytes:
        return self._buf[position - 1:position] if position > 0 else self._before

    def _step(self) -> bool:
        """Lex one token from _scanned; False when more input is needed to go on."""
        buf, pos, state = self._buf, self._scanned, self._state
        if state == TOP:
            at = ORDINARY.match(buf, pos).end()
            if at == len(buf):
                self._scanned = at
                return False
            return self._top_token(at)
        if state in (QUOTE, IDENTIFIER):
            quote = b"'" if state == QUOTE else b'"'
            end = buf.find(quote, pos)
            if end < 0 or (end + 1 == len(buf) and not self._final):
                self._scanned = len(buf) if end < 0 else end
                return False
            if buf[end + 1:end + 2] == quote:  # a doubled quote stands for itself
                self._scanned = end + 2
            else:
                self._state, self._scanned = TOP, end + 1
            return True
        if state == ESCAPE_QUOTE:
            match = ESCAPE_OR_QUOTE.search(buf, pos)
            if match is None or (match.start() + 1 == len(buf) and not self._final):
                self._scanned = len(buf) if match is None else match.start()
                return False
            at = match.start()
            if buf[at:at + 1] == b"\\" or buf[at + 1:at + 2] == b"'":
                self._scanned = at + 2
            else:
                self._state, self._scanned = TOP, at + 1
            return True
        if state == DOLLAR:
            end = buf.find(self._tag, pos)
            if end < 0:
                self._scanned = max(pos, len(buf) - len(self._tag) + 1)
                return False
            self._state, self._scanned = TOP, end + len(self._tag)
            return True
        if state == LINE_COMMENT:
            end = buf.find(b"\n", pos)
            if end < 0:
                self._scanned = len(buf)
                return False
            self._state, self._scanned = TOP, end + 1
            return True
        # BLOCK_COMMENT: /* ... */, nested as PostgreSQL nests them
        match = COMMENT_MARK.search(buf, pos)
        if match is None:
            self._scanned = max(pos, len(buf) - 1)
            return False
        self._depth += 1 if match.group() == b"/*" else -1
        self._scanned = match.end()
        if self._depth == 0:
            self._state = TOP
        return True

    def _top_token(self, at: int) -> bool:
        buf = self._buf
        char = buf[at:at + 1]
        following = buf[at + 1:at + 2]
        if not following and not self._final and char in b"-/'$\\":
            self._scanned = at
            return False  # what it starts depends on the next byte
        at_line_start = self._byte_before(at) == b"\n"
        if char == b"-":
            if following != b"-":
                self._scanned = at + 1
            elif at_line_start:
                return self._comment_line(at)
            else:
                self._state, self._scanned = LINE_COMMENT, at + 2
        elif char == b"/":
            if following == b"*":
                self._state, self._depth, self._scanned = BLOCK_COMMENT, 1, at + 2
            else:
                self._scanned = at + 1
        elif char == b"'":
            before = self._byte_before(at)
            escapes = before in (b"E", b"e") and not IDENTIFIER_BYTE.match(
                self._byte_before(at - 1))
            self._state, self._scanned = (ESCAPE_QUOTE if escapes else QUOTE), at + 1
        elif char == b'"':
            self._state, self._scanned = IDENTIFIER, at + 1
        elif char == b"$":
            return self._dollar(at)
        elif char == b";":
            return self._statement_end(at + 1, copy=True)
        elif at_line_start:  # a backslash: a psql meta-command, up to the end of its line
            end = buf.find(b"\n", at)
            if end < 0 and not self._final:
                self._scanned = at
                return False
            return self._statement_end(len(buf) if end < 0 else end + 1, copy=False)
        else:
            self._scanned = at + 1
        return True

    def _comment_line(self, at: int) -> bool:
        """A `--` line at a line start: an entry's header, or a comment."""
        buf = self._buf
        lookahead = buf[at:at + 24]
        maybe_header = any(start.startswith(lookahead[:len(start)]) or
                           lookahead.startswith(start) for start in HEADER_START)
        if maybe_header:
            match = HEADER.match(buf, at)
            if match is not None:
                self._start_entry(at, parse_header(match), match.end())
                return True
            complete = (self._final or len(buf) - at >= HEADER_WINDOW
                        or buf.count(b"\n", at, at + HEADER_WINDOW) >= 3)
            if not complete:  # its lines may still be coming
                self._scanned = at
                return False
        self._state, self._scanned = LINE_COMMENT, at + 2
        return True

    def _dollar(self, at: int) -> bool:
        if IDENTIFIER_BYTE.match(self._byte_before(at)):  # part of a name: a$b
            self._scanned = at + 1
            return True
        match = DOLLAR_TAG.match(self._buf, at)
        if match is None:
            rest = self._buf[at + 1:]
            if not self._final and re.fullmatch(rb"[A-Za-z0-9_\x80-\xff]*", rest):
                self._scanned = at
                return False  # the tag may go on in the next chunk
            self._scanned = at + 1  # $1, a parameter
            return True
        self._state, self._tag, self._scanned = DOLLAR, match.group(), match.end()
        return True

    def _statement_end(self, end: int, copy: bool) -> bool:
        """A top-level statement ends at `end`: a COPY's rows follow it; long SQL is
        handed on here."""
        buf = self._buf
        self._scanned = end
        if self._cuts is not None:
            self._cuts.append(end)
            self._statement = end
            return True
        if copy:
            start = code_start(buf, self._statement)
            if COPY_STATEMENT.match(buf, start, end):
                if end == len(buf) and not self._final:
                    self._scanned = end - 1
                    return False  # its newline decides where the rows start
                if buf[end:end + 1] == b"\n":
                    self._hand_on(end + 1, "sql")
                    self._state = ROWS
                    return True
        self._statement = end
        if end - self._base >= PIECE_SIZE:
            self._hand_on(end, "sql")
        return True

    def _start_entry(self, at: int, header: Header, after: int) -> None:
        if self._cuts is not None:  # statements(): a header is a comment there
            self._scanned = self._statement = after
            return
        if at > self._base:
            self._hand_on(at, "sql")
        self._header, self._new_entry = header, True
        self._scanned = self._statement = after

    def _rows(self) -> bool:
        """In a COPY block: hand on rows up to its `\\.` line, keeping back what might
        be the start of one."""
        buf, base = self._buf, self._base
        if buf.startswith(END_OF_COPY, base) and self._byte_before(base) == b"\n":
            end = base + len(END_OF_COPY)
        else:
            found = find_end_of_rows(buf, base)
            end = found + 1 + len(END_OF_COPY) if found >= 0 else -1
        if end < 0:
            keep = len(END_OF_COPY)
            if len(buf) - base > keep:
                self._hand_on(len(buf) - keep, "data")
            return False
        self._hand_on(end, "data", ends_copy=True)
        self._state = TOP
        self._scanned = self._statement = end
        return True

    def _hand_on(self, end: int, kind: str, ends_copy: bool = False) -> None:
        self._emit(Piece(kind, self._header, self._buf[self._base:end],
                         starts_entry=self._new_entry, ends_copy=ends_copy))
        self._new_entry = False
        self._base = end


def code_start(sql: bytes, start: int = 0) -> int:
    """Where a statement's code begins in `sql`, from `start`: after the blank lines and
    `--` comments (an entry's header) that pg_dump writes before it."""
    return LEADING_COMMENTS.match(sql, start).end()


def find_end_of_rows(buf: bytes, start: int) -> int:
    """buf.find(b"\\n\\.\\n", start), several times faster where rows hold few
    backslashes (most tables): memchr for each backslash, then a look around it; past a
    few dozen (bytea, say), find does the rest."""
    at = buf.find(b"\\", start + 1)
    for _ in range(RARE_BACKSLASHES):
        if at < 0:
            return -1
        if buf[at - 1:at] == b"\n" and buf[at + 1:at + 3] == b".\n":
            return at - 1
        at = buf.find(b"\\", at + 1)
    return -1 if at < 0 else buf.find(b"\n" + END_OF_COPY, at - 1)


def read_dump(stream: BinaryIO, chunk_size: int = 256 * 1024) -> Iterator[Piece]:
    """The pieces of the dump read from `stream`, in order."""
    pending: list[Piece] = []
    reader = DumpReader(pending.append)
    while chunk := stream.read(chunk_size):
        reader.feed(chunk)
        yield from pending
        pending.clear()
    reader.finish()
    yield from pending


def statements(sql: bytes) -> list[bytes]:
    """An "sql" piece cut after each top-level `;` and each meta-command line (the
    whitespace and comments before a statement go with it): joined, `sql` again."""
    lexer = DumpReader(lambda piece: None)
    lexer._buf, lexer._final, lexer._cuts = sql, True, []
    while lexer._scanned < len(sql) and lexer._step():
        pass
    bounds = [0, *lexer._cuts]
    if bounds[-1] < len(sql):
        bounds.append(len(sql))
    return [sql[start:end] for start, end in zip(bounds, bounds[1:])]
