#!/usr/bin/env python3
"""What PITR costs, against the logical backup of the same database.

    .venv/bin/python bench/pitr.py [--scale N] [--segments N]   (as root)

Starts a throwaway cluster of its own (tests/pg.py, port 54337) with a pgbench database
of SCALE, sets PITR up with `invoke backup.pitr-setup dev --restart`, then times:

  - the logical backup (`invoke backup.dev`) and its restore (`invoke backup.restore`)
  - a full base backup (`invoke backup.pitr-backup dev --type full`) and a diff
  - a restore to a time between two writes (`invoke backup.pitr-restore`), whole command
  - archiving one WAL segment: a write, pg_switch_wal(), until pg_stat_archiver says it
    is archived (median of SEGMENTS), which is what archive-push costs per segment

and the sizes of the logical backup and of the repository. Removes everything after.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.pg import ThrowawayCluster, _as_postgres  # noqa: E402
from tests.support import clean_environ, run_invoke  # noqa: E402

PORT, SPARE = 54337, 54336


def timed(what: str, *args: str, env: dict) -> float:
    started = time.monotonic()
    result = run_invoke(*args, env=env, timeout=3600)
    if result.returncode != 0:
        sys.exit(f"{what} failed: {result.stderr.strip()}")
    return time.monotonic() - started


def size_of(path: Path) -> int:
    return sum(entry.stat().st_size for entry in path.rglob("*") if entry.is_file())


def archive_one(server) -> float:
    """A write, a WAL switch, and the wait until that segment is archived."""
    started = time.monotonic()
    segment = server.psql("carabase_dev", "insert into pgbench_history (tid, bid, aid, delta,"
                          " mtime) values (1, 1, 1, 1, now());"
                          " select pg_walfile_name(pg_switch_wal())").split()[-1]
    while server.psql("postgres", "select last_archived_wal from pg_stat_archiver"
                      ).strip()[8:] < segment[8:]:
        time.sleep(0.005)
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=10)
    parser.add_argument("--segments", type=int, default=10)
    options = parser.parse_args()
    cluster = ThrowawayCluster(port=PORT)
    work = Path(tempfile.mkdtemp(prefix="carabase-bench-pitr-"))
    try:
        server = cluster.start()
        server.psql("postgres", "create database carabase_dev")
        subprocess.run([str(cluster.bindir / "pgbench"), "-i", "-q", "-s", str(options.scale),
                        "-d", server.url("carabase_dev")], check=True, capture_output=True)
        environ = clean_environ(work / "home", work / "backups",
                                HOST_MASTER_KEY=os.urandom(32).hex(), CARABASE_ENVS="dev",
                                CARABASE_PITR_REPO=str(cluster.root / "pitr"),
                                CARABASE_DEV_DATABASE_URL=server.url("carabase_dev"))
        (work / "home").mkdir()
        size = int(server.psql("carabase_dev", "select pg_database_size(current_database())"))
        rows = []
        rows.append(("pitr-setup (restart, stanza, check, first full)",
                     timed("setup", "backup.pitr-setup", "dev", "--restart", env=environ)))
        rows.append(("logical backup (backup.dev)", timed("backup", "backup.dev", env=environ)))
        backup = next((work / "backups" / "dev").rglob("*.sql.gz.enc"))
        rows.append(("logical restore (backup.restore --yes)",
                     timed("restore", "backup.restore", "dev", str(backup), "--yes",
                           env=environ)))
        rows.append(("PITR full base backup (pitr-backup --type full)",
                     timed("full", "backup.pitr-backup", "dev", "--type", "full", env=environ)))
        rows.append(("PITR diff base backup (pitr-backup --type diff)",
                     timed("diff", "backup.pitr-backup", "dev", "--type", "diff", env=environ)))
        archived = [archive_one(server) for _ in range(options.segments)]
        target = server.psql("carabase_dev", "select clock_timestamp()").strip()
        server.psql("carabase_dev", "delete from pgbench_history")
        restored = cluster.root / "restored"
        rows.append(("PITR restore to a time (pitr-restore, whole command)",
                     timed("pitr-restore", "backup.pitr-restore", "dev", "--to", target,
                           "--data-dir", str(restored), "--port", str(SPARE), env=environ)))
        subprocess.run(_as_postgres([str(cluster.bindir / "pg_ctl"), "-D", str(restored),
                                     "-m", "immediate", "stop"]), capture_output=True)
        print(f"database: pgbench scale {options.scale}, {size / 2**20:.0f} MiB;"
              f" logical backup {backup.stat().st_size / 2**20:.1f} MiB, PITR repository"
              f" {size_of(cluster.root / 'pitr' / 'dev' / 'repo') / 2**20:.1f} MiB")
        print(f"{'what':<56} {'seconds':>8}")
        for what, spent in rows:
            print(f"{what:<56} {spent:>8.2f}")
        print(f"{'archiving one WAL segment, median of ' + str(len(archived)):<56}"
              f" {statistics.median(archived):>8.3f}")
    finally:
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
