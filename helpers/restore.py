"""The parts of a restore that are not commands: the private tempfile the backup is
decrypted into, the decryption and the gzip check (one pass), and the confirmation
question (the restore lock is helpers.server_lock)."""
from __future__ import annotations

import errno
import fcntl
import os
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from helpers import crypto, retention, verify
from helpers.clean_section import starts_with_clean_section
from helpers.config import Database
from helpers.errors import UserError

HEAD_SIZE = 64 * 1024  # enough of the SQL to see how the dump starts


def temp_directory() -> str:
    """TMPDIR when set, which must then be a writable directory: Python's tempfile would
    quietly fall back to /tmp, putting a decrypted backup where nobody expects it."""
    configured = os.environ.get("TMPDIR")
    if not configured:
        return tempfile.gettempdir()
    if not os.path.isdir(configured):
        why = "does not exist" if not os.path.exists(configured) else "is not a directory"
        raise UserError(f"TMPDIR={configured} {why}: point TMPDIR at a writable directory"
                        " or unset it")
    if not os.access(configured, os.W_OK | os.X_OK):
        raise UserError(f"TMPDIR={configured} is not writable: point TMPDIR at a writable"
                        " directory or unset it")
    return configured


PLAINTEXT_PREFIX, PLAINTEXT_SUFFIX = "carabase-restore-", ".sql.gz"


@dataclass
class Plaintext:
    """The decrypted backup: a 0600 file open for reading and writing, which on Linux has
    no name at all (unlinked the moment it was created), so that nothing of it outlives
    this process, even killed by SIGKILL: the kernel frees it with the last descriptor.

    The pipeline's stages cannot inherit the descriptor (invoke starts them with
    close_fds), so they open it again as /proc/<our pid>/fd/<fd>: that works only while
    this process lives and holds it. Where there is no /proc (macOS), the file keeps its
    name until the restore ends, held under an flock; a leftover of a killed restore is
    removed by the next one (remove_stale_plaintexts)."""

    file: BinaryIO
    directory: str
    name: str | None = None  # still linked: no /proc here

    @property
    def path(self) -> str:
        """Where a child process opens it."""
        return self.name or f"/proc/{os.getpid()}/fd/{self.file.fileno()}"

    def size(self) -> int:
        return os.fstat(self.file.fileno()).st_size


def remove_stale_plaintexts(directory: str) -> None:
    """Remove what a killed restore of an older version (or, without /proc, any killed
    restore) left in `directory`: regular files with our name pattern, owned by this
    user, that no live restore holds (its flock)."""
    try:
        entries = os.listdir(directory)
    except OSError:
        return
    for entry in entries:
        if not (entry.startswith(PLAINTEXT_PREFIX) and entry.endswith(PLAINTEXT_SUFFIX)):
            continue
        path = os.path.join(directory, entry)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            continue
        try:
            info = os.fstat(fd)
            if stat.S_ISREG(info.st_mode) and info.st_uid == os.geteuid():
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held: a live restore's
                os.unlink(path)
        except OSError:
            pass
        finally:
            os.close(fd)


def children_reopen_descriptors() -> bool:
    """Whether a child process can open our descriptors as /proc/<pid>/fd/N (Linux)."""
    return os.path.isdir(f"/proc/{os.getpid()}/fd")


@contextmanager
def private_tempfile():
    """The decrypted backup's Plaintext: 0600 from the moment it exists, nameless on
    Linux, closed (and so gone) whatever happens."""
    directory = temp_directory()
    remove_stale_plaintexts(directory)
    try:
        fd, name = tempfile.mkstemp(prefix=PLAINTEXT_PREFIX, suffix=PLAINTEXT_SUFFIX,
                                    dir=directory)
    except OSError as error:
        raise UserError(f"cannot create a temporary file in {directory} (set TMPDIR to use"
                        f" another directory): {error.strerror or error}") from None
    linked: str | None = name
    try:
        if children_reopen_descriptors():
            os.unlink(name)
            linked = None
        else:
            fcntl.flock(fd, fcntl.LOCK_EX)
        with os.fdopen(fd, "w+b") as file:
            yield Plaintext(file, directory, linked)
    finally:
        if linked:
            Path(linked).unlink(missing_ok=True)  # something else may have removed it


@contextmanager
def private_tempdir():
    """A 0700 temporary directory (in TMPDIR, like the tempfile), removed afterwards:
    for the FIFO a held transaction is fed through."""
    directory = tempfile.mkdtemp(prefix="carabase-restore-", dir=temp_directory())
    try:
        yield Path(directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def open_fifo_writer(path: Path, finished):
    """Open the FIFO `path` for writing once its reader opened it; None if `finished()`
    says the reader ended first (psql could not connect, say). Polls without blocking:
    a plain open would wait forever for a reader that is gone."""
    while True:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as error:
            if error.errno != errno.ENXIO:  # ENXIO: nobody reads it yet
                raise
            if finished():
                return None
            time.sleep(0.01)
            continue
        os.set_blocking(fd, True)
        return os.fdopen(fd, "w")


@dataclass
class DumpFacts:
    """What the one pass over a backup learnt about the SQL inside."""

    sql_bytes: int = 0
    clean_section: bool = False  # an older --clean dump: restore skips its DROP block
    leave_out: tuple[str, ...] = ()  # the role filter's arguments (dumproles.filter_arguments)


class DamagedBackup(UserError):
    """The backup does not authenticate, or its gzip stream is damaged: `reason` says
    which, as `backup.verify` would."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


def decrypt_and_check(key: bytes, source: Path, plaintext: Plaintext, action: str,
                      sink: Callable[[bytes], None] | None = None) -> DumpFacts:
    """Decrypt `source` into `plaintext` (private_tempfile) and check its gzip stream in
    the same pass (helpers.verify's checker, inflating in memory); the tag is checked
    first, then the stream. `sink` sees the SQL as it is inflated (the drill counts COPY rows). On
    failure `plaintext` is left empty."""
    facts = DumpFacts()
    head = bytearray()

    def saw(sql: bytes) -> None:
        facts.sql_bytes += len(sql)
        if len(head) < HEAD_SIZE:
            head.extend(sql[:HEAD_SIZE - len(head)])
        if sink is not None:
            sink(sql)

    try:
        src = open(source, "rb")  # noqa: SIM115 -- closed by the `with` below
    except OSError as error:
        raise UserError(f"{action}: cannot read {source}: {error.strerror}") from None
    try:
        dst = plaintext.file
        with src:
            checker = verify.GzipChecker(saw)
            try:
                for chunk in crypto.decrypted_chunks(key, src):
                    dst.write(chunk)
                    checker.feed(chunk)
            except BaseException:
                dst.flush()
                dst.truncate(0)
                raise
            dst.flush()  # the pipeline's stages read it through another descriptor
            fault = checker.finish()
            if fault is not None:
                dst.truncate(0)
                raise DamagedBackup(f"{action} refused: {source.name} decrypts but its gzip"
                                    f" stream is damaged ({fault})", fault)
    except crypto.InvalidEnvelope as error:
        raise DamagedBackup(f"{action} refused: {source.name}: {error}", str(error)) from None
    except OSError as error:
        raise UserError(f"{action}: cannot decrypt {source} into {plaintext.directory}"
                        f" (set TMPDIR to use another directory): {error.strerror}") from None
    facts.clean_section = starts_with_clean_section(bytes(head))
    return facts


def sessions_phrase(count: int) -> str:
    if count == 0:
        return "No session is connected to it."
    noun = "session is" if count == 1 else "sessions are"
    return f"{count} {noun} connected to it and will be closed."


def ask(question: str, action: str, yes: bool) -> None:
    """Print `question`, then insist on a typed 'yes' (or --yes)."""
    if yes:
        return
    if not sys.stdin.isatty():
        raise UserError(f"{action} refused: no terminal to confirm on; pass --yes to go"
                        " ahead without asking")
    print(question)
    try:
        answer = input("Type 'yes' to go ahead: ")
    except EOFError:  # Ctrl-D
        answer = ""
    if answer.strip().lower() != "yes":
        raise UserError(f"{action}: cancelled, nothing was changed")


def confirm_restore(source: Path, env: str, target: Database, yes: bool, action: str,
                    sessions: int = 0, in_place: bool = False) -> None:
    stamp = retention.parse_backup_name(source.name)
    taken = f" taken {stamp:%Y-%m-%d %H:%M:%S}Z" if stamp else ""
    if in_place:
        sessions_line = (f"{sessions} other session(s) are connected to it: the restore"
                         " waits for their locks, and they see the change at once.")
    else:
        sessions_line = sessions_phrase(sessions)
    ask(f"This replaces the contents of {env}'s database {target.uri}\n"
        f"with the backup {source}{taken}. {sessions_line}", action, yes)
