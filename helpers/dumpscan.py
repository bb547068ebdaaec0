"""What a plain-SQL dump carries: rows per table (its COPY blocks) and large objects.

Fed the dump in pieces as it streams by (never all of it in memory), `DumpScanner`
counts, for each `COPY <table> (<columns>) FROM stdin;` block, the lines up to its `\\.`:
in COPY's text format every row is one line (a newline inside a value is written `\\n`,
a backslash `\\\\`, so no row can look like the end marker). Large objects are counted by
their `SELECT pg_catalog.lo_create('<oid>');` lines.

The drill compares these counts with the restored database and the live one.
"""
from __future__ import annotations

import re

COPY_START = b"COPY "
END_OF_COPY = b"\\.\n"
LO_CREATE = b"SELECT pg_catalog.lo_create("
# The table of a COPY line, as pg_dump writes it: schema-qualified, each part quoted
# ("odd ""name""", with --quote-all-identifiers always) or a plain lower-case identifier.
_IDENTIFIER = rb'(?:"(?:[^"]|"")*"|[^\s".(]+)'
COPY_LINE = re.compile(
    rb"COPY (?P<table>" + _IDENTIFIER + rb"(?:\." + _IDENTIFIER + rb")?)"
    rb" +(?:\(.*\) +)?FROM stdin;\n\Z",  # a table without columns has two spaces
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
    """Counts rows per table and large objects in a plain-SQL dump fed with `feed`."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], int] = {}
        self.large_objects = 0
        self._table: tuple[str, str] | None = None  # inside this table's COPY block
        self._pending = b""  # an incomplete last line, kept for the next piece

    @property
    def unfinished_table(self) -> tuple[str, str] | None:
        """The table whose COPY block the dump ended in (a truncated dump), if any."""
        return self._table

    def feed(self, data: bytes) -> None:
        buffer = self._pending + data if self._pending else data
        end = buffer.rfind(b"\n") + 1  # whole lines only; the rest waits for more
        self._pending = buffer[end:]
        position = 0
        while position < end:
            if self._table is None:
                position = self._skip_sql(buffer, position, end)
            else:
                position = self._count_rows(buffer, position, end)

    def _skip_sql(self, buffer: bytes, position: int, end: int) -> int:
        """From a line start outside COPY: count lo_create lines up to the next COPY
        line, enter that block; return where scanning continues."""
        if buffer.startswith(COPY_START, position):
            copy_at = position
        else:
            found = buffer.find(b"\n" + COPY_START, position, end)
            copy_at = found + 1 if found >= 0 else end
        self.large_objects += _lines_starting_with(buffer, LO_CREATE, position, copy_at)
        if copy_at == end:
            return end
        line_end = buffer.index(b"\n", copy_at) + 1
        match = COPY_LINE.match(buffer, copy_at, line_end)
        if match:
            self._table = table_name(match.group("table"))
            self.rows.setdefault(self._table, 0)
        return line_end

    def _count_rows(self, buffer: bytes, position: int, end: int) -> int:
        """From a line start inside a COPY block: count rows up to its end marker."""
        if buffer.startswith(END_OF_COPY, position):
            marker = position
        else:
            found = buffer.find(b"\n" + END_OF_COPY, position, end)
            marker = found + 1 if found >= 0 else end
        table = self._table
        self.rows[table] = self.rows.get(table, 0) + buffer.count(b"\n", position, marker)
        if marker == end:
            return end
        self._table = None
        return marker + len(END_OF_COPY)

    def finish(self) -> None:
        """The dump ended: a last line without a newline still counts."""
        if self._pending:
            self.feed(b"\n")


def _lines_starting_with(buffer: bytes, prefix: bytes, start: int, end: int) -> int:
    """Lines in buffer[start:end] (start at a line start) beginning with `prefix`."""
    count = buffer.count(b"\n" + prefix, start, end)
    return count + (1 if buffer.startswith(prefix, start) and start < end else 0)
