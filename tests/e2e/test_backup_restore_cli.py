"""Backup and restore through the real command line, against a real PostgreSQL."""
from __future__ import annotations

import gzip
import io
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import crypto, swap
from tests.sample_db import snapshot
from tests.support import REPO, run_invoke, seal_backup, take_backup


def backups_in(backup_dir: Path, env: str) -> list[Path]:
    return sorted((backup_dir / env).glob("*/*.sql.gz.enc"))


def everything_in(backup_dir: Path) -> list[Path]:
    return sorted(path for path in backup_dir.rglob("*") if path.is_file())


# --- backup -------------------------------------------------------------------------


def test_backup_writes_private_file_under_dated_name_and_reports_it(dev_environ, backup_dir):
    result = run_invoke("backup.dev", env=dev_environ)

    assert result.returncode == 0, result.stderr
    [backup] = backups_in(backup_dir, "dev")
    assert backup.parent.name == backup.name[:10]
    assert str(backup) in result.stdout and " in " in result.stdout and "KiB" in result.stdout
    assert stat.S_IMODE(backup.stat().st_mode) == 0o600
    for directory in (backup_dir, backup_dir / "dev", backup.parent):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert backup.read_bytes()[0] == 1  # envelope version


def test_backup_decrypts_by_hand_to_a_plain_sql_dump(dev_environ, backup_dir, key_file):
    backup = take_backup(dev_environ)

    decrypted = subprocess.run(
        [sys.executable, "-m", "helpers.crypto", "decrypt"], stdin=backup.open("rb"),
        capture_output=True, env={**os.environ, "HOST_MASTER_KEY_FILE": str(key_file)},
        cwd=REPO, check=True,
    ).stdout
    sql = gzip.decompress(decrypted).decode()
    assert "CREATE TABLE \"public\".\"item\"" in sql
    assert "DROP " not in sql  # a pure create script, as the original pg_dump -Fp was
    # Owners and grants travel (the restore leaves out those of roles a server lacks).
    assert 'ALTER TABLE "public"."item" OWNER TO "postgres";' in sql


def test_two_backups_in_a_row_get_distinct_names(dev_environ, backup_dir):
    take_backup(dev_environ)
    take_backup(dev_environ)

    names = [path.name for path in backups_in(backup_dir, "dev")]
    assert len(names) == 2 and names[0] != names[1]


@pytest.mark.parametrize("setting, message", [
    ({}, "no master key"),
    ({"HOST_MASTER_KEY": "not-a-key"}, "malformed"),
])
def test_backup_without_a_usable_key_refuses_and_writes_nothing(
        environ, pg, source_db, backup_dir, setting, message):
    result = run_invoke("backup.dev", env={
        **environ, **setting, "CARABASE_DEV_DATABASE_URL": pg.url(source_db)})

    assert result.returncode != 0
    assert message in result.stderr and "Traceback" not in result.stderr
    assert "not-a-key" not in result.stderr
    assert not backup_dir.exists() or everything_in(backup_dir) == []


def test_backup_of_missing_database_fails_in_one_line_and_publishes_nothing(
        keyed_environ, pg, backup_dir):
    result = run_invoke("backup.dev", env={
        **keyed_environ, "CARABASE_DEV_DATABASE_URL": pg.url("carabase_no_such_db")})

    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "does not exist" in lines[0]
    assert "CARABASE_DEV_DATABASE_URL" in lines[0]
    assert [p.name for p in everything_in(backup_dir)] == [".lock"]


def test_backup_of_a_server_that_is_down_fails_and_leaves_no_file(keyed_environ, tmp_path,
                                                                   backup_dir):
    nowhere = f"postgresql://postgres@/db?host={tmp_path}&port=1"
    result = run_invoke("backup.dev", env={**keyed_environ, "CARABASE_DEV_DATABASE_URL": nowhere})

    assert result.returncode != 0
    assert "pg_dump" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert [p.name for p in everything_in(backup_dir)] == [".lock"]


def test_backup_with_pg_dump_older_than_server_says_which_versions(dev_environ, tmp_path,
                                                                   backup_dir):
    # A stand-in that fails the way an old pg_dump does against a newer server.
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    fake = fake_bin / "pg_dump"
    fake.write_text(
        "#!/bin/sh\n"
        "echo 'pg_dump: error: aborting because of server version mismatch' >&2\n"
        "echo 'pg_dump: detail: server version: 18.1; pg_dump version: 15.20' >&2\n"
        "exit 1\n")
    fake.chmod(0o755)
    environ = {**dev_environ, "PATH": f"{fake_bin}{os.pathsep}{dev_environ['PATH']}"}

    result = run_invoke("backup.dev", env=environ)

    assert result.returncode != 0
    assert "older than the server" in result.stderr and "18.1" in result.stderr
    assert backups_in(backup_dir, "dev") == []


def test_backup_of_unknown_env_is_refused(dev_environ):
    result = run_invoke("backup.restore", "qa", "x.sql.gz.enc", "--yes", env=dev_environ)

    assert result.returncode != 0 and "unknown env 'qa'" in result.stderr


# --- restore ------------------------------------------------------------------------


def test_restore_into_new_database_reproduces_every_object(
        dev_environ, pg, source_db, database_factory):
    backup = take_backup(dev_environ)
    target = f"{source_db}_copy"
    database_factory.adopt(target)

    result = run_invoke("backup.restore", "staging", str(backup), "--yes", env={
        **dev_environ, "CARABASE_STAGING_DATABASE_URL": pg.url(target)})

    assert result.returncode == 0, result.stderr
    expected = snapshot(pg, source_db)
    assert "table item" in expected and "sequence invoice_number" in expected
    assert snapshot(pg, target) == expected


def test_restore_over_changed_database_brings_back_the_backed_up_state(dev_environ, pg,
                                                                       source_db):
    before = snapshot(pg, source_db)
    backup = take_backup(dev_environ)
    pg.psql(source_db, """
        update item set name = 'changed', price = 0;
        delete from note;
        insert into item (name) values ('added after the backup');
        select setval('invoice_number', 5000);
        drop view happy_item;
    """)
    assert snapshot(pg, source_db) != before

    result = run_invoke("backup.restore", "dev", str(backup), "--yes", env=dev_environ)

    assert result.returncode == 0, result.stderr
    assert snapshot(pg, source_db) == before


def test_backup_and_restore_with_no_key_variable_use_the_key_setup_made_in_home(
        environ, home, master_key, pg, source_db, backup_dir):
    """A new shell after scripts/setup.sh: no export line, the key in ~/.carabase."""
    (home / ".carabase").mkdir(mode=0o700)
    (home / ".carabase" / "master.key").write_text(master_key + "\n")
    (home / ".carabase" / "master.key").chmod(0o600)
    no_key_variable = {**environ, "CARABASE_DEV_DATABASE_URL": pg.url(source_db)}
    assert not any(name.startswith("HOST_MASTER_KEY") for name in no_key_variable)
    before = snapshot(pg, source_db)
    backup = take_backup(no_key_variable)
    pg.psql(source_db, "delete from note; update item set name = 'changed'")

    result = run_invoke("backup.restore", "dev", str(backup), "--yes", env=no_key_variable)

    assert result.returncode == 0, result.stderr
    assert snapshot(pg, source_db) == before
    with backup.open("rb") as sealed:  # sealed under that very key
        plain = crypto.decrypt_stream(bytes.fromhex(master_key), sealed, io.BytesIO())
    assert plain > 0


def test_restore_whose_sql_fails_midway_leaves_target_unchanged(
        dev_environ, pg, source_db, master_key, tmp_path):
    before = snapshot(pg, source_db)
    broken = seal_backup(tmp_path / "2026-01-01T000000.sql.gz.enc", gzip.compress(b"""
        CREATE TABLE public.half_done (id int);
        SELECT 1/0;
        CREATE TABLE public.never (id int);
    """), master_key)

    result = run_invoke("backup.restore", "dev", str(broken), "--yes", env=dev_environ)

    assert result.returncode != 0
    assert "nothing was changed" in result.stderr and "division by zero" in result.stderr
    assert snapshot(pg, source_db) == before
    assert not pg.database_exists(swap.restoring_name(source_db))  # dropped, not left


def test_failed_restore_into_missing_database_does_not_leave_it_created(
        dev_environ, pg, master_key, tmp_path):
    broken = seal_backup(tmp_path / "b.sql.gz.enc", gzip.compress(b"SELECT 1/0;"), master_key)
    target = "carabase_restore_never_created"

    result = run_invoke("backup.restore", "staging", str(broken), "--yes", env={
        **dev_environ, "CARABASE_STAGING_DATABASE_URL": pg.url(target)})

    assert result.returncode != 0
    assert not pg.database_exists(target)


def test_restore_of_damaged_file_is_refused_before_touching_the_database(
        dev_environ, pg, source_db, tmp_path):
    before = snapshot(pg, source_db)
    damaged = tmp_path / "damaged.sql.gz.enc"
    data = bytearray(take_backup(dev_environ).read_bytes())
    data[len(data) // 2] ^= 0x01
    damaged.write_bytes(bytes(data))
    pg.psql(source_db, "update item set name = 'after'")
    after = snapshot(pg, source_db)

    result = run_invoke("backup.restore", "dev", str(damaged), "--yes", env=dev_environ)

    assert result.returncode != 0 and "authentication failed" in result.stderr
    assert snapshot(pg, source_db) == after != before


def test_restore_with_wrong_key_is_refused(dev_environ, pg, source_db, tmp_path):
    backup = take_backup(dev_environ)
    other_key = tmp_path / "other.key"
    other_key.write_text(os.urandom(32).hex())
    other_key.chmod(0o600)

    result = run_invoke("backup.restore", "dev", str(backup), "--yes",
                        env={**dev_environ, "HOST_MASTER_KEY_FILE": str(other_key)})

    assert result.returncode != 0 and "wrong key" in result.stderr


def test_restore_tempfile_is_gone_afterwards(dev_environ, tmp_path):
    backup = take_backup(dev_environ)
    scratch = tmp_path / "scratch"
    scratch.mkdir()

    result = run_invoke("backup.restore", "dev", str(backup), "--yes",
                        env={**dev_environ, "TMPDIR": str(scratch)})

    assert result.returncode == 0, result.stderr
    assert list(scratch.iterdir()) == []


# --- guardrails ---------------------------------------------------------------------


def test_restore_into_prod_without_i_know_is_refused(dev_environ, pg, source_db):
    backup = take_backup(dev_environ)
    pg.psql(source_db, "update item set name = 'live data'")
    before = snapshot(pg, source_db)

    result = run_invoke("backup.restore", "prod", str(backup), "--yes", env={
        **dev_environ, "CARABASE_PROD_DATABASE_URL": pg.url(source_db)})

    assert result.returncode != 0 and "--i-know" in result.stderr
    assert snapshot(pg, source_db) == before


@pytest.mark.parametrize("how", [["--i-know"], []])
def test_restore_into_prod_with_i_know_or_its_variable_proceeds(dev_environ, pg, source_db,
                                                                how):
    backup = take_backup(dev_environ)
    expected = snapshot(pg, source_db)
    pg.psql(source_db, "update item set name = 'live data'")
    environ = {**dev_environ, "CARABASE_PROD_DATABASE_URL": pg.url(source_db)}
    if not how:
        environ["CARABASE_I_KNOW"] = "1"

    result = run_invoke("backup.restore", "prod", str(backup), "--yes", *how, env=environ)

    assert result.returncode == 0, result.stderr
    assert snapshot(pg, source_db) == expected


def test_restore_into_dev_whose_url_leads_to_prod_is_refused_even_when_spelled_otherwise(
        dev_environ, pg, source_db):
    backup = take_backup(dev_environ)
    pg.psql(source_db, "update item set name = 'live prod data'")
    before = snapshot(pg, source_db)
    # The same server and database, reached through a URL spelled differently.
    if pg.host.startswith("/"):
        other_spelling = (f"postgres:///{source_db}?host={pg.host}/&port={pg.port}"
                          f"&user={pg.user}")
    else:
        other_spelling = pg.url(source_db).replace(pg.host, "localhost" if pg.host.startswith(
            "127.") else pg.host + ".")
    assert other_spelling != dev_environ["CARABASE_DEV_DATABASE_URL"]

    result = run_invoke("backup.restore", "dev", str(backup), "--yes", "--i-know", env={
        **dev_environ, "CARABASE_PROD_DATABASE_URL": other_spelling})

    assert result.returncode != 0 and "leads to the prod database" in result.stderr
    assert snapshot(pg, source_db) == before


def test_restore_without_terminal_or_yes_refuses_instead_of_waiting(dev_environ, pg,
                                                                     source_db):
    backup = take_backup(dev_environ)
    pg.psql(source_db, "update item set name = 'x'")
    before = snapshot(pg, source_db)

    result = run_invoke("backup.restore", "dev", str(backup), env=dev_environ, timeout=60)

    assert result.returncode != 0 and "--yes" in result.stderr
    assert snapshot(pg, source_db) == before


@pytest.mark.parametrize("answer, restored", [("yes\n", True), ("no\n", False),
                                              ("\x04", False)])  # Ctrl-D
def test_restore_on_a_terminal_asks_and_obeys_the_answer(dev_environ, pg, source_db, answer,
                                                         restored):
    backup = take_backup(dev_environ)
    original = snapshot(pg, source_db)
    pg.psql(source_db, "update item set name = 'x'")
    changed = snapshot(pg, source_db)
    controller, terminal = os.openpty()
    try:
        os.write(controller, answer.encode())
        result = run_invoke("backup.restore", "dev", str(backup), env=dev_environ,
                            stdin=terminal, timeout=60)
    finally:
        os.close(controller)
        os.close(terminal)

    assert "Type 'yes'" in result.stdout and "Traceback" not in result.stderr
    assert (result.returncode == 0) == restored, result.stderr
    assert snapshot(pg, source_db) == (original if restored else changed)


def test_restore_into_dev_refuses_when_configured_prod_cannot_be_reached(
        dev_environ, pg, source_db, tmp_path):
    backup = take_backup(dev_environ)
    pg.psql(source_db, "update item set name = 'x'")
    before = snapshot(pg, source_db)
    unreachable = f"postgresql://postgres@/carabase_prod?host={tmp_path}&port=1"

    result = run_invoke("backup.restore", "dev", str(backup), "--yes", env={
        **dev_environ, "CARABASE_PROD_DATABASE_URL": unreachable})

    assert result.returncode != 0
    assert "cannot reach the prod database" in result.stderr
    assert snapshot(pg, source_db) == before


def test_restore_db_script_restores_like_the_task(dev_environ, pg, source_db,
                                                  database_factory):
    backup = take_backup(dev_environ)
    target = database_factory()

    result = subprocess.run(
        [str(REPO / "scripts" / "restore-db.sh"), "staging", str(backup), "--yes"],
        env={**dev_environ, "CARABASE_STAGING_DATABASE_URL": pg.url(target)},
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)

    assert result.returncode == 0, result.stderr
    assert snapshot(pg, target) == snapshot(pg, source_db)
