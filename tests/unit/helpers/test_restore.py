"""The restore's private tempfile, its decryption step and its confirmation question."""
from __future__ import annotations

import io
import stat
import tempfile

import pytest

from helpers import crypto
from helpers.config import parse_database_url
from helpers.errors import UserError
from helpers.restore import confirm_restore, decrypt_file, private_tempfile

KEY = bytes(range(32))


def test_private_tempfile_is_0600_and_gone_afterwards_even_on_error(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # as TMPDIR would
    with pytest.raises(RuntimeError), private_tempfile() as path:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert path.parent == tmp_path
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_decrypt_file_writes_the_plaintext_of_an_authentic_backup(tmp_path):
    sealed = io.BytesIO()
    crypto.encrypt_stream(KEY, io.BytesIO(b"gzip bytes"), sealed)
    source = tmp_path / "2026-04-09T031700.sql.gz.enc"
    source.write_bytes(sealed.getvalue())

    decrypt_file(KEY, source, tmp_path / "plain", "restore into dev")

    assert (tmp_path / "plain").read_bytes() == b"gzip bytes"


def test_decrypt_file_with_the_wrong_key_is_refused_and_leaves_no_plaintext(tmp_path):
    sealed = io.BytesIO()
    crypto.encrypt_stream(KEY, io.BytesIO(b"gzip bytes"), sealed)
    source = tmp_path / "b.sql.gz.enc"
    source.write_bytes(sealed.getvalue())

    with pytest.raises(UserError, match=r"restore into dev refused: b\.sql\.gz\.enc: "):
        decrypt_file(bytes(32), source, tmp_path / "plain", "restore into dev")

    assert (tmp_path / "plain").read_bytes() == b""


def test_confirmation_without_a_terminal_refuses_instead_of_waiting(monkeypatch, tmp_path):
    monkeypatch.setattr("sys.stdin", io.StringIO("yes\n"))  # not a terminal
    target = parse_database_url("postgresql:///carabase_dev", "V")

    with pytest.raises(UserError, match="no terminal to confirm on; pass --yes"):
        confirm_restore(tmp_path / "b", "dev", target, yes=False, action="restore into dev")
    confirm_restore(tmp_path / "b", "dev", target, yes=True, action="restore into dev")
