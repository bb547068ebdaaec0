"""The version-1 envelope: known answers, round trips, and every way input can be bad."""
from __future__ import annotations

import base64
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import crypto
from tests.support import REPO

# NIST GCM test vectors (McGrew & Viega, test cases 13 to 15): AES-256, 96-bit IV, no AAD.
NIST_CASES = [
    ("00" * 32, "00" * 12, "", "", "530f8afbc74536b9a963b4f1c4cb738b"),
    ("00" * 32, "00" * 12, "00" * 16, "cea7403d4d606b6e074ec5d3baf39d18",
     "d0d1c8a799996bf0265b98b5d48ab919"),
    ("feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308",
     "cafebabefacedbaddecaf888",
     "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
     "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255",
     "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa"
     "8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662898015ad",
     "b094dac5d93471bdec1a502270e3cc6c"),
]

KEY = bytes(range(32))


def encrypt(plaintext: bytes, key: bytes = KEY, iv: bytes | None = None) -> bytes:
    out = io.BytesIO()
    crypto.encrypt_stream(key, io.BytesIO(plaintext), out, iv=iv)
    return out.getvalue()


def decrypt(envelope: bytes, key: bytes = KEY) -> bytes:
    out = io.BytesIO()
    crypto.decrypt_stream(key, io.BytesIO(envelope), out)
    return out.getvalue()


@pytest.mark.parametrize("key, iv, plaintext, ciphertext, tag", NIST_CASES)
def test_envelope_of_nist_vector_is_version_iv_ciphertext_tag(key, iv, plaintext, ciphertext,
                                                              tag):
    envelope = encrypt(bytes.fromhex(plaintext), bytes.fromhex(key), bytes.fromhex(iv))

    assert envelope.hex() == "01" + iv + ciphertext + tag
    assert decrypt(envelope, bytes.fromhex(key)) == bytes.fromhex(plaintext)


@pytest.mark.parametrize("size", [
    0, 1, crypto.CHUNK_SIZE - 1, crypto.CHUNK_SIZE, crypto.CHUNK_SIZE + 1,
    crypto.CHUNK_SIZE + crypto.TAG_SIZE, 5 * 1024 * 1024 + 3,
])
def test_round_trip_of_size_returns_the_same_bytes(size):
    plaintext = os.urandom(size)

    envelope = encrypt(plaintext)

    assert len(envelope) == size + crypto.HEADER_SIZE + crypto.TAG_SIZE
    assert decrypt(envelope) == plaintext


def test_every_envelope_gets_a_fresh_iv():
    assert encrypt(b"same")[1:13] != encrypt(b"same")[1:13]


# --- bad envelopes ------------------------------------------------------------------


@pytest.mark.parametrize("envelope, message", [
    (b"", "empty"),
    (b"\x01" + bytes(5), "ends inside the header"),
    (b"\x01" + bytes(12 + 15), "ends before the authentication tag"),
    (b"\x02" + bytes(40), "unknown envelope version 2"),
    (b"\x00" + bytes(40), "unknown envelope version 0"),
])
def test_malformed_envelope_is_refused_with_specific_message(envelope, message):
    with pytest.raises(crypto.InvalidEnvelope, match=message):
        decrypt(envelope)


@pytest.mark.parametrize("position", ["iv", "middle", "tag"])
def test_flipped_bit_fails_authentication(position):
    envelope = bytearray(encrypt(os.urandom(1000)))
    index = {"iv": 5, "middle": 500, "tag": len(envelope) - 1}[position]
    envelope[index] ^= 0x04

    with pytest.raises(crypto.InvalidEnvelope, match="authentication failed"):
        decrypt(bytes(envelope))


def test_wrong_key_fails_authentication():
    with pytest.raises(crypto.InvalidEnvelope, match="wrong key"):
        decrypt(encrypt(b"secret"), key=bytes(32))


@pytest.mark.parametrize("damage", ["truncated", "appended"])
def test_truncated_or_extended_file_fails_authentication(damage):
    envelope = encrypt(os.urandom(200_000))
    damaged = envelope[:-1000] if damage == "truncated" else envelope + b"\x00" * 10

    with pytest.raises(crypto.InvalidEnvelope, match="authentication failed"):
        decrypt(damaged)


def test_encrypting_past_the_gcm_limit_fails_loudly(monkeypatch):
    monkeypatch.setattr(crypto, "MAX_PLAINTEXT", 100_000)

    with pytest.raises(crypto.InvalidEnvelope, match="64 GiB"):
        encrypt(os.urandom(100_001))


def test_decrypt_to_regular_file_leaves_it_empty_when_authentication_fails(tmp_path):
    envelope = bytearray(encrypt(os.urandom(300_000)))
    envelope[-1] ^= 1
    target = tmp_path / "out"

    with target.open("wb") as out, pytest.raises(crypto.InvalidEnvelope):
        crypto.decrypt_to(KEY, io.BytesIO(bytes(envelope)), out)

    assert target.read_bytes() == b""


def test_decrypt_to_stream_writes_nothing_when_authentication_fails():
    envelope = bytearray(encrypt(os.urandom(300_000)))
    envelope[-1] ^= 1
    out = io.BytesIO()  # not a regular file: decrypt_to spools first

    with pytest.raises(crypto.InvalidEnvelope):
        crypto.decrypt_to(KEY, io.BytesIO(bytes(envelope)), out)

    assert out.getvalue() == b""


# --- keys ---------------------------------------------------------------------------


def test_key_parses_from_hex_and_from_base64():
    assert crypto.parse_key(KEY.hex()) == KEY
    assert crypto.parse_key(KEY.hex().upper() + "\n") == KEY
    assert crypto.parse_key(base64.b64encode(KEY).decode()) == KEY


@pytest.mark.parametrize("text", [
    "abc", KEY.hex()[:-2], KEY.hex() + "00", "zz" * 32, base64.b64encode(bytes(31)).decode(),
    base64.b64encode(b"\xff" * 48).decode(),  # 64 characters, but 48 bytes
])
def test_malformed_key_is_refused_without_echoing_it(text):
    with pytest.raises(crypto.MasterKeyError) as caught:
        crypto.parse_key(text)

    assert "malformed" in str(caught.value) and text not in str(caught.value)


def test_missing_key_says_how_to_provide_one(tmp_path):
    with pytest.raises(crypto.MasterKeyError, match=r"scripts/setup\.sh .*HOST_MASTER_KEY_FILE"):
        crypto.load_key({"HOME": str(tmp_path)})


def write_default_key(home: Path, key: bytes = KEY, mode: int = 0o600) -> Path:
    """~/.carabase/master.key as scripts/setup.sh makes it."""
    path = home / ".carabase" / "master.key"
    path.parent.mkdir(mode=0o700)
    path.write_text(key.hex() + "\n")
    path.chmod(mode)
    return path


def test_with_neither_variable_set_the_key_in_home_carabase_is_used(tmp_path):
    path = write_default_key(tmp_path)

    assert crypto.load_key({"HOME": str(tmp_path)}) == KEY
    assert crypto.key_file({"HOME": str(tmp_path)}) == str(path)


def test_default_key_file_readable_by_others_is_refused_naming_the_file_not_a_variable(
        tmp_path):
    path = write_default_key(tmp_path, mode=0o644)

    with pytest.raises(crypto.MasterKeyError) as caught:
        crypto.load_key({"HOME": str(tmp_path)})

    assert str(caught.value) == (f"the key file {path} is readable by others (mode 0644):"
                                 f" run chmod 600 {path}")


def test_key_variables_win_over_the_default_key_file(tmp_path):
    write_default_key(tmp_path, key=bytes(32))  # another key, which must not be read
    other = tmp_path / "other.key"
    other.write_text(KEY.hex())
    other.chmod(0o600)

    assert crypto.load_key({"HOME": str(tmp_path), "HOST_MASTER_KEY": KEY.hex()}) == KEY
    assert crypto.load_key({"HOME": str(tmp_path), "HOST_MASTER_KEY_FILE": str(other)}) == KEY
    assert crypto.key_file({"HOME": str(tmp_path), "HOST_MASTER_KEY": KEY.hex()}) is None


def test_key_file_is_read_when_private(tmp_path):
    path = tmp_path / "key"
    path.write_text(KEY.hex() + "\n")
    path.chmod(0o600)

    assert crypto.load_key({"HOST_MASTER_KEY_FILE": str(path)}) == KEY


def test_key_file_under_an_unexpanded_tilde_is_read_from_home(tmp_path, monkeypatch):
    # HOST_MASTER_KEY_FILE=~/.carabase/master.key, quoted as in a .env file: a literal ~.
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".carabase").mkdir()
    path = tmp_path / ".carabase" / "master.key"
    path.write_text(KEY.hex() + "\n")
    path.chmod(0o600)

    assert crypto.load_key({"HOST_MASTER_KEY_FILE": "~/.carabase/master.key"}) == KEY


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_key_file_readable_by_others_is_refused(tmp_path, mode):
    path = tmp_path / "key"
    path.write_text(KEY.hex())
    path.chmod(mode)

    with pytest.raises(crypto.MasterKeyError, match="chmod 600"):
        crypto.load_key({"HOST_MASTER_KEY_FILE": str(path)})


def test_key_file_that_is_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path):
    path = tmp_path / "key"
    os.mkfifo(path, 0o600)

    with pytest.raises(crypto.MasterKeyError, match="is not a regular file"):
        crypto.load_key({"HOST_MASTER_KEY_FILE": str(path)})


def test_missing_key_file_is_refused_with_its_path(tmp_path):
    with pytest.raises(crypto.MasterKeyError, match="cannot read"):
        crypto.load_key({"HOST_MASTER_KEY_FILE": str(tmp_path / "nope")})


def test_both_key_variables_set_is_refused(tmp_path):
    with pytest.raises(crypto.MasterKeyError, match="unset one"):
        crypto.load_key({"HOST_MASTER_KEY": KEY.hex(), "HOST_MASTER_KEY_FILE": "x"})


# --- the filter as a command ----------------------------------------------------------


def run_filter(action: str, data: bytes, **environ: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HOST_MASTER_KEY")}
    return subprocess.run([sys.executable, "-m", "helpers.crypto", action], input=data,
                          capture_output=True, env={**clean, **environ}, cwd=REPO, timeout=60)


def test_filter_round_trip_through_pipes():
    data = os.urandom(200_000)
    encrypted = run_filter("encrypt", data, HOST_MASTER_KEY=KEY.hex())
    decrypted = run_filter("decrypt", encrypted.stdout, HOST_MASTER_KEY=KEY.hex())

    assert encrypted.returncode == decrypted.returncode == 0
    assert decrypted.stdout == data


@pytest.mark.parametrize("action, data, environ, message", [
    ("encrypt", b"x", {}, b"no master key"),
    ("encrypt", b"x", {"HOST_MASTER_KEY": "nothex"}, b"malformed"),
    ("decrypt", b"", {"HOST_MASTER_KEY": KEY.hex()}, b"empty"),
    ("decrypt", b"\x07" + bytes(40), {"HOST_MASTER_KEY": KEY.hex()}, b"unknown envelope"),
    ("decrypt", b"\x01" + bytes(40), {"HOST_MASTER_KEY": KEY.hex()}, b"authentication failed"),
])
def test_filter_failure_is_one_line_nonzero_and_no_output(action, data, environ, message,
                                                          tmp_path):
    result = run_filter(action, data, HOME=str(tmp_path), **environ)  # no key in HOME

    assert result.returncode == 1
    assert result.stdout == b""
    assert message in result.stderr and len(result.stderr.splitlines()) == 1
    assert b"Traceback" not in result.stderr and b"nothex" not in result.stderr


def test_filter_without_action_prints_usage():
    result = run_filter("sideways", b"")

    assert result.returncode == 2 and b"usage" in result.stderr


def test_failed_decrypt_appended_to_a_file_keeps_what_the_file_held(tmp_path):
    envelope = bytearray(encrypt(os.urandom(300_000)))
    envelope[-1] ^= 1
    existing = tmp_path / "notes.txt"
    existing.write_bytes(b"precious\n")

    with existing.open("ab") as out, pytest.raises(crypto.InvalidEnvelope):
        crypto.decrypt_to(KEY, io.BytesIO(bytes(envelope)), out)

    assert existing.read_bytes() == b"precious\n"


def test_decrypt_appended_to_a_file_adds_the_plaintext_after_it(tmp_path):
    existing = tmp_path / "dump.sql.gz"
    existing.write_bytes(b"head")

    with existing.open("ab") as out:
        crypto.decrypt_to(KEY, io.BytesIO(encrypt(b"tail")), out)

    assert existing.read_bytes() == b"headtail"
