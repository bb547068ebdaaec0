"""PITR end to end: a second throwaway cluster of its own (the suite's shared one never
archives), set up once for the module with pitr-setup --restart, then restored, drilled,
verified and watched by status as a user would. Skipped only where pgBackRest is not
installed (.ci/run installs it)."""
from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import stat
import subprocess
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from tests.pg import ThrowawayCluster, _as_postgres
from tests.support import clean_environ, run_invoke, take_backup, wait_for

pytestmark = pytest.mark.skipif(shutil.which("pgbackrest") is None,
                                reason="pgBackRest is not installed (apt-get install"
                                       " pgbackrest; .ci/run does it)")

PORT = 54339  # the suite's shared cluster is on 54329
SPARE_PORT = 54338


class Pitr:
    """The module's archiving cluster and the environment the commands run with."""

    def __init__(self, cluster: ThrowawayCluster, server, environ: dict, setup_result):
        self.cluster, self.server, self.environ = cluster, server, environ
        self.setup_result = setup_result
        self.directory = cluster.root / "pitr" / "dev"
        self.config = self.directory / "pgbackrest.conf"
        self.repo = self.directory / "repo"

    def sql(self, sql: str) -> str:
        return self.server.psql("carabase_dev", sql)

    def info(self) -> dict:
        result = subprocess.run(_as_postgres(["pgbackrest", f"--config={self.config}",
                                              "--stanza=dev", "info", "--output=json"]),
                                capture_output=True, text=True, check=True, timeout=60)
        return json.loads(result.stdout)[0]

    def status(self) -> dict:
        result = run_invoke("backup.status", "--json", env=self.environ)
        return json.loads(result.stdout)["envs"][0]

    @contextlib.contextmanager
    def login_rules(self, hba: str):
        """Restores get `hba` as their pg_hba.conf, as on Debian, where it lives outside
        the data directory and a restored cluster borrows the live server's."""
        rules = self.cluster.root / "etc"
        rules.mkdir(exist_ok=True)
        (rules / "pg_hba.conf").write_text(hba)
        (rules / "pg_ident.conf").write_text("")
        for path in (rules, *rules.iterdir()):
            shutil.chown(path, "postgres")
        pointer = Path(self.environ["CARABASE_BACKUP_DIR"]) / "dev" / "pitr.json"
        original = pointer.read_text()
        data = json.loads(original)
        data["server"]["config_elsewhere"] = [str(rules / "pg_hba.conf"),
                                              str(rules / "pg_ident.conf")]
        pointer.write_text(json.dumps(data))
        try:
            yield
        finally:
            pointer.write_text(original)


@pytest.fixture(scope="module")
def pitr(tmp_path_factory):
    cluster = ThrowawayCluster(port=PORT)
    try:
        server = cluster.start()
        server.psql("postgres", "create database carabase_dev")
        home = tmp_path_factory.mktemp("pitr-home")
        environ = clean_environ(home, home / "backups", HOST_MASTER_KEY=os.urandom(32).hex(),
                                CARABASE_ENVS="dev",
                                CARABASE_PITR_REPO=str(cluster.root / "pitr"),
                                CARABASE_DEV_DATABASE_URL=server.url("carabase_dev"))
        server.psql("carabase_dev", "create table markers (n int primary key);"
                    " insert into markers values (1); create table filler as select"
                    " md5(n::text) as text from generate_series(1, 2000) as n")
        result = run_invoke("backup.pitr-setup", "dev", "--restart", env=environ, timeout=300)
        yield Pitr(cluster, server, environ, result)
    finally:
        cluster.stop()


@pytest.fixture
def restored_dir(pitr):
    """Where a test restores to; the cluster started there is stopped afterwards."""
    directory = pitr.cluster.root / "restored"
    yield directory
    subprocess.run(_as_postgres([str(pitr.cluster.bindir / "pg_ctl"), "-D", str(directory),
                                 "-m", "immediate", "stop"]), capture_output=True, timeout=60)
    shutil.rmtree(directory, ignore_errors=True)


def test_setup_turns_on_archiving_and_takes_a_full_backup_with_a_private_config(pitr):
    assert pitr.setup_result.returncode == 0, pitr.setup_result.stderr
    assert pitr.sql("select current_setting('archive_mode')").strip() == "on"
    assert pitr.environ["HOST_MASTER_KEY"] not in pitr.setup_result.stdout
    mode = pitr.config.stat()
    assert stat.S_IMODE(mode.st_mode) == 0o600
    assert mode.st_uid == (pitr.cluster.data.stat().st_uid)  # the server's user
    assert [backup["type"] for backup in pitr.info()["backup"]] == ["full"]
    passphrase = [line for line in pitr.config.read_text().splitlines()
                  if line.startswith("repo1-cipher-pass=")]
    # The passphrase is in the 0600 file only, never in the server's settings.
    assert passphrase and passphrase[0].split("=", 1)[1] not in \
        pitr.sql("select current_setting('archive_command')")


def test_setup_run_again_changes_nothing_that_is_right(pitr):
    written = pitr.config.stat().st_mtime_ns
    started = pitr.sql("select pg_postmaster_start_time()")

    result = run_invoke("backup.pitr-setup", "dev", "--restart", env=pitr.environ, timeout=300)

    assert result.returncode == 0, result.stderr
    assert " set " not in result.stdout and "restarted" not in result.stdout
    assert pitr.config.stat().st_mtime_ns == written
    assert pitr.sql("select pg_postmaster_start_time()") == started
    assert len(pitr.info()["backup"]) == 1


def test_restore_to_a_time_brings_back_exactly_the_rows_before_it_and_the_dropped_table(
        pitr, restored_dir):
    pitr.sql("insert into markers values (2), (3); create table doomed (x int);"
             " insert into doomed values (42)")
    target = pitr.sql("select clock_timestamp()").strip()
    pitr.sql("select pg_sleep(0.2); drop table doomed; insert into markers values (4)")

    result = run_invoke("backup.pitr-restore", "dev", "--to", target, "--data-dir",
                        str(restored_dir), "--port", str(SPARE_PORT), env=pitr.environ,
                        timeout=300)

    assert result.returncode == 0, result.stderr
    url = next(word.strip("'") for word in result.stdout.split() if "port=" in word)
    restored = subprocess.run(["psql", "-X", "-At", "-d", url, "-c",
                               "select string_agg(n::text, ',' order by n) from markers;"
                               " select x from doomed; select pg_is_in_recovery()"],
                              capture_output=True, text=True, timeout=60)
    assert restored.stdout.split() == ["1,2,3", "42", "f"], restored.stderr
    # The live cluster is untouched, and the restored one does not archive into its repo.
    assert pitr.sql("select count(*) from markers").strip() == "4"
    assert subprocess.run(["psql", "-X", "-At", "-d", url, "-c", "show archive_mode"],
                          capture_output=True, text=True).stdout.strip() == "off"


def test_restore_refuses_a_non_empty_directory_and_a_time_outside_the_window(pitr, tmp_path):
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "keep.txt").write_text("mine")
    now = datetime.now(timezone.utc)

    into_occupied = run_invoke("backup.pitr-restore", "dev", "--to", "latest", "--data-dir",
                               str(occupied), "--port", str(SPARE_PORT), env=pitr.environ)
    too_early = run_invoke("backup.pitr-restore", "dev", "--to",
                           f"{now - timedelta(days=1):%Y-%m-%d %H:%M:%S}+00", "--data-dir",
                           str(tmp_path / "new"), "--port", str(SPARE_PORT), env=pitr.environ)
    too_late = run_invoke("backup.pitr-restore", "dev", "--to",
                          f"{now + timedelta(hours=1):%Y-%m-%d %H:%M:%S}+00", "--data-dir",
                          str(tmp_path / "new"), "--port", str(SPARE_PORT), env=pitr.environ)

    assert into_occupied.returncode == 1
    assert "is not an empty directory" in into_occupied.stderr
    assert (occupied / "keep.txt").read_text() == "mine"
    for refused, where in ((too_early, "before the oldest base backup"),
                           (too_late, "after the newest archived WAL")):
        assert refused.returncode == 1
        assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
        assert where in refused.stderr and "the window is" in refused.stderr
        assert "Traceback" not in refused.stderr
    assert not (tmp_path / "new").exists()


def test_status_shows_pitr_then_warns_while_the_repo_is_unwritable_and_recovers_after(pitr):
    take_backup(pitr.environ)  # a logical backup, so that PITR alone decides the status
    healthy = pitr.status()
    assert healthy["status"] == "PASS", healthy["warning"]
    assert healthy["pitr"]["newest_base_backup"] and healthy["pitr"]["last_archived"]
    line = run_invoke("backup.status", env=pitr.environ).stdout
    assert " pitr=wal:20" in line and ",base:20" in line

    archive = pitr.repo / "archive" / "dev"
    mode = stat.S_IMODE(archive.stat().st_mode)
    archive.chmod(0o000)
    try:
        pitr.sql("insert into markers values (100); select pg_switch_wal()")
        failing = wait_for(lambda: (lambda s: s if s["status"] == "WARN" else None)(
            pitr.status()), "status to see archiving fail", timeout=60)
        assert any("archiving is failing" in w for w in failing["pitr"]["warnings"])
        assert "archiving is failing" in run_invoke("backup.status", env=pitr.environ).stdout
    finally:
        archive.chmod(mode)

    # A write, then a switch: the archiver retries at once instead of in a minute.
    pitr.sql("insert into markers values (101); select pg_switch_wal()")
    recovered = wait_for(lambda: (lambda s: s if s["status"] == "PASS" else None)(
        pitr.status()), "status to recover", timeout=120)
    assert recovered["pitr"]["warnings"] == []


def test_a_wrong_master_key_gives_one_clear_line(pitr):
    wrong = {**pitr.environ, "HOST_MASTER_KEY": os.urandom(32).hex()}

    result = run_invoke("backup.pitr-backup", "dev", env=wrong)

    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "pitr-backup dev: the master key is not the one PITR for dev was set up with (the"
        " repository's passphrase is derived from it): use that key"]
    assert len(pitr.info()["backup"]) == 1  # nothing was backed up with it


def test_backup_copies_the_encrypted_repository_off_site_and_never_the_config(pitr, tmp_path):
    offsite = tmp_path / "offsite"
    offsite.mkdir()

    result = run_invoke("backup.pitr-backup", "dev", "--type", "incr",
                        env={**pitr.environ, "CARABASE_OFFSITE": str(offsite)}, timeout=300)

    assert result.returncode == 0, result.stderr
    copy = offsite / "dev" / "pitr"
    local = sorted(path.relative_to(pitr.repo) for path in pitr.repo.rglob("*")
                   if path.is_file())
    assert sorted(path.relative_to(copy) for path in copy.rglob("*") if path.is_file()) == local
    assert [backup["type"] for backup in pitr.info()["backup"]][-1] == "incr"
    passphrase = pitr.config.read_text().split("repo1-cipher-pass=")[1].split()[0]
    assert not any(passphrase.encode() in path.read_bytes()
                   for path in copy.rglob("*") if path.is_file())


def test_verify_catches_a_flipped_byte_in_a_wal_file_whatever_pgbackrest_exits_with(pitr):
    segments = sorted(pitr.repo.glob("archive/dev/*/*/0000*.zst"))
    victim = segments[len(segments) // 2]
    original = victim.read_bytes()
    flipped = bytearray(original)
    flipped[len(flipped) // 2] ^= 0x01
    victim.write_bytes(bytes(flipped))
    try:
        damaged = run_invoke("backup.verify", "dev", env=pitr.environ, timeout=300)
    finally:
        victim.write_bytes(original)
    intact = run_invoke("backup.verify", "dev", env=pitr.environ, timeout=300)

    assert damaged.returncode == 1
    assert f"DAMAGED {pitr.repo}" in damaged.stdout and victim.name.split("-")[0] in \
        damaged.stdout
    assert "PITR repository is damaged" in damaged.stderr
    assert intact.returncode == 0, intact.stderr
    assert f"OK {pitr.repo}" in intact.stdout


@pytest.fixture
def small_tmpfs(pitr):
    """A 1 MiB tmpfs the server's user can write to (mounting needs root)."""
    mount = pitr.cluster.root / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0777", "tmpfs",
                       str(mount)], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    yield mount
    subprocess.run(["umount", str(mount)], capture_output=True)
    mount.rmdir()


def test_drill_restores_a_recent_time_checks_every_table_and_records_it(pitr, small_tmpfs):
    pitr.sql("create table drilled (n int); insert into drilled values (1)")
    # The drill restores beside the repository, never into TMPDIR: a small tmpfs here.
    small_tmp = {**pitr.environ, "TMPDIR": str(small_tmpfs)}

    result = run_invoke("backup.pitr-drill", "dev", env=small_tmp, timeout=300)

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("pitr-drill dev: PASS restored to ")
    assert pitr.status()["pitr"]["drill"]["result"] == "PASS"
    assert list(pitr.directory.glob("drill-*")) == []
    assert list(small_tmpfs.iterdir()) == []


def test_drill_where_there_is_no_room_fails_at_once_in_one_line_and_records_it(
        pitr, small_tmpfs):
    short = {**pitr.environ, "CARABASE_PITR_DRILL_DIR": str(small_tmpfs)}

    result = run_invoke("backup.pitr-drill", "dev", env=short, timeout=300)

    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert f"not enough room in {small_tmpfs} for the drill's cluster: 1 MiB free" in \
        result.stderr
    assert "CARABASE_PITR_DRILL_DIR" in result.stderr
    assert list(small_tmpfs.iterdir()) == []
    assert pitr.status()["pitr"]["drill"]["result"] == "FAIL"


as_root = pytest.mark.skipif(os.geteuid() != 0, reason="the server's user differs from the"
                             " invoking one only when run as root")


@as_root
def test_restore_as_root_under_peer_rules_polls_and_connects_as_the_servers_user(
        pitr, restored_dir):
    pitr.sql("insert into markers values (200)")

    with pitr.login_rules("local all all peer\n"):  # Debian's: root may not log in as postgres
        started = time.monotonic()
        result = run_invoke("backup.pitr-restore", "dev", "--to", "latest", "--data-dir",
                            str(restored_dir), "--port", str(SPARE_PORT), env=pitr.environ,
                            timeout=180)

    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 120
    connect = next(line for line in result.stdout.splitlines() if ": connect: " in line)
    command = shlex.split(connect.split(": connect: ", 1)[1])
    assert command[:3] == ["runuser", "-u", "postgres"]
    rows = subprocess.run([*command, "-X", "-At", "-c", "select max(n) from markers"],
                          capture_output=True, text=True, timeout=60)
    assert rows.stdout.strip() == "200", rows.stderr


@as_root
def test_restore_whose_logins_are_all_refused_stops_at_once_and_names_the_cause(
        pitr, restored_dir):
    with pitr.login_rules("local all all reject\n"):
        started = time.monotonic()
        result = run_invoke("backup.pitr-restore", "dev", "--to", "latest", "--data-dir",
                            str(restored_dir), "--port", str(SPARE_PORT), env=pitr.environ,
                            timeout=180)

    assert result.returncode == 1
    assert time.monotonic() - started < 120
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "refuses postgres's login as postgres: pg_hba.conf rejects connection" in \
        result.stderr
    assert "not promoted" not in result.stderr


def stop_restored(pitr, directory: Path) -> None:
    subprocess.run(_as_postgres([str(pitr.cluster.bindir / "pg_ctl"), "-D", str(directory),
                                 "-m", "immediate", "stop"]), capture_output=True, timeout=60)
    shutil.rmtree(directory, ignore_errors=True)


def restored_rows(result) -> list[str]:
    """The markers of the cluster a pitr-restore started, read as its output says to."""
    connect = next(line for line in result.stdout.splitlines() if ": connect: " in line)
    command = shlex.split(connect.split(": connect: ", 1)[1])
    rows = subprocess.run([*command, "-X", "-At", "-c", "select n from markers order by n"],
                          capture_output=True, text=True, timeout=60)
    assert rows.returncode == 0, rows.stderr
    return rows.stdout.split()


def test_while_the_live_server_cannot_archive_status_warns_and_restores_still_go_ahead(
        pitr, restored_dir, tmp_path):
    pitr.sql("delete from markers where n >= 300; insert into markers values (300)")
    # pgBackRest keeps a backup's end in whole seconds: a time in that second is refused.
    ended = pitr.info()["backup"][-1]["timestamp"]["stop"]
    target = wait_for(lambda: (lambda now: now if float(now) > ended + 1 else None)(
        pitr.sql("select extract(epoch from clock_timestamp())").strip()), "a second to pass",
        timeout=5)
    target = f"{datetime.fromtimestamp(float(target), timezone.utc):%Y-%m-%d %H:%M:%S.%f}+00"
    segment = pitr.sql("insert into markers values (301);"
                       " select pg_walfile_name(pg_switch_wal())").split()[-1]
    wait_for(lambda: pitr.sql("select last_archived_wal >= '" + segment + "' from"
                              " pg_stat_archiver").strip() == "t", "the archiver", timeout=60)
    ours = pitr.sql("select current_setting('archive_command')").strip()
    pitr.sql("alter system set archive_command = 'false'; select pg_reload_conf()")
    latest_dir = pitr.cluster.root / "latest"  # reachable by the server's user
    try:
        pitr.sql("insert into markers values (302)")  # never archived
        warned = wait_for(lambda: (lambda s: s if s["pitr"]["status"] == "WARN" else None)(
            pitr.status()), "status to see the archive_command changed", timeout=30)
        started = time.monotonic()
        to_time = run_invoke("backup.pitr-restore", "dev", "--to", target, "--data-dir",
                             str(restored_dir), "--port", str(SPARE_PORT), env=pitr.environ,
                             timeout=100)
        took = time.monotonic() - started
        to_time_rows = restored_rows(to_time) if to_time.returncode == 0 else None
        latest = run_invoke("backup.pitr-restore", "dev", "--to", "latest", "--data-dir",
                            str(latest_dir), "--port", str(SPARE_PORT - 1), env=pitr.environ,
                            timeout=100)
        latest_rows = restored_rows(latest) if latest.returncode == 0 else None
        too_late = run_invoke("backup.pitr-restore", "dev", "--to", pitr.sql(
            "select clock_timestamp()").strip(), "--data-dir", str(tmp_path / "late"),
            "--port", str(SPARE_PORT - 2), env=pitr.environ, timeout=100)
        line = run_invoke("backup.status", env=pitr.environ).stdout
    finally:
        pitr.sql(f"alter system set archive_command = $q${ours}$q$; select pg_reload_conf()")
        stop_restored(pitr, latest_dir)

    assert warned["status"] in ("WARN", "FAIL")  # FAIL: no logical backup, run alone
    assert any("archive_command is not pgBackRest's" in w for w in warned["pitr"]["warnings"])
    assert "archive_command is not pgBackRest's" in line
    # The time is covered by what is archived: no waiting on the live server.
    assert to_time.returncode == 0, to_time.stderr
    assert took < 60 and "cannot archive" not in to_time.stdout
    assert [n for n in to_time_rows if int(n) >= 300] == ["300"]
    # latest: what is archived, and the output says up to when.
    assert latest.returncode == 0, latest.stderr
    assert "cannot archive" in latest.stdout
    assert "restoring what is archived, up to 20" in latest.stdout
    assert [n for n in latest_rows if int(n) >= 300] == ["300", "301"]
    # A time after the newest archived commit cannot be reached: one line says why.
    assert too_late.returncode == 1
    assert len(too_late.stderr.strip().splitlines()) == 1, too_late.stderr
    assert "is after the newest archived commit" in too_late.stderr
    assert "cannot archive" in too_late.stderr


def test_offsite_copy_keeps_history_this_repository_has_no_record_of_and_prunes_what_it_expired(
        pitr, tmp_path):
    offsite = tmp_path / "offsite"
    offsite.mkdir()
    environ = {**pitr.environ, "CARABASE_OFFSITE": str(offsite)}
    copy = offsite / "dev" / "pitr"
    first = run_invoke("backup.pitr-backup", "dev", "--type", "full", env=environ, timeout=300)
    assert first.returncode == 0, first.stderr
    # What a repository lost since left off-site: a base backup and WAL this one never had.
    older = copy / "backup" / "dev" / "20200101-000000F"
    older.mkdir()
    (older / "backup.manifest").write_text("older history")
    archive = next(copy.glob("archive/dev/*-*"))
    older_wal = archive / "0000000200000000" / f"000000020000000000000001-{'0' * 40}.zst"
    older_wal.parent.mkdir()
    older_wal.write_bytes(b"older history")

    kept = run_invoke("backup.pitr-backup", "dev", "--type", "incr", env=environ, timeout=300)

    assert kept.returncode == 0, kept.stderr
    assert (older / "backup.manifest").read_text() == "older history"
    assert older_wal.read_bytes() == b"older history"
    assert "holds 1 base backup(s) this repository has no record of (20200101-000000F):" \
        " copying only, deleting nothing there" in kept.stdout
    assert "(rclone copy)" in kept.stdout

    # The same history: what pgBackRest expired here is removed off-site too.
    shutil.rmtree(older)
    expired = pitr.info()["backup"][0]["label"]
    subprocess.run(_as_postgres(["pgbackrest", f"--config={pitr.config}", "--stanza=dev",
                                 "expire", f"--set={expired}"]), check=True,
                   capture_output=True, timeout=120)
    assert (copy / "backup" / "dev" / expired).is_dir()

    pruned = run_invoke("backup.pitr-backup", "dev", "--type", "incr", env=environ, timeout=300)

    assert pruned.returncode == 0, pruned.stderr
    assert "(rclone sync)" in pruned.stdout and "no record of" not in pruned.stdout
    assert not (copy / "backup" / "dev" / expired).exists()
    assert not older_wal.exists()
