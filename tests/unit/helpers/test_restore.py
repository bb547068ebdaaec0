"""The restore's private tempfile, its one-pass decryption and gzip check, its lock and
its confirmation question."""
from __future__ import annotations

import gzip
import io
import os
import stat
import subprocess
import tempfile

import pytest

from helpers import crypto, restore
from helpers.config import parse_database_url
from helpers.errors import UserError
from helpers.restore import (confirm_restore, decrypt_and_check, private_tempfile,
                             remove_stale_plaintexts, sessions_phrase)

KEY = bytes(range(32))
HEADER = b"--\n-- PostgreSQL database dump\n--\n\nSET statement_timeout = 0;\n\n"


def sealed(tmp_path, plaintext: bytes, name: str = "2026-04-09T031700.sql.gz.enc"):
    envelope = io.BytesIO()
    crypto.encrypt_stream(KEY, io.BytesIO(plaintext), envelope)
    path = tmp_path / name
    path.write_bytes(envelope.getvalue())
    return path


def test_private_tempfile_is_0600_nameless_and_readable_by_a_child_process(tmp_path,
                                                                          monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # as TMPDIR would
    monkeypatch.delenv("TMPDIR", raising=False)
    with pytest.raises(RuntimeError), private_tempfile() as plaintext:
        assert stat.S_IMODE(os.fstat(plaintext.file.fileno()).st_mode) == 0o600
        assert plaintext.directory == str(tmp_path)
        assert list(tmp_path.iterdir()) == []  # no name to leave behind, even after SIGKILL
        plaintext.file.write(b"gzip bytes")
        plaintext.file.flush()
        child = subprocess.run(["cat", plaintext.path], capture_output=True, close_fds=True)
        assert child.stdout == b"gzip bytes"
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_private_tempfile_without_proc_keeps_a_locked_name_until_done(tmp_path,
                                                                      monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(restore, "children_reopen_descriptors", lambda: False)  # macOS
    with private_tempfile() as plaintext:
        [named] = tmp_path.iterdir()
        assert plaintext.path == str(named)
        remove_stale_plaintexts(str(tmp_path))  # another restore starting: held, kept
        assert named.exists()
    assert list(tmp_path.iterdir()) == []


def test_a_leftover_plaintext_of_ours_is_removed_and_anything_else_kept(tmp_path):
    leftover = tmp_path / "carabase-restore-abc123.sql.gz"
    leftover.write_bytes(b"plaintext of a killed restore")
    other = tmp_path / "carabase-restore-notes.txt"
    other.write_text("not ours")
    target = tmp_path / "elsewhere.sql.gz"
    target.write_text("not ours either")
    link = tmp_path / "carabase-restore-link.sql.gz"
    link.symlink_to(target)
    foreign = tmp_path / "carabase-restore-foreign.sql.gz"
    foreign.write_text("another user's")
    if os.geteuid() == 0:
        os.chown(foreign, 65534, 65534)

    remove_stale_plaintexts(str(tmp_path))

    remaining = sorted(path.name for path in tmp_path.iterdir())
    expected = ["carabase-restore-link.sql.gz", "carabase-restore-notes.txt",
                "elsewhere.sql.gz"]
    if os.geteuid() == 0:
        expected.insert(0, "carabase-restore-foreign.sql.gz")
    assert remaining == expected


@pytest.mark.parametrize("how, message", [
    ("missing", "does not exist"),
    ("file", "is not a directory"),
    ("read-only", "is not writable"),
])
def test_unusable_tmpdir_is_refused_naming_it_instead_of_falling_back(tmp_path, monkeypatch,
                                                                      how, message):
    place = tmp_path / "tmp"
    if how == "file":
        place.write_text("")
    elif how == "read-only":
        place.mkdir()
        place.chmod(0o500)
    monkeypatch.setenv("TMPDIR", str(place))
    if how == "read-only" and os.access(place, os.W_OK):
        pytest.skip("root writes into read-only directories")

    with pytest.raises(UserError, match=f"TMPDIR={place} {message}"), private_tempfile():
        pass


@pytest.fixture
def plain(tmp_path, monkeypatch):
    """The restore's Plaintext, in tmp_path as TMPDIR."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    with private_tempfile() as plaintext:
        yield plaintext


def read_back(plaintext) -> bytes:
    """What a pipeline stage reads, opening plaintext.path as tasks.dump_stream does."""
    with open(plaintext.path, "rb") as file:
        return file.read()


def test_decrypt_and_check_writes_the_plaintext_and_sees_a_pure_create_script(tmp_path, plain):
    compressed = gzip.compress(HEADER + b"CREATE TABLE t (id int);\n")
    source = sealed(tmp_path, compressed)

    facts = decrypt_and_check(KEY, source, plain, "restore into dev")

    assert read_back(plain) == compressed
    assert facts.clean_section is False
    assert facts.sql_bytes == len(HEADER) + len(b"CREATE TABLE t (id int);\n")


def test_decrypt_and_check_recognizes_an_older_clean_dump(tmp_path, plain):
    sql = HEADER + b'DROP TABLE IF EXISTS "public"."t";\n--\n-- Name: t\n--\nCREATE TABLE t();\n'
    source = sealed(tmp_path, gzip.compress(sql))

    assert decrypt_and_check(KEY, source, plain, "r").clean_section is True


def test_decrypt_and_check_accepts_several_gzip_members_in_a_row(tmp_path, plain):
    source = sealed(tmp_path, gzip.compress(HEADER) + gzip.compress(b"SELECT 1;\n"))

    facts = decrypt_and_check(KEY, source, plain, "r")

    assert facts.sql_bytes == len(HEADER) + len(b"SELECT 1;\n")


@pytest.mark.parametrize("damage", ["flipped", "truncated", "trailing junk", "not gzip"])
def test_decrypt_and_check_refuses_a_damaged_gzip_stream_and_leaves_no_plaintext(tmp_path,
                                                                                  damage, plain):
    compressed = bytearray(gzip.compress(HEADER + os.urandom(20000).hex().encode()))
    if damage == "flipped":
        compressed[len(compressed) // 2] ^= 0xFF
    elif damage == "truncated":
        del compressed[-50:]
    elif damage == "trailing junk":
        compressed += b"junk"
    else:
        compressed = bytearray(b"plain text, never compressed")
    source = sealed(tmp_path, bytes(compressed))

    with pytest.raises(UserError, match="decrypts but its gzip stream is damaged"):
        decrypt_and_check(KEY, source, plain, "restore into dev")

    assert read_back(plain) == b""


def test_decrypt_and_check_reports_tampering_before_gzip_damage(tmp_path, plain):
    source = sealed(tmp_path, gzip.compress(HEADER))
    data = bytearray(source.read_bytes())
    data[20] ^= 0x01  # corrupts the gzip bytes too, but the tag is what fails first
    source.write_bytes(bytes(data))

    with pytest.raises(UserError, match="authentication failed"):
        decrypt_and_check(KEY, source, plain, "restore into dev")
    assert read_back(plain) == b""


def test_decrypt_and_check_with_the_wrong_key_is_refused_and_leaves_no_plaintext(tmp_path, plain):
    source = sealed(tmp_path, gzip.compress(HEADER), name="b.sql.gz.enc")

    with pytest.raises(UserError, match=r"restore into dev refused: b\.sql\.gz\.enc: "):
        decrypt_and_check(bytes(32), source, plain, "restore into dev")

    assert read_back(plain) == b""


def test_sessions_phrase_says_how_many_will_be_closed():
    assert sessions_phrase(0) == "No session is connected to it."
    assert sessions_phrase(1) == "1 session is connected to it and will be closed."
    assert sessions_phrase(3) == "3 sessions are connected to it and will be closed."


def test_confirmation_without_a_terminal_refuses_instead_of_waiting(monkeypatch, tmp_path):
    monkeypatch.setattr("sys.stdin", io.StringIO("yes\n"))  # not a terminal
    target = parse_database_url("postgresql:///carabase_dev", "V")

    with pytest.raises(UserError, match="no terminal to confirm on; pass --yes"):
        confirm_restore(tmp_path / "b", "dev", target, yes=False, action="restore into dev")
    confirm_restore(tmp_path / "b", "dev", target, yes=True, action="restore into dev")
