"""Off-site copies end to end: invoke and the real rclone against a real S3 server
(`rclone serve s3` on 127.0.0.1, with access keys) and a plain folder remote.

Backups that only need names and bytes are made by hand (random bytes under a backup's
name); the tests that decrypt or restore take real backups of a real PostgreSQL.
"""
from __future__ import annotations

import gzip
import io
import json
import os
import signal
import subprocess
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest

from helpers import crypto, retention
from tests.offsite_support import S3Server, offsite_files, rclone, upload, write_config
from tests.sample_db import snapshot
from tests.support import INVOKE, REPO, run_invoke, seal_backup, take_backup, wait_for

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
BUCKET = "carabase-test"


def ago(delta: timedelta) -> datetime:
    return (datetime.now(timezone.utc) - delta).replace(microsecond=0)


def relative(stamp: datetime) -> str:
    return f"{retention.date_dir_name(stamp)}/{retention.backup_name(stamp)}"


def random_backup(env_root: Path, stamp: datetime, size: int = 5000) -> Path:
    """A backup-named file of random bytes (status and push read names and bytes only)."""
    path = env_root / relative(stamp)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(size))
    return path


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    root = tmp_path_factory.mktemp("s3")
    server = S3Server(root / "backing", root / "server.log").start()
    yield server
    server.stop()


@pytest.fixture
def remote(s3):
    """This test's own prefix in the shared server's bucket: CARABASE_OFFSITE and the
    folder on the server's disk that holds what the remote holds."""
    prefix = "t" + os.urandom(4).hex()
    return SimpleNamespace(dest=f"s3test:{BUCKET}/{prefix}", root=s3.bucket(BUCKET) / prefix)


@pytest.fixture
def rclone_config(tmp_path, s3):
    return write_config(tmp_path / "rclone.conf", s3.config("s3test"))


def offsite_environ(environ: dict, dest: str, config: Path | None = None, **extra) -> dict:
    """`environ` with CARABASE_OFFSITE and rclone's config file, and no RCLONE_* of the
    developer's own."""
    scrubbed = {name: value for name, value in environ.items() if not name.startswith("RCLONE_")}
    scrubbed["CARABASE_OFFSITE"] = dest
    scrubbed["RCLONE_CONFIG"] = str(config) if config else os.devnull
    return {**scrubbed, **extra}


@pytest.fixture
def s3_environ(environ, remote, rclone_config):
    return offsite_environ(environ, remote.dest, rclone_config)


@pytest.fixture
def folder_remote(tmp_path):
    folder = tmp_path / "nas"
    folder.mkdir()
    return SimpleNamespace(dest=str(folder), root=folder)


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


# --- backup.<env> copies its new backup ---------------------------------------------------


def test_a_backup_lands_off_site_and_the_remote_copy_decrypts_to_the_same_dump(
        dev_environ, remote, rclone_config, master_key):
    environ = offsite_environ(dev_environ, remote.dest, rclone_config)
    result = run_invoke("backup.dev", env=environ)
    assert result.returncode == 0, result.stderr
    local = Path(result.stdout.split(" wrote ", 1)[1].split(" (", 1)[0])
    name = relative(retention.parse_backup_name(local.name))
    assert f"copied {name}" in result.stdout
    off_site = remote.root / "dev" / name
    assert off_site.read_bytes() == local.read_bytes()
    key = bytes.fromhex(master_key)
    plain_remote, plain_local = io.BytesIO(), io.BytesIO()
    crypto.decrypt_to(key, io.BytesIO(off_site.read_bytes()), plain_remote)
    crypto.decrypt_to(key, io.BytesIO(local.read_bytes()), plain_local)
    assert gzip.decompress(plain_remote.getvalue()) == gzip.decompress(plain_local.getvalue())
    assert b"CREATE TABLE" in gzip.decompress(plain_remote.getvalue())

    status = run_invoke("backup.status", "--json", env=environ)
    dev = next(entry for entry in json.loads(status.stdout)["envs"]
               if entry["env"] == "dev")
    stamp = retention.parse_backup_name(local.name).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert dev["status"] == "PASS"
    assert dev["offsite"]["latest"] == stamp and dev["offsite"]["destination"] == remote.dest
    line = run_invoke("backup.status", env=environ).stdout.splitlines()[0]
    assert line.startswith("[dev    ] PASS ") and line.endswith(f" offsite={stamp}")


def test_a_backup_over_rclones_multi_thread_cutoff_is_copied_recorded_and_passes(
        dev_environ, remote, rclone_config, tmp_path):
    # The cutoff is 256 MiB by default; lowered here so that a small backup crosses it.
    environ = offsite_environ(dev_environ, remote.dest, rclone_config,
                              RCLONE_MULTI_THREAD_CUTOFF="1k")
    probe = tmp_path / "probe"
    probe.mkdir()
    (probe / "probe.bin").write_bytes(os.urandom(4096))
    rclone_log = subprocess.run(
        [rclone(), "copy", "--use-json-log", "-v", str(probe), f"{remote.dest}-probe"],
        env=environ, capture_output=True, text=True, timeout=60).stderr
    assert "Multi-thread Copied (new)" in rclone_log  # the case this test is about

    result = run_invoke("backup.dev", env=environ)
    assert result.returncode == 0, result.stderr
    local = Path(result.stdout.split(" wrote ", 1)[1].split(" (", 1)[0])
    assert local.stat().st_size > 1024
    name = relative(retention.parse_backup_name(local.name))
    assert (remote.root / "dev" / name).read_bytes() == local.read_bytes()
    status = json.loads(run_invoke("backup.status", "--json", env=environ).stdout)
    dev = next(entry for entry in status["envs"] if entry["env"] == "dev")
    assert dev["status"] == "PASS"
    assert dev["offsite"]["latest"] == retention.parse_backup_name(local.name).strftime(
        "%Y-%m-%dT%H:%M:%SZ")


def test_a_failed_copy_keeps_the_backup_and_says_how_to_retry(dev_environ, tmp_path, s3,
                                                               remote):
    config = write_config(tmp_path / "bad.conf", s3.config("s3test", secret="wrong" * 8))
    environ = offsite_environ(dev_environ, remote.dest, config)
    result = run_invoke("backup.dev", env=environ)
    assert result.returncode == 1
    line = one_line(result.stderr)
    local = Path(result.stdout.split(" wrote ", 1)[1].split(" (", 1)[0])
    assert local.is_file() and str(local) in line
    assert "refused the credentials" in line
    assert line.endswith("retry with: invoke backup.push dev")
    assert not remote.root.exists() or offsite_files(remote.root) == set()


def test_a_bad_destination_stops_the_backup_before_it_starts(dev_environ, backup_dir):
    environ = {**dev_environ, "CARABASE_OFFSITE": "relative/folder"}
    result = run_invoke("backup.dev", env=environ)
    assert result.returncode == 1
    assert one_line(result.stderr).startswith("CARABASE_OFFSITE must be an rclone remote")
    assert result.stdout == "" and not (backup_dir / "dev").exists()


def test_the_rclone_installed_with_the_project_has_the_iclouddrive_backend():
    backends = subprocess.run([rclone(), "help", "backends"], capture_output=True, text=True,
                              timeout=30)
    assert "iclouddrive" in backends.stdout


# --- push ------------------------------------------------------------------------------


def test_push_copies_what_is_missing_and_nothing_else(s3_environ, backup_dir, remote,
                                                      tmp_path, rclone_config):
    dev = backup_dir / "dev"
    stamps = {"already": ago(3 * DAY), "missing": ago(5 * HOUR), "remote only": ago(20 * DAY)}
    already = random_backup(dev, stamps["already"])
    (dev / "notes.txt").write_text("mine")
    misfiled = dev / retention.date_dir_name(ago(9 * DAY)) / retention.backup_name(ago(DAY))
    misfiled.parent.mkdir()
    misfiled.write_bytes(b"a copy filed under another day")
    (dev / retention.partial_name(ago(HOUR))).write_bytes(b"a backup being written")
    first = run_invoke("backup.push", "dev", env=s3_environ)
    assert first.returncode == 0, first.stderr
    # Since then: a new local backup, and one that is only on the remote.
    missing = random_backup(dev, stamps["missing"])
    elsewhere = tmp_path / "elsewhere"
    random_backup(elsewhere, stamps["remote only"])
    upload(elsewhere, f"{remote.dest}/dev", rclone_config)

    result = run_invoke("backup.push", "dev", env=s3_environ)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"push dev: copied {relative(stamps['missing'])} (4.9 KiB, verified size and md5) to"
        f" {remote.dest}/dev/{relative(stamps['missing'])}",
        "push dev: 1 copied and verified (size and md5), 1 already off-site"]
    assert offsite_files(remote.root) == {f"dev/{relative(stamp)}" for stamp in stamps.values()}
    for path in (already, missing):
        assert (remote.root / "dev" / path.relative_to(dev)).read_bytes() == path.read_bytes()

    again = run_invoke("backup.push", "dev", env=s3_environ)
    assert again.returncode == 0, again.stderr
    assert again.stdout == f"push dev: nothing to copy: all 2 backups are already at" \
        f" {remote.dest}/dev\n"


def test_push_never_replaces_an_off_site_copy_that_differs(s3_environ, backup_dir, remote,
                                                           tmp_path, rclone_config):
    """A backup never changes once written: if the two differ, one is damaged (or the
    local one encrypted by ransomware), and only a person can tell which."""
    stamp, other = ago(2 * DAY), ago(HOUR)
    random_backup(backup_dir / "dev", stamp)
    random_backup(backup_dir / "dev", other)
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / relative(stamp)).parent.mkdir(parents=True)
    (elsewhere / relative(stamp)).write_bytes(b"the off-site copy")
    upload(elsewhere, f"{remote.dest}/dev", rclone_config)
    result = run_invoke("backup.push", "dev", env=s3_environ)
    assert result.returncode == 1
    assert one_line(result.stderr) == (
        f"push dev failed for 1 of 2 backups (first: {relative(stamp)}: the off-site copy has"
        " 17 bytes and this one 5000: not replaced (check both with backup.verify))")
    assert (remote.root / "dev" / relative(stamp)).read_bytes() == b"the off-site copy"
    assert (remote.root / "dev" / relative(other)).exists()  # the rest was copied


def test_push_to_a_folder_remote(environ, backup_dir, folder_remote):
    environ = offsite_environ(environ, folder_remote.dest)
    newest = ago(HOUR)
    backups = [random_backup(backup_dir / "prod", stamp) for stamp in (ago(30 * HOUR), newest)]
    result = run_invoke("backup.push", "prod", env=environ)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 3
    for path in backups:
        copy = folder_remote.root / "prod" / path.relative_to(backup_dir / "prod")
        assert copy.read_bytes() == path.read_bytes()
        assert copy.stat().st_mode & 0o777 == 0o600
        assert copy.parent.stat().st_mode & 0o777 == 0o700
    status = run_invoke("backup.status", env=environ)
    assert status.stdout.splitlines()[2].endswith(
        f" offsite={newest.strftime('%Y-%m-%dT%H:%M:%SZ')}")


@pytest.mark.parametrize("where", ["the tree", "inside it", "a symlink to it"])
def test_a_folder_destination_that_is_the_local_tree_is_refused_by_push_and_status(
        environ, backup_dir, tmp_path, where):
    random_backup(backup_dir / "dev", ago(HOUR))
    dest = {"the tree": backup_dir, "inside it": backup_dir / "offsite",
            "a symlink to it": tmp_path / "looks-elsewhere"}[where]
    if where == "a symlink to it":
        dest.symlink_to(backup_dir)
    environ = offsite_environ(environ, str(dest))
    before = offsite_files(backup_dir)
    for args in (["backup.push", "dev"], ["backup.status"]):
        result = run_invoke(*args, env=environ)
        assert result.returncode == 1
        assert one_line(result.stderr) == (
            f"CARABASE_OFFSITE {dest} is the local backup tree {backup_dir} or inside it, so"
            " nothing would be off-site: point it at another disk, a NAS or an rclone remote")
    assert offsite_files(backup_dir) == before


def test_a_folder_destination_that_does_not_exist_is_never_created(environ, backup_dir,
                                                                   tmp_path):
    """A NAS that is not mounted: the copy must not land on the local disk instead."""
    absent = tmp_path / "nas-not-mounted" / "carabase"
    backup = random_backup(backup_dir / "dev", ago(HOUR))
    result = run_invoke("backup.push", "dev", env=offsite_environ(environ, str(absent)))
    assert result.returncode == 1
    assert one_line(result.stderr) == (
        f"push dev failed: {absent} does not exist: create the bucket or folder (nothing is"
        " created above <env>/), or fix CARABASE_OFFSITE")
    assert not absent.parent.exists() and backup.exists()


# --- failures --------------------------------------------------------------------------


def test_wrong_credentials_give_one_line_and_keep_the_local_backups(environ, backup_dir,
                                                                    tmp_path, s3, remote):
    config = write_config(tmp_path / "bad.conf", s3.config("s3test", secret="x" * 40))
    backup = random_backup(backup_dir / "dev", ago(HOUR))
    before = backup.read_bytes()
    result = run_invoke("backup.push", "dev", env=offsite_environ(environ, remote.dest, config))
    assert result.returncode == 1
    line = one_line(result.stderr)
    assert line.startswith("push dev failed: the remote refused the credentials: check the"
                           " remote's keys in the rclone config (")
    assert "x" * 40 not in line and s3.secret_key not in line
    assert backup.read_bytes() == before


def test_an_unreachable_endpoint_gives_one_line(environ, backup_dir, tmp_path, s3, remote):
    closed = f"http://127.0.0.1:{S3Server(tmp_path, tmp_path / 'log').port}"
    config = write_config(tmp_path / "closed.conf", s3.config("s3test", endpoint=closed))
    backup = random_backup(backup_dir / "dev", ago(HOUR))
    # Fewer retries than the defaults (3 x 3, about 20 s): the same message, sooner.
    environ = offsite_environ(environ, remote.dest, config, RCLONE_RETRIES="1",
                              RCLONE_LOW_LEVEL_RETRIES="1")
    result = run_invoke("backup.push", "dev", env=environ)
    assert result.returncode == 1
    line = one_line(result.stderr)
    assert line.startswith("push dev failed: cannot reach the remote's endpoint (")
    assert "connection refused" in line
    assert backup.exists()


def test_a_missing_bucket_gives_one_line_and_creates_no_bucket(s3_environ, backup_dir, s3):
    environ = {**s3_environ, "CARABASE_OFFSITE": "s3test:no-such-bucket/carabase"}
    backup = random_backup(backup_dir / "dev", ago(HOUR))
    result = run_invoke("backup.push", "dev", env=environ)
    assert result.returncode == 1
    assert one_line(result.stderr) == (
        "push dev failed: s3test:no-such-bucket/carabase does not exist: create the bucket or"
        " folder (nothing is created above <env>/), or fix CARABASE_OFFSITE")
    assert not (s3.backing / "no-such-bucket").exists()
    assert backup.exists()


def test_an_undefined_remote_gives_one_line(environ, backup_dir, remote):
    random_backup(backup_dir / "dev", ago(HOUR))
    environ = offsite_environ(environ, "nosuchremote:bucket")
    result = run_invoke("backup.push", "dev", env=environ)
    assert result.returncode == 1
    assert one_line(result.stderr).startswith("push dev failed: rclone has no such remote:")


def big_backup(backup_dir: Path, master_key: str, stamp: datetime) -> Path:
    """A real sealed backup of 24 MiB of random bytes (incompressible, so it stays big)."""
    path = backup_dir / "dev" / relative(stamp)
    path.parent.mkdir(parents=True)
    return seal_backup(path, os.urandom(24 << 20), master_key)


def test_a_server_stopped_mid_upload_leaves_no_complete_looking_object_and_push_repairs_it(
        environ, backup_dir, tmp_path, master_key):
    server = S3Server(tmp_path / "backing", tmp_path / "server.log").start()
    try:
        bucket = server.bucket(BUCKET)
        config = write_config(tmp_path / "rclone.conf", server.config("s3test"))
        environ = offsite_environ(environ, f"s3test:{BUCKET}/carabase", config,
                                  RCLONE_BWLIMIT="8M", RCLONE_RETRIES="1",
                                  RCLONE_LOW_LEVEL_RETRIES="1")
        backup = big_backup(backup_dir, master_key, ago(HOUR))
        push = subprocess.Popen([INVOKE, "--search-root", str(REPO), "backup.push", "dev"],
                                env=environ, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        temporary = wait_for(lambda: [path for path in bucket.rglob(".rclone_temp_*")
                                      if path.stat().st_size > 1 << 20],
                             "the upload to start", timeout=20)
        server.stop()  # SIGKILL, mid-upload
        out, err = push.communicate(timeout=60)
        assert push.returncode == 1
        assert one_line(err).startswith("push dev failed")
        assert offsite_files(bucket) == set()  # nothing under a final name
        assert temporary[0].stat().st_size < backup.stat().st_size

        server.start()
        result = run_invoke("backup.push", "dev", env={**environ, "RCLONE_BWLIMIT": "0"})
        assert result.returncode == 0, result.stderr
        copy = bucket / "carabase" / "dev" / backup.relative_to(backup_dir / "dev")
        assert copy.read_bytes() == backup.read_bytes()
    finally:
        server.stop()


def test_a_push_killed_mid_copy_to_a_folder_leaves_only_a_partial_file(
        environ, backup_dir, folder_remote, master_key):
    environ = offsite_environ(environ, folder_remote.dest, RCLONE_BWLIMIT="8M")
    backup = big_backup(backup_dir, master_key, ago(HOUR))
    push = subprocess.Popen([INVOKE, "--search-root", str(REPO), "backup.push", "dev"],
                            env=environ, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    partial = wait_for(lambda: [path for path in folder_remote.root.rglob("*.partial")
                                if path.stat().st_size > 1 << 20],
                       "the copy to start", timeout=20)
    push.send_signal(signal.SIGTERM)
    out, err = push.communicate(timeout=30)
    assert push.returncode == 143, err
    names = {path.name for path in folder_remote.root.rglob("*") if path.is_file()}
    assert backup.name not in names
    assert all(name.endswith(".partial") for name in names), names
    assert partial

    result = run_invoke("backup.push", "dev", env={**environ, "RCLONE_BWLIMIT": "0"})
    assert result.returncode == 0, result.stderr
    copy = folder_remote.root / "dev" / backup.relative_to(backup_dir / "dev")
    assert copy.read_bytes() == backup.read_bytes()


# --- prune -------------------------------------------------------------------------------


def remote_tree_for_prune(target, config: Path, staging: Path) -> tuple[set[str], set[str]]:
    """Backups of many ages and things that are not backups, on the remote; returns
    (what retention keeps, what is not a backup)."""
    env_root = staging / "dev"
    deltas = [HOUR, 2 * DAY, 6 * DAY, 8 * DAY, 9 * DAY, 15 * DAY, 22 * DAY, 29 * DAY,
              36 * DAY, 37 * DAY, 60 * DAY, 61 * DAY, 90 * DAY, 200 * DAY]
    stamps = [ago(delta + 3 * HOUR) if delta > HOUR else ago(delta) for delta in deltas]
    for stamp in stamps:
        random_backup(env_root, stamp, size=100)
    decided = retention.plan(stamps, datetime.now(timezone.utc))
    assert decided.delete  # the test means something
    not_backups = {
        "notes.txt",
        f"{retention.date_dir_name(stamps[-1])}/{retention.backup_name(stamps[-1])}.bak",
        f"{retention.date_dir_name(ago(300 * DAY))}/{retention.backup_name(ago(301 * DAY))}",
        retention.backup_name(ago(400 * DAY)),
    }
    for name in not_backups:
        (env_root / name).parent.mkdir(parents=True, exist_ok=True)
        (env_root / name).write_bytes(b"not a backup")
    upload(env_root, f"{target.dest}/dev", config)
    return {relative(stamp) for stamp in decided.keep}, not_backups


@pytest.mark.parametrize("kind", ["s3", "folder"])
def test_remote_prune_deletes_exactly_what_the_plan_says_and_nothing_else(
        kind, environ, remote, rclone_config, folder_remote, tmp_path):
    target = remote if kind == "s3" else folder_remote
    environ = offsite_environ(environ, target.dest, rclone_config)
    kept, not_backups = remote_tree_for_prune(target, rclone_config, tmp_path / "staging")
    result = run_invoke("backup.prune", "dev", env=environ)
    assert result.returncode == 0, result.stderr
    assert offsite_files(target.root / "dev") == kept | not_backups, result.stdout + result.stderr
    assert result.stdout.splitlines()[-1] == f"dev off-site: kept {len(kept)}, deleted" \
        f" {14 - len(kept)}"


def test_offsite_prune_0_deletes_nothing_remote(s3_environ, remote, backup_dir, tmp_path,
                                                rclone_config):
    kept, not_backups = remote_tree_for_prune(remote, rclone_config, tmp_path / "staging")
    before = offsite_files(remote.root)
    random_backup(backup_dir / "dev", ago(400 * DAY))
    random_backup(backup_dir / "dev", ago(300 * DAY))
    random_backup(backup_dir / "dev", ago(HOUR))
    result = run_invoke("backup.prune", "dev", env={**s3_environ, "CARABASE_OFFSITE_PRUNE": "0"})
    assert result.returncode == 0, result.stderr
    assert offsite_files(remote.root) == before
    assert result.stdout.splitlines()[-1] == (
        f"dev off-site: CARABASE_OFFSITE_PRUNE=0: nothing deleted at {remote.dest}/dev"
        " (the bucket's own rules decide)")
    assert "dev: kept 3, deleted 0" in result.stdout  # the local prune ran as usual


# --- fetch on a new machine ----------------------------------------------------------------


def test_fetch_then_restore_on_a_second_clone_rebuilds_the_database(
        dev_environ, remote, rclone_config, tmp_path, pg, source_db, database_factory):
    environ = offsite_environ(dev_environ, remote.dest, rclone_config)
    take_backup(environ)  # pushes it too
    latest = take_backup(environ)
    # The new machine: a clone of the repository, an empty home and backup tree, and
    # only the key and the rclone config. (The clone borrows this virtualenv: installing
    # one takes a minute; restore-db.sh would make it on a bare clone.)
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True, timeout=60)
    (clone / ".venv").symlink_to(REPO / ".venv")
    new_home, new_tree = tmp_path / "new-home", tmp_path / "new-backups"
    new_home.mkdir()
    target = database_factory()
    new_machine = {**environ, "HOME": str(new_home), "CARABASE_BACKUP_DIR": str(new_tree),
                   "CARABASE_DEV_DATABASE_URL": pg.url(target)}

    def on_clone(*args):
        return subprocess.run([str(clone / ".venv" / "bin" / "invoke"), "--search-root",
                               str(clone), *args], env=new_machine, capture_output=True,
                              text=True, stdin=subprocess.DEVNULL, timeout=120)

    fetched = on_clone("backup.fetch", "dev", "latest")
    assert fetched.returncode == 0, fetched.stderr
    path = Path(fetched.stdout.strip())
    assert path == new_tree / "dev" / latest.relative_to(environ["CARABASE_BACKUP_DIR"] + "/dev")
    assert path.read_bytes() == latest.read_bytes()
    assert path.stat().st_mode & 0o777 == 0o600
    assert (new_tree / "dev").stat().st_mode & 0o777 == 0o700

    again = on_clone("backup.fetch", "dev", latest.name[:17])
    assert again.returncode == 0 and again.stdout.strip() == str(path)  # nothing overwritten

    restored = subprocess.run([str(clone / "scripts" / "restore-db.sh"), "dev", str(path),
                               "--yes"], env=new_machine, capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=120)
    assert restored.returncode == 0, restored.stderr
    assert snapshot(pg, target) == snapshot(pg, source_db)


def test_fetch_of_a_damaged_copy_keeps_nothing_and_status_counts_no_backup(
        s3_environ, backup_dir, remote, key_file):
    environ = {**s3_environ, "HOST_MASTER_KEY_FILE": str(key_file)}
    stamp = ago(HOUR)
    random_backup(backup_dir / "dev", stamp)  # a backup's name, bytes no key opens
    assert run_invoke("backup.push", "dev", env=environ).returncode == 0
    (backup_dir / "dev" / relative(stamp)).unlink()
    (backup_dir / "dev" / ".offsite.json").unlink()

    result = run_invoke("backup.fetch", "dev", "latest", env=environ)

    assert result.returncode == 1
    line = one_line(result.stderr)
    assert line.startswith(f"fetch dev refused: {remote.dest}/dev/{relative(stamp)} is damaged")
    assert line.endswith("not kept; check the other copies with: invoke backup.verify dev"
                         " --offsite --all")
    assert {path.name for path in (backup_dir / "dev").rglob("*") if path.is_file()} \
        == {".lock"}
    status = run_invoke("backup.status", env={**environ, "CARABASE_ENVS": "dev"})
    assert status.stdout.startswith("[dev    ] FAIL no backups")


def test_fetch_without_the_key_says_it_needs_it_and_downloads_nothing(
        s3_environ, backup_dir, remote):
    stamp = ago(HOUR)
    random_backup(backup_dir / "dev", stamp)
    assert run_invoke("backup.push", "dev", env=s3_environ).returncode == 0
    (backup_dir / "dev" / relative(stamp)).unlink()

    result = run_invoke("backup.fetch", "dev", "latest", env=s3_environ)

    assert result.returncode == 1
    assert one_line(result.stderr).startswith(
        "fetch dev: needs the master key to check the download before keeping it (")
    assert not (backup_dir / "dev" / relative(stamp)).exists()


def test_fetch_of_an_unknown_stamp_lists_the_newest(s3_environ, backup_dir, remote):
    stamp = ago(HOUR)
    random_backup(backup_dir / "dev", stamp)
    assert run_invoke("backup.push", "dev", env=s3_environ).returncode == 0
    result = run_invoke("backup.fetch", "dev", "2020-01-01T000000", env=s3_environ)
    assert result.returncode == 1
    assert one_line(result.stderr) == (
        f"fetch dev: no backup '2020-01-01T000000' at {remote.dest}/dev"
        f" (newest: {relative(stamp)})")


# --- secrets --------------------------------------------------------------------------------


def test_secrets_never_appear_in_process_arguments_or_cron_log(
        environ, backup_dir, tmp_path, s3, remote, rclone_config, master_key, key_file):
    environ = offsite_environ(environ, remote.dest, rclone_config, RCLONE_BWLIMIT="16M",
                              HOST_MASTER_KEY_FILE=str(key_file))
    big_backup(backup_dir, master_key, ago(HOUR))
    secrets = [s3.secret_key, s3.access_key, master_key]
    seen: list[str] = []
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            for entry in Path("/proc").iterdir():
                try:
                    seen.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(
                        errors="replace"))
                except OSError:
                    continue
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        log = tmp_path / "cron.log"
        with open(log, "ab") as output:
            for env in (environ, offsite_environ(environ, remote.dest, write_config(
                    tmp_path / "bad.conf", s3.config("s3test", secret="y" * 40)))):
                subprocess.run([INVOKE, "--search-root", str(REPO), "backup.push", "dev",
                                "backup.prune", "dev"], env=env, stdout=output,
                               stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=60)
    finally:
        stop.set()
        sampler.join()
    rclone_seen = [line for line in seen if "rclone" in line and " copy " in line]
    assert rclone_seen, "the sampler never saw rclone copy running"
    for secret in [*secrets, "y" * 40]:
        assert not [line for line in seen if secret in line]
        assert secret not in log.read_text()
    assert "copied" in log.read_text() and "refused the credentials" in log.read_text()


# --- the schedule -------------------------------------------------------------------------


def install_dry_run(environ: dict, pg_dump_dir: str | None = None):
    return run_invoke("backup.install-cron", "dev", "--platform", "systemd", "--dry-run",
                      env=environ)


def test_the_schedule_carries_the_config_path_and_no_secret(s3_environ, key_file, s3,
                                                            rclone_config):
    environ = {**s3_environ, "HOST_MASTER_KEY_FILE": str(key_file)}
    result = install_dry_run(environ)
    assert result.returncode == 0, result.stderr
    assert f'"RCLONE_CONFIG={rclone_config}"' in result.stdout or \
        f"RCLONE_CONFIG={rclone_config}" in result.stdout
    assert f"CARABASE_OFFSITE={s3_environ['CARABASE_OFFSITE']}" in result.stdout
    assert s3.secret_key not in result.stdout and s3.access_key not in result.stdout


def test_the_schedule_refuses_a_remote_defined_only_by_variables(environ, key_file, s3):
    environ = offsite_environ(environ, f"envonly:{BUCKET}/x", None,
                              HOST_MASTER_KEY_FILE=str(key_file),
                              RCLONE_CONFIG_ENVONLY_TYPE="s3",
                              RCLONE_CONFIG_ENVONLY_SECRET_ACCESS_KEY=s3.secret_key)
    result = install_dry_run(environ)
    assert result.returncode == 1
    line = one_line(result.stderr)
    assert "defined only by RCLONE_CONFIG_ENVONLY_* variables" in line
    assert "never carries credentials" in line
    assert s3.secret_key not in result.stdout + result.stderr


def test_the_schedule_refuses_a_config_file_others_can_read(s3_environ, key_file,
                                                            rclone_config):
    rclone_config.chmod(0o644)
    result = install_dry_run({**s3_environ, "HOST_MASTER_KEY_FILE": str(key_file)})
    assert result.returncode == 1
    assert one_line(result.stderr).endswith(f"others can read it: chmod 600 {rclone_config}")


# --- verify --offsite -------------------------------------------------------------------


def test_verify_offsite_streams_each_copy_from_s3_and_names_a_damaged_one(
        s3_environ, keyed_environ, remote, backup_dir, master_key, tmp_path):
    environ = {**s3_environ, "HOST_MASTER_KEY_FILE": keyed_environ["HOST_MASTER_KEY_FILE"]}
    good = seal_backup(tmp_path / "good", gzip.compress(os.urandom(5000)), master_key)
    older, newer = ago(2 * DAY), ago(DAY)
    for stamp in (older, newer):
        path = backup_dir / "dev" / relative(stamp)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(good.read_bytes())
    assert run_invoke("backup.push", "dev", env=environ).returncode == 0
    damaged = remote.root / "dev" / relative(older)
    data = bytearray(damaged.read_bytes())
    data[100] ^= 1  # rot one bit of the older copy, on the server's disk
    damaged.write_bytes(bytes(data))

    newest = run_invoke("backup.verify", "dev", "--offsite", env=environ)
    every = run_invoke("backup.verify", "dev", "--offsite", "--all", env=environ)

    assert newest.returncode == 0, newest.stderr
    assert newest.stdout.splitlines() == [f"OK {remote.dest}/dev/{relative(newer)}"]
    assert every.returncode == 1
    assert every.stdout.splitlines() == [
        f"DAMAGED {remote.dest}/dev/{relative(older)}: authentication failed:"
        " wrong key, or the file is damaged or truncated",
        f"OK {remote.dest}/dev/{relative(newer)}"]
    assert one_line(every.stderr) == "verify dev --offsite: 1 of 2 off-site copies damaged" \
        " or unreadable"
    assert not list(tmp_path.glob("**/*.sql.gz"))  # no plaintext written anywhere here


def test_verify_offsite_of_an_unreachable_remote_says_it_cannot_read(
        environ, keyed_environ, backup_dir, tmp_path):
    environ = offsite_environ({**environ, **keyed_environ}, str(tmp_path / "no-such-nas"))
    result = run_invoke("backup.verify", "dev", "--offsite", env=environ)
    assert result.returncode == 1
    assert "does not exist" in one_line(result.stderr)
