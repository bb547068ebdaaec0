"""The version-1 backup envelope: AES-256-GCM over a gzip stream, streamed in chunks.

    offset 0      1 byte    version = 0x01
    offset 1      12 bytes  IV (random for every file)
    offset 13     n bytes   AES-256-GCM ciphertext (no AAD)
    offset 13+n   16 bytes  GCM authentication tag

Byte-compatible with the original Node.js scripts (`crypto.createCipheriv('aes-256-gcm')`).

As a filter:

    python -m helpers.crypto encrypt < dump.sql.gz > dump.sql.gz.enc
    python -m helpers.crypto decrypt < dump.sql.gz.enc > dump.sql.gz

The key comes from HOST_MASTER_KEY (64 hex characters or base64 of 32 bytes) or from
the file named by HOST_MASTER_KEY_FILE (which must not be group- or world-readable);
with neither set, from ~/.carabase/master.key when it exists (what scripts/setup.sh makes).

Decryption never lets plaintext reach a consumer before the tag is checked: into a
regular file it streams and empties the file on failure; into a pipe or terminal it
spools to an unlinked temporary file first and copies only after the tag matched.
"""
from __future__ import annotations

import base64
import binascii
import fcntl
import os
import signal
import stat
import sys
import tempfile
from collections.abc import Iterator, Mapping
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

VERSION = 1
IV_SIZE = 12
TAG_SIZE = 16
KEY_SIZE = 32
HEADER_SIZE = 1 + IV_SIZE
# 64 KiB moves through a pipe fastest (measured: 1 MiB chunks spend more time in the kernel).
CHUNK_SIZE = 64 * 1024
# NIST SP 800-38D: at most 2^39 - 256 bits of plaintext under one (key, IV).
MAX_PLAINTEXT = (2**39 - 256) // 8


class InvalidEnvelope(Exception):
    """The input is not a version-1 envelope that this key authenticates."""


class MasterKeyError(Exception):
    """The master key is missing, malformed or stored unsafely (message never holds it)."""


def parse_key(text: str) -> bytes:
    """32 key bytes from 64 hex characters or standard base64; never echoes the value."""
    text = text.strip()
    if len(text) == 2 * KEY_SIZE:
        try:
            return bytes.fromhex(text)
        except ValueError:
            pass  # 64 characters of base64 would be 48 bytes: rejected below
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != KEY_SIZE:
        raise MasterKeyError(
            "the master key is malformed: expected 64 hex characters or base64 of 32 bytes"
            " (make one with: openssl rand -hex 32)"
        )
    return key


def key_file_path(configured: str) -> str:
    """HOST_MASTER_KEY_FILE as a path: a leading ~ is the home directory even when a .env
    file or a quoted assignment kept the shell from expanding it."""
    return os.path.expanduser(configured)


DEFAULT_KEY_FILE = os.path.join(".carabase", "master.key")  # under the home directory


def key_file(environ: Mapping[str, str] = os.environ) -> str | None:
    """The file the key is read from: HOST_MASTER_KEY_FILE; with neither key variable
    set, ~/.carabase/master.key when it exists; else None (HOST_MASTER_KEY, or no key)."""
    configured = environ.get("HOST_MASTER_KEY_FILE", "")
    if configured:
        return key_file_path(configured)
    if environ.get("HOST_MASTER_KEY", ""):
        return None
    default = os.path.join(environ.get("HOME") or os.path.expanduser("~"), DEFAULT_KEY_FILE)
    # lexists: a dangling link or a directory there is refused below, not passed over.
    return default if os.path.lexists(default) else None


def load_key(environ: Mapping[str, str] = os.environ) -> bytes:
    """The master key from HOST_MASTER_KEY, HOST_MASTER_KEY_FILE or the default file."""
    inline = environ.get("HOST_MASTER_KEY", "")
    if inline and environ.get("HOST_MASTER_KEY_FILE", ""):
        raise MasterKeyError(
            "both HOST_MASTER_KEY and HOST_MASTER_KEY_FILE are set: unset one of them"
        )
    if inline:
        return parse_key(inline)
    path = key_file(environ)
    if path is None:
        raise MasterKeyError(
            "no master key: run scripts/setup.sh to make ~/.carabase/master.key, or set"
            " HOST_MASTER_KEY_FILE to a 0600 file holding the key (or HOST_MASTER_KEY)"
        )
    # Messages name the variable only when the user set it.
    label = "HOST_MASTER_KEY_FILE" if environ.get("HOST_MASTER_KEY_FILE") else "the key file"
    raw = read_private_file(path, label, MasterKeyError)
    try:
        return parse_key(raw.decode("ascii"))
    except UnicodeDecodeError:
        raise MasterKeyError(f"{label} {path} does not hold a text key") from None


def read_private_file(path: str, variable: str, error: type[Exception]) -> bytes:
    """The first 4 KiB of the secret file `variable` names, refused (as `error`, never
    quoting the content) unless it is a regular file that only its owner can read."""
    try:
        # O_NONBLOCK: a FIFO under that name must not hang us before fstat refuses it.
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK), "rb") as secret:
            mode = os.fstat(secret.fileno()).st_mode
            if not stat.S_ISREG(mode):
                raise error(f"{variable} {path} is not a regular file")
            if mode & 0o077:
                raise error(f"{variable} {path} is readable by others"
                            f" (mode {stat.S_IMODE(mode):04o}): run chmod 600 {path}")
            return secret.read(4096)
    except OSError as failure:
        raise error(f"cannot read {variable} {path}: {failure.strerror}") from None


def encrypt_stream(key: bytes, src: BinaryIO, dst: BinaryIO, iv: bytes | None = None) -> int:
    """Write the envelope of everything read from `src` to `dst`; return the plaintext size.

    `iv` is for tests with fixed inputs; in use it is always fresh and random.
    """
    iv = os.urandom(IV_SIZE) if iv is None else iv
    if len(iv) != IV_SIZE:
        raise ValueError("the IV must be 12 bytes")
    encryptor = Cipher(algorithms.AES(key), modes.GCM(iv)).encryptor()
    dst.write(bytes([VERSION]) + iv)
    total = 0
    while chunk := src.read(CHUNK_SIZE):
        total += len(chunk)
        if total > MAX_PLAINTEXT:
            raise InvalidEnvelope(
                "input exceeds what AES-GCM may encrypt under one IV (64 GiB):"
                " refusing to write a weak backup"
            )
        dst.write(encryptor.update(chunk))
    dst.write(encryptor.finalize() + encryptor.tag)
    return total


def decrypt_stream(key: bytes, src: BinaryIO, dst: BinaryIO) -> int:
    """Write the plaintext of the envelope read from `src` to `dst`; return its size.

    Raises InvalidEnvelope after the last write if the tag does not match: `dst` then
    holds unauthenticated bytes, which the caller must discard (see `decrypt_to`).
    """
    total = 0
    for plaintext in decrypted_chunks(key, src):
        total += len(plaintext)
        dst.write(plaintext)
    return total


def decrypted_chunks(key: bytes, src: BinaryIO) -> Iterator[bytes]:
    """The plaintext of the envelope read from `src`, chunk by chunk, in one pass.

    The chunks are NOT authenticated until the generator has finished: it raises
    InvalidEnvelope at the end when the tag does not match (or earlier, for a malformed
    header). A caller may look at them (helpers.verify inflates them to check the gzip
    stream) but must not act on them before the loop is over.
    """
    header = _read_exactly(src, HEADER_SIZE)
    if not header:
        raise InvalidEnvelope("the file is empty: not a backup")
    if header[0] != VERSION:
        raise InvalidEnvelope(
            f"unknown envelope version {header[0]} (this program reads version {VERSION})"
        )
    if len(header) < HEADER_SIZE:
        raise InvalidEnvelope("the file is truncated: it ends inside the header")
    decryptor = Cipher(algorithms.AES(key), modes.GCM(header[1:])).decryptor()
    # The tag is the last 16 bytes, so always hold the latest 16 back.
    held = _read_exactly(src, TAG_SIZE)
    if len(held) < TAG_SIZE:
        raise InvalidEnvelope("the file is truncated: it ends before the authentication tag")
    while chunk := src.read(CHUNK_SIZE):
        data = held + chunk
        held = data[-TAG_SIZE:]
        yield decryptor.update(data[:-TAG_SIZE])
    try:
        last = decryptor.finalize_with_tag(held)
    except InvalidTag:
        raise InvalidEnvelope(
            "authentication failed: wrong key, or the file is damaged or truncated"
        ) from None
    if last:
        yield last


def decrypt_to(key: bytes, src: BinaryIO, dst: BinaryIO) -> int:
    """Decrypt so that `dst` only ever keeps authenticated plaintext, or nothing.

    A regular file (not opened for appending) is written directly and cut back on
    failure; anything else gets the plaintext only once the tag has been checked.
    """
    if _is_regular_file(dst) and not _is_appending(dst):
        start = dst.tell()
        try:
            return decrypt_stream(key, src, dst)
        except BaseException:
            dst.flush()
            dst.truncate(start)
            raise
    with tempfile.TemporaryFile(prefix="carabase-decrypt-") as spool:  # 0600, unlinked
        total = decrypt_stream(key, src, spool)
        spool.seek(0)
        while chunk := spool.read(CHUNK_SIZE):
            dst.write(chunk)
        return total


def _read_exactly(src: BinaryIO, size: int) -> bytes:
    data = b""
    while len(data) < size and (chunk := src.read(size - len(data))):
        data += chunk
    return data


def _is_appending(stream: BinaryIO) -> bool:
    # `>>`: every write lands at the end, and cutting back to tell() would empty the file.
    return bool(fcntl.fcntl(stream.fileno(), fcntl.F_GETFL) & os.O_APPEND)


def _is_regular_file(stream: BinaryIO) -> bool:
    try:
        return stat.S_ISREG(os.fstat(stream.fileno()).st_mode) and stream.seekable()
    except (OSError, ValueError):
        return False


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv not in (["encrypt"], ["decrypt"]):
        print("usage: python -m helpers.crypto encrypt|decrypt  < input > output",
              file=sys.stderr)
        return 2
    action = argv[0]
    stdout = sys.stdout.buffer
    # SIGTERM and SIGHUP unwind like Ctrl-C, so that decrypt_to can take back
    # unauthenticated output on the way out.
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)
    try:
        key = load_key()
        if action == "encrypt":
            encrypt_stream(key, sys.stdin.buffer, stdout)
        else:
            decrypt_to(key, sys.stdin.buffer, stdout)
        stdout.flush()
    except (MasterKeyError, InvalidEnvelope) as error:
        print(f"{action}: {error}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader went away (it failed, or was interrupted): its error is the real one.
        _silence_stdout()
        print(f"{action}: output closed early by the next stage of the pipeline",
              file=sys.stderr)
        return 1
    except OSError as error:
        _silence_stdout()
        print(f"{action}: {error.strerror or error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{action}: interrupted", file=sys.stderr)
        return 130
    return 0


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _silence_stdout() -> None:
    # Python flushes stdout again at exit; point it at /dev/null so that second flush
    # cannot raise a traceback after we have already said what went wrong.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


if __name__ == "__main__":
    sys.exit(main())
