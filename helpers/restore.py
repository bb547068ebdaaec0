"""The parts of a restore that are not commands: the private tempfile the backup is
decrypted into, the decryption itself, and the confirmation question."""
from __future__ import annotations

import os
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

from helpers import crypto, retention
from helpers.config import Database
from helpers.errors import UserError


@contextmanager
def private_tempfile():
    """A 0600 temporary file from the moment it exists, deleted whatever happens."""
    fd, name = tempfile.mkstemp(prefix="carabase-restore-", suffix=".sql.gz")
    os.close(fd)
    try:
        yield Path(name)
    finally:
        os.unlink(name)


def decrypt_file(key: bytes, source: Path, plaintext: Path, action: str) -> None:
    """Decrypt `source` into `plaintext`; the tag is checked before this returns."""
    try:
        src = open(source, "rb")  # noqa: SIM115 -- closed by the `with` below
    except OSError as error:
        raise UserError(f"{action}: cannot read {source}: {error.strerror}") from None
    try:
        with src, open(plaintext, "wb") as dst:
            crypto.decrypt_to(key, src, dst)
    except crypto.InvalidEnvelope as error:
        raise UserError(f"{action} refused: {source.name}: {error}") from None
    except OSError as error:
        raise UserError(f"{action}: cannot decrypt {source} into {plaintext.parent}"
                        f" (set TMPDIR to use another directory): {error.strerror}") from None


def confirm_restore(source: Path, env: str, target: Database, yes: bool, action: str) -> None:
    if yes:
        return
    if not sys.stdin.isatty():
        raise UserError(f"{action} refused: no terminal to confirm on; pass --yes to restore"
                        " without asking")
    stamp = retention.parse_backup_name(source.name)
    taken = f" taken {stamp:%Y-%m-%d %H:%M:%S}Z" if stamp else ""
    print(f"This replaces the contents of {env}'s database {target.uri}\n"
          f"with the backup {source}{taken}.")
    try:
        answer = input("Type 'yes' to restore: ")
    except EOFError:  # Ctrl-D
        answer = ""
    if answer.strip().lower() != "yes":
        raise UserError(f"{action}: cancelled, nothing was changed")
