"""Older backups were dumped with `--clean --if-exists`: after the header, a block of
DROP ... IF EXISTS statements precedes the first object. Restore now applies a dump to
a fresh, empty database, where that block has nothing to drop, and some of it fails
there (`ALTER DOMAIN d DROP CONSTRAINT IF EXISTS c` needs the domain to exist). This
filter leaves the block out and passes everything else through unchanged:

    gzip -dc old.sql.gz | python -m helpers.clean_section | psql ...

pg_dump writes the block as one statement per line, between the header (comments, SET
and set_config lines) and the first `--` comment of the first object. Only that
stretch is looked at; the rest of the stream, data included, is copied as it comes.
"""
from __future__ import annotations

import os
import sys

CHUNK_SIZE = 256 * 1024
CLEAN_STATEMENT = (b"DROP ", b"ALTER ", b"SELECT pg_catalog.lo_unlink(")
HEADER_LINE = (b"--", b"SET ", b"SELECT pg_catalog.set_config(", b"\\restrict ")


def starts_with_clean_section(head: bytes) -> bool:
    """True when the first statement after a pg_dump header drops something: the dump
    was made with --clean. `head` is the start of the SQL (a few KiB suffice)."""
    for line in head.split(b"\n")[:-1]:  # the last piece may be a cut line
        if not line.strip() or line.startswith(HEADER_LINE):
            continue
        return line.startswith(CLEAN_STATEMENT)
    return False


def strip_clean_section(src: int, dst: int) -> None:
    """Copy file descriptor `src` to `dst` without the --clean block."""
    pending = b""
    seen_clean = False  # the block has started: its end is the next comment line
    in_statement = False  # inside a dropped statement that spans lines
    while chunk := os.read(src, CHUNK_SIZE):
        pending += chunk
        kept = []
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            if in_statement or line.startswith(CLEAN_STATEMENT):
                seen_clean = True
                in_statement = not line.rstrip().endswith(b";")
                continue
            header = not line.strip() or line.startswith(HEADER_LINE)
            if (seen_clean and line.startswith(b"--")) or line.startswith(b"-- Name: ") \
                    or not header:
                # The first object: from here on, copy without looking.
                _write(dst, b"".join(kept) + line + b"\n" + pending)
                _copy(src, dst)
                return
            kept.append(line + b"\n")
        _write(dst, b"".join(kept))
    _write(dst, pending)


def _write(dst: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(dst, view):]


def _copy(src: int, dst: int) -> None:
    while chunk := os.read(src, CHUNK_SIZE):
        _write(dst, chunk)


def main() -> int:
    try:
        strip_clean_section(sys.stdin.fileno(), sys.stdout.fileno())
    except BrokenPipeError:
        return 1  # psql stopped reading: its own message says why
    return 0


if __name__ == "__main__":
    sys.exit(main())
