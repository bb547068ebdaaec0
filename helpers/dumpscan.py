"""What a plain-SQL dump carries: rows per table (its COPY blocks) and large objects.

`DumpScanner` counts them from the pieces helpers.dumpsql reads the dump into (never all
of it in memory): for each `COPY <table> (<columns>) FROM stdin;` block, the lines up to
its `\\.`. In COPY's text format every row is one line (a newline inside a value is
written `\\n`, a backslash `\\\\`, so no row can look like the end marker). Large objects
are counted by their `SELECT pg_catalog.lo_create('<oid>');` lines.

The drill compares these counts with the restored database and the live one. It feeds
the pieces of the reader that also lists the dump's roles (helpers.dumproles), so that
the dump is read once: `DumpRoles(also=scanner.piece)`. `feed` and `finish` read the
dump with a reader of the scanner's own.
"""
from __future__ import annotations

import re

from helpers.dumpsql import DumpReader, Piece, code_start, statements

LO_CREATE = b"SELECT pg_catalog.lo_create("
# The table of a COPY statement, as pg_dump writes it: schema-qualified, each part quoted
# ("odd ""name""", with --quote-all-identifiers always) or a plain lower-case identifier.
_IDENTIFIER = rb'(?:"(?:[^"]|"")*"|[^\s".(]+)'
COPY_STATEMENT = re.compile(
    rb"COPY (?P<table>" + _IDENTIFIER + rb"(?:\." + _IDENTIFIER + rb")?)"
    rb" +(?:\(.*\) +)?FROM stdin;\Z",  # a table without columns has two spaces
    re.DOTALL,
)
_PART = re.compile(_IDENTIFIER)


def table_name(qualified: bytes) -> tuple[str, str]:
    """(schema, table), unquoted, from `"public"."odd ""name"" table"` or `public.t`."""
    # A dump is in its database's encoding (LATIN1, say), and the bytes are not yet
    # authenticated while they are counted: never fail on them here.
    parts = [_unquote(part.decode(errors="surrogateescape")) for part in _PART.findall(qualified)]
    return (parts[0], parts[1]) if len(parts) == 2 else ("", parts[0])


def _unquote(part: str) -> str:
    if part.startswith('"'):
        return part[1:-1].replace('""', '"')
    return part


def display_name(table: tuple[str, str]) -> str:
    """schema.table as a person reads it (quoted only when it needs to be)."""
    return ".".join(part if re.fullmatch(r"[a-z_][a-z0-9_$]*", part)
                    else '"' + part.replace('"', '""') + '"' for part in table if part)


class DumpScanner:
    """Counts rows per table and large objects in a plain-SQL dump: its pieces given to
    `piece` by a reader, or the dump itself given to `feed`; `finish` at its end."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], int] = {}
        self.large_objects = 0
        self._table: tuple[str, str] | None = None  # inside this table's COPY block
        self._tail = b""  # the block's last bytes so far: is its end marker there?
        self._reader: DumpReader | None = None

    @property
    def unfinished_table(self) -> tuple[str, str] | None:
        """The table whose COPY block the dump ended in (a truncated dump), if any."""
        return self._table

    def feed(self, data: bytes) -> None:
        if self._reader is None:
            self._reader = DumpReader(self.piece)
        self._reader.feed(data)

    def piece(self, piece: Piece) -> None:
        if piece.kind == "data":
            self._rows(piece)
            return
        text = piece.text
        self.large_objects += text.count(b"\n" + LO_CREATE) + text.startswith(LO_CREATE)
        if text.endswith(b"FROM stdin;\n"):  # the reader hands on a COPY statement last
            statement = statements(text[:-1])[-1]  # a small piece: its entry's header, and it
            match = COPY_STATEMENT.match(statement, code_start(statement))
            if match:
                self._table = table_name(match.group("table"))
                self.rows.setdefault(self._table, 0)
                self._tail = b"\n"  # the rows start at a line start

    def _rows(self, piece: Piece) -> None:
        table = self._table
        if table is None:  # rows of a COPY this scanner cannot name: not counted
            return
        text = piece.text
        lines = text.count(b"\n")
        if piece.ends_copy:
            lines -= 1  # the end marker's line
            self._table = None
        self.rows[table] += lines
        self._tail = (self._tail + text[-3:])[-3:]

    def finish(self) -> None:
        """The dump ended: a last line without a newline still counts, and a last `\\.`
        without one ends its block."""
        if self._reader is not None:
            self._reader.finish()
        if self._table is None or self._tail.endswith(b"\n"):
            return
        if self._tail.endswith(b"\n\\."):
            self._table = None
        else:
            self.rows[self._table] += 1


