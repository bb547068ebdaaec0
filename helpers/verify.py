"""Is a backup intact? Authenticate its envelope and check its gzip stream in one pass.

    python -m helpers.verify < backup.sql.gz.enc      # exit 0 intact, 1 damaged

Reads the file once and writes no plaintext anywhere: the ciphertext is decrypted chunk
by chunk (helpers.crypto.decrypted_chunks) and inflated in memory, the output thrown
away (or handed to a `sink`, such as the drill's COPY counter), and only when the GCM
tag has been checked at the end is the verdict given. A gzip fault found before the
end is remembered, not reported, until the tag says whether the file was tampered with
or damaged (authentication comes first: it says more).

The source is any binary stream: an open file, or the stdout of a command (`rclone
cat ...` for off-site copies, through the filter form above or in-process).
"""
from __future__ import annotations

import re
import sys
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from helpers import crypto
from helpers.config import isal_loads

# Inflated output per call: bounds memory however well a chunk compresses.
MAX_INFLATED = 1024 * 1024
GZIP_MAGIC = b"\x1f\x8b"


def _inflate_module():
    """ISA-L's zlib-compatible inflate (about twice as fast as zlib's here, with the same
    API and checks) where it loads; zlib's otherwise."""
    if isal_loads():
        from isal import isal_zlib
        return isal_zlib, (zlib.error, isal_zlib.error)
    return zlib, (zlib.error,)


INFLATE, INFLATE_ERRORS = _inflate_module()


def new_decompressor():
    """A gzip (not zlib, not raw deflate) decompressor: the one place it is made."""
    return INFLATE.decompressobj(wbits=31)


class GzipChecker:
    """Inflate a gzip stream fed in pieces; `fault` says what is wrong with it, if any.

    Several members one after the other (`cat a.gz b.gz`) are one valid stream, as gzip
    and pigz read them; anything after the last member that is not a gzip member is
    trailing data.
    """

    def __init__(self, sink: Callable[[bytes], None] | None = None):
        self.sink = sink
        self.fault: str | None = None
        self.compressed = 0
        self._inflater = new_decompressor()
        self._members = 1
        self._member_head = b""  # the first two bytes of the current member

    def feed(self, data: bytes) -> None:
        self.compressed += len(data)
        while data and not self.fault:
            if self._inflater.eof:  # the previous member ended: another one follows
                self._inflater = new_decompressor()
                self._members += 1
                self._member_head = b""
            data = self._inflate(data)

    def _inflate(self, data: bytes) -> bytes:
        """Inflate `data` into the current member; return what follows its end."""
        inflater = self._inflater
        self._member_head += data[:len(GZIP_MAGIC) - len(self._member_head)]
        try:
            out = inflater.decompress(data, MAX_INFLATED)
            self._pass_on(out)
            # Output was cut at MAX_INFLATED: the rest of the input waits in
            # unconsumed_tail, or zlib holds more output for the input it took.
            while not inflater.eof and (inflater.unconsumed_tail or len(out) == MAX_INFLATED):
                out = inflater.decompress(inflater.unconsumed_tail, MAX_INFLATED)
                self._pass_on(out)
        except INFLATE_ERRORS as error:
            self.fault = "trailing data after the gzip stream" if self._appended() \
                else f"gzip stream damaged: {_zlib_reason(error)}"
            return b""
        return inflater.unused_data if inflater.eof else b""

    def _appended(self) -> bool:
        """Past the first member, bytes that do not begin with gzip's magic number are
        not a damaged member but something appended to the stream."""
        return self._members > 1 and self._member_head != GZIP_MAGIC

    def _pass_on(self, out: bytes) -> None:
        if out and self.sink is not None:
            self.sink(out)

    def finish(self) -> str | None:
        """The fault of the whole stream, now that it has ended; None if it is intact."""
        if self.fault:
            return self.fault
        if self.compressed == 0:
            return "gzip stream empty"
        if not self._inflater.eof:
            return "trailing data after the gzip stream" if self._appended() \
                else "gzip stream truncated"
        return None


def _zlib_reason(error: Exception) -> str:
    """The reason alone, without the error number: zlib says "Error -3 while
    decompressing data: incorrect header check", ISA-L "Error -4 Invalid gzip/zlib
    wrapper found"."""
    text = str(error)
    if ": " in text:
        return text.split(": ", 1)[-1]
    return re.sub(r"^Error -?\d+ ", "", text)


def check_backup(key: bytes, src: BinaryIO,
                 sink: Callable[[bytes], None] | None = None) -> str | None:
    """None if `src` is an authentic envelope around an intact gzip stream, else the
    reason it is damaged. `sink` receives the inflated bytes as they come: they are only
    known to be authentic once this has returned None."""
    checker = GzipChecker(sink)
    try:
        for plaintext in crypto.decrypted_chunks(key, src):
            checker.feed(plaintext)
    except crypto.InvalidEnvelope as error:
        return str(error)
    return checker.finish()


def key_opens(key: bytes, path: Path) -> bool:
    """Whether `key` authenticates the backup at `path` (its gzip stream unchecked)."""
    try:
        with open(path, "rb") as src:
            for _ in crypto.decrypted_chunks(key, src):
                pass
    except (crypto.InvalidEnvelope, OSError):
        return False
    return True


def main() -> int:
    try:
        key = crypto.load_key()
    except crypto.MasterKeyError as error:
        print(f"verify: {error}", file=sys.stderr)
        return 2
    try:
        reason = check_backup(key, sys.stdin.buffer)
    except OSError as error:
        print(f"verify: cannot read the backup: {error.strerror or error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    if reason:
        print(f"verify: {reason}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
