"""The restore's private tempfile, its one-pass decryption and gzip check, its lock and
its confirmation question."""
from __future__ import annotations

import gzip
import io
import os
import stat
import tempfile

import pytest

from helpers import crypto
from helpers.config import parse_database_url
from helpers.errors import UserError
from helpers.restore import (confirm_restore, decrypt_and_check, private_tempfile,
                             restore_lock, restore_lock_path, sessions_phrase)

KEY = bytes(range(32))
HEADER = b"--\n-- PostgreSQL database dump\n--\n\nSET statement_timeout = 0;\n\n"


def sealed(tmp_path, plaintext: bytes, name: str = "2026-04-09T031700.sql.gz.enc"):
    envelope = io.BytesIO()
    crypto.encrypt_stream(KEY, io.BytesIO(plaintext), envelope)
    path = tmp_path / name
    path.write_bytes(envelope.getvalue())
    return path


def test_private_tempfile_is_0600_and_gone_afterwards_even_on_error(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # as TMPDIR would
    monkeypatch.delenv("TMPDIR", raising=False)
    with pytest.raises(RuntimeError), private_tempfile() as path:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert path.parent == tmp_path
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_private_tempfile_removed_by_someone_else_is_no_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    with private_tempfile() as path:
        path.unlink()
    assert list(tmp_path.iterdir()) == []


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


def test_decrypt_and_check_writes_the_plaintext_and_sees_a_pure_create_script(tmp_path):
    compressed = gzip.compress(HEADER + b"CREATE TABLE t (id int);\n")
    source = sealed(tmp_path, compressed)

    facts = decrypt_and_check(KEY, source, tmp_path / "plain", "restore into dev")

    assert (tmp_path / "plain").read_bytes() == compressed
    assert facts.clean_section is False
    assert facts.sql_bytes == len(HEADER) + len(b"CREATE TABLE t (id int);\n")


def test_decrypt_and_check_recognizes_an_older_clean_dump(tmp_path):
    sql = HEADER + b'DROP TABLE IF EXISTS "public"."t";\n--\n-- Name: t\n--\nCREATE TABLE t();\n'
    source = sealed(tmp_path, gzip.compress(sql))

    assert decrypt_and_check(KEY, source, tmp_path / "plain", "r").clean_section is True


def test_decrypt_and_check_accepts_several_gzip_members_in_a_row(tmp_path):
    source = sealed(tmp_path, gzip.compress(HEADER) + gzip.compress(b"SELECT 1;\n"))

    facts = decrypt_and_check(KEY, source, tmp_path / "plain", "r")

    assert facts.sql_bytes == len(HEADER) + len(b"SELECT 1;\n")


@pytest.mark.parametrize("damage", ["flipped", "truncated", "trailing junk", "not gzip"])
def test_decrypt_and_check_refuses_a_damaged_gzip_stream_and_leaves_no_plaintext(tmp_path,
                                                                                  damage):
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
        decrypt_and_check(KEY, source, tmp_path / "plain", "restore into dev")

    assert (tmp_path / "plain").read_bytes() == b""


def test_decrypt_and_check_reports_tampering_before_gzip_damage(tmp_path):
    source = sealed(tmp_path, gzip.compress(HEADER))
    data = bytearray(source.read_bytes())
    data[20] ^= 0x01  # corrupts the gzip bytes too, but the tag is what fails first
    source.write_bytes(bytes(data))

    with pytest.raises(UserError, match="authentication failed"):
        decrypt_and_check(KEY, source, tmp_path / "plain", "restore into dev")
    assert (tmp_path / "plain").read_bytes() == b""


def test_decrypt_and_check_with_the_wrong_key_is_refused_and_leaves_no_plaintext(tmp_path):
    source = sealed(tmp_path, gzip.compress(HEADER), name="b.sql.gz.enc")

    with pytest.raises(UserError, match=r"restore into dev refused: b\.sql\.gz\.enc: "):
        decrypt_and_check(bytes(32), source, tmp_path / "plain", "restore into dev")

    assert (tmp_path / "plain").read_bytes() == b""


def test_second_restore_of_the_same_env_is_refused_while_one_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("CARABASE_BACKUP_DIR", str(tmp_path))
    with restore_lock("dev", "restore into dev"):
        with pytest.raises(UserError, match="another restore of dev is running"), \
                restore_lock("dev", "undo-restore dev"):
            pass
        with restore_lock("staging", "restore into staging"):  # other envs: no wait
            pass


def test_the_restore_lock_is_private_outside_the_tree_and_one_per_env_and_tree(
        tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    (tmp_path / "run").mkdir()
    monkeypatch.setenv("CARABASE_BACKUP_DIR", str(tmp_path / "tree"))
    dev, staging = restore_lock_path("dev"), restore_lock_path("staging")
    assert dev.parent == tmp_path / "run" / f"carabase-{os.getuid()}"
    assert dev.parent.stat().st_mode & 0o777 == 0o700
    assert dev != staging and not (tmp_path / "tree").exists()
    monkeypatch.setenv("CARABASE_BACKUP_DIR", str(tmp_path / "other-tree"))
    assert restore_lock_path("dev") != dev


def test_a_restore_lock_directory_others_may_use_is_refused_in_one_line(tmp_path,
                                                                        monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    shared = tmp_path / f"carabase-{os.getuid()}"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    with pytest.raises(UserError, match=f"{shared} is not a private directory of this user"), \
            restore_lock("dev", "restore into dev"):
        pass


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
