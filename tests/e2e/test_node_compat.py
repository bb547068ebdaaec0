"""Backups written by the original Node.js scripts restore, and Node reads ours."""
from __future__ import annotations

import gzip
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.sample_db import create_varied_database, snapshot
from tests.support import run_invoke, take_backup

NODE = shutil.which("node")
SCRIPT = Path(__file__).with_name("node_envelope.js")

pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed on this machine")


def node(action: str, data: bytes, key_hex: str) -> bytes:
    return subprocess.run([NODE, str(SCRIPT), action], input=data, capture_output=True,
                          env={**os.environ, "HOST_MASTER_KEY": key_hex}, check=True,
                          timeout=60).stdout


def test_backup_written_by_node_restores_identically(keyed_environ, pg, database_factory,
                                                     master_key, tmp_path):
    source = database_factory(create_varied_database)
    dump = subprocess.run(
        ["pg_dump", "--format=plain", "--clean", "--if-exists", "--no-owner",
         "--no-privileges", "--dbname", pg.url(source)],
        capture_output=True, check=True, timeout=60).stdout
    node_backup = tmp_path / "2026-04-09T031700.sql.gz.enc"
    node_backup.write_bytes(node("encrypt", gzip.compress(dump, 9), master_key))
    target = database_factory()

    result = run_invoke("backup.restore", "staging", str(node_backup), "--yes", env={
        **keyed_environ, "CARABASE_STAGING_DATABASE_URL": pg.url(target),
        "CARABASE_PROD_DATABASE_URL": pg.url("carabase_prod_absent")})

    assert result.returncode == 0, result.stderr
    assert snapshot(pg, target) == snapshot(pg, source)


def test_backup_written_by_us_decrypts_in_node(keyed_environ, pg, database_factory,
                                               master_key):
    source = database_factory(create_varied_database)
    backup = take_backup({**keyed_environ, "CARABASE_DEV_DATABASE_URL": pg.url(source)})

    sql = gzip.decompress(node("decrypt", backup.read_bytes(), master_key)).decode()

    assert 'CREATE TABLE "public"."item"' in sql and "happy_item" in sql
