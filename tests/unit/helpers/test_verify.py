"""Verifying a backup: the envelope's tag and the gzip stream, in one pass, no plaintext."""
from __future__ import annotations

import gzip
import io
import os
import re
import subprocess
import sys
import zlib

import pytest

from helpers import crypto, verify
from helpers.verify import GzipChecker, check_backup

KEY = bytes(range(32))
SQL = b"".join(b"INSERT INTO t VALUES (%d, 'row');\n" % n for n in range(20_000))


def sealed(compressed: bytes, key: bytes = KEY) -> bytes:
    envelope = io.BytesIO()
    crypto.encrypt_stream(key, io.BytesIO(compressed), envelope)
    return envelope.getvalue()


def verdict(envelope: bytes, key: bytes = KEY) -> str | None:
    return check_backup(key, io.BytesIO(envelope))


class CountingReader(io.BytesIO):
    """A file that counts the bytes handed out by read()."""

    bytes_read = 0

    def read(self, size=-1):
        data = super().read(size)
        self.bytes_read += len(data)
        return data


def test_intact_backup_has_no_fault():
    assert verdict(sealed(gzip.compress(SQL))) is None


def test_several_gzip_members_are_one_intact_stream():
    assert verdict(sealed(gzip.compress(SQL[:1000]) + gzip.compress(SQL[1000:]))) is None


def test_inflated_bytes_reach_the_sink_in_order():
    received = []
    check_backup(KEY, io.BytesIO(sealed(gzip.compress(SQL) + gzip.compress(b"end\n"))),
                 sink=received.append)
    assert b"".join(received) == SQL + b"end\n"


def test_each_byte_of_the_file_is_read_once():
    envelope = sealed(gzip.compress(os.urandom(3_000_000)))
    source = CountingReader(envelope)
    assert check_backup(KEY, source) is None
    assert source.bytes_read == len(envelope)


def test_output_of_a_chunk_that_compresses_extremely_well_comes_in_bounded_pieces():
    sizes = []
    checker = GzipChecker(sink=lambda out: sizes.append(len(out)))
    checker.feed(gzip.compress(bytes(50_000_000)))
    assert checker.finish() is None
    assert sum(sizes) == 50_000_000 and max(sizes) <= 1024 * 1024


@pytest.mark.parametrize("piece", [1, 7, 4096])
def test_gzip_fed_in_small_pieces_is_intact(piece):
    compressed = gzip.compress(SQL) + gzip.compress(b"x")
    checker = GzipChecker()
    for start in range(0, len(compressed), piece):
        checker.feed(compressed[start:start + piece])
    assert checker.finish() is None


def damaged_deflate(compressed: bytes) -> bytes:
    middle = len(compressed) // 2
    return compressed[:middle] + bytes([compressed[middle] ^ 0xFF]) + compressed[middle + 1:]


@pytest.mark.parametrize("compressed, reason", [
    (gzip.compress(SQL)[:-100], "gzip stream truncated"),
    (gzip.compress(SQL)[:-4], "gzip stream truncated"),
    (gzip.compress(SQL) + b"garbage after the end", "trailing data after the gzip stream"),
    (gzip.compress(SQL) + bytes(512), "trailing data after the gzip stream"),
    (gzip.compress(SQL) + b"\x1f", "trailing data after the gzip stream"),
    (b"", "gzip stream empty"),
    # zlib's words, or ISA-L's where it loads (helpers.verify inflates with either)
    (b"plain SQL, never compressed\n",
     "gzip stream damaged: (incorrect header check|Invalid gzip/zlib wrapper found)"),
])
def test_damaged_gzip_inside_an_authentic_envelope_names_the_fault(compressed, reason):
    assert re.fullmatch(reason, verdict(sealed(compressed)))


def test_damaged_deflate_data_is_reported_with_zlibs_reason():
    reason = verdict(sealed(damaged_deflate(gzip.compress(SQL))))
    assert reason.startswith("gzip stream damaged: ")
    assert "Error" not in reason  # zlib's reason only, not its error number


def test_wrong_crc_is_damage():
    compressed = bytearray(gzip.compress(SQL))
    compressed[-8] ^= 1  # the CRC-32 in the trailer
    assert verdict(sealed(bytes(compressed))) in (  # zlib's words, or ISA-L's
        "gzip stream damaged: incorrect data check",
        "gzip stream damaged: Incorrect checksum found")


@pytest.mark.parametrize("envelope, message", [
    (b"", "the file is empty: not a backup"),
    (b"\x02" + bytes(40), "unknown envelope version 2"),
    (b"\x01" + bytes(5), "the file is truncated: it ends inside the header"),
])
def test_malformed_envelope_reports_the_envelope_message(envelope, message):
    assert verdict(envelope).startswith(message)


def test_tampered_file_reports_authentication_not_the_gzip_damage_it_causes():
    envelope = bytearray(sealed(gzip.compress(SQL)))
    envelope[len(envelope) // 2] ^= 0xFF
    assert verdict(bytes(envelope)).startswith("authentication failed")


def test_wrong_key_fails_authentication():
    assert verdict(sealed(gzip.compress(SQL)), key=bytes(32)).startswith("authentication failed")


def test_filter_exits_0_for_intact_and_1_with_the_reason_for_damaged(tmp_path):
    environ = {**os.environ, "HOST_MASTER_KEY": KEY.hex()}
    environ.pop("HOST_MASTER_KEY_FILE", None)
    command = [sys.executable, "-m", "helpers.verify"]
    intact = subprocess.run(command, input=sealed(gzip.compress(SQL)), env=environ,
                            capture_output=True)
    damaged = subprocess.run(command, input=sealed(gzip.compress(SQL)[:-9]), env=environ,
                             capture_output=True)
    assert (intact.returncode, intact.stdout, intact.stderr) == (0, b"", b"")
    assert (damaged.returncode, damaged.stderr) == (1, b"verify: gzip stream truncated\n")


def test_where_isal_does_not_load_zlib_inflates_with_the_same_verdicts(monkeypatch):
    monkeypatch.setattr(verify, "INFLATE", zlib)
    monkeypatch.setattr(verify, "INFLATE_ERRORS", (zlib.error,))
    compressed = bytearray(gzip.compress(SQL))
    compressed[-8] ^= 1
    assert verdict(sealed(bytes(compressed))) == "gzip stream damaged: incorrect data check"
    assert verdict(sealed(gzip.compress(SQL))) is None


def test_key_opens_a_backup_sealed_with_it_and_no_other(tmp_path):
    backup = tmp_path / "backup.sql.gz.enc"
    backup.write_bytes(sealed(gzip.compress(b"select 1;\n")))

    assert verify.key_opens(KEY, backup)
    assert not verify.key_opens(bytes(32), backup)
    assert not verify.key_opens(KEY, tmp_path / "missing.sql.gz.enc")
