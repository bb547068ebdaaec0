#!/usr/bin/env python3
"""How fast backup.verify and backup.drill are, against the shell commands they replace.

    .venv/bin/python bench/verify_drill.py [--scale N] [--runs N] [--url URL]

Creates the same database as bench/run.py (pgbench -i -s SCALE plus the text- and
jsonb-heavy document table), takes one backup of it with `invoke backup.dev`, then
measures, alternating the runs of what it compares and reporting medians:

  (f) verifying that backup: `python -m helpers.verify < file` and `invoke backup.verify`
      (tag + gzip stream, in one pass), against `pigz -t -v` and `gzip -t` of the same
      gzip stream already decrypted (which checks no tag at all)
  (g) `invoke backup.drill` of that backup, against a plain restore of the same dump:
      create a database, `gunzip -c | psql` into it, drop it

Everything it makes (the databases, a temporary directory, a random key) is removed at
the end. The server: --url, else the one the PG* variables name, else
postgres@127.0.0.1:5432. Needs pg_dump, psql, pgbench, gzip and pigz.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

# bench/ for run.py's helpers, and the repository for the project's.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers import verify
from run import (INVOKE, REPO, BenchError, alternate, create_database,
                 drop_database, fill_database, on_database, psql, run, say, seconds,
                 server_url, shell, timed)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=int, default=10)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--url", help="libpq URL of the server's maintenance database")
    args = parser.parse_args()
    missing = [tool for tool in ("pg_dump", "psql", "pgbench", "gzip", "pigz")
               if shutil.which(tool) is None]
    if missing:
        say(f"bench: missing: {', '.join(missing)}")
        return 1
    try:
        with tempfile.TemporaryDirectory(prefix="carabase-bench-") as workdir:
            rows = benchmark(args, Path(workdir))
    except BenchError as error:
        say(f"bench: {error}")
        return 1
    print("\n".join(rows))
    return 0


def benchmark(args, workdir: Path) -> list[str]:
    maintenance = server_url(args.url)
    name = f"carabase_bench_{uuid.uuid4().hex[:8]}"
    plain_name, drill_name = f"{name}_plain", f"{name}_drill"
    source = on_database(maintenance, name)
    base_env = {**os.environ, "PGAPPNAME": "carabase-bench"}
    env = {
        **{key: value for key, value in base_env.items()
           if not key.startswith(("CARABASE_", "HOST_MASTER_KEY"))},
        "HOST_MASTER_KEY": os.urandom(32).hex(),  # a throwaway key, gone with this process
        "CARABASE_BACKUP_DIR": str(workdir / "backups"),
        "CARABASE_DEV_DATABASE_URL": source,
        "CARABASE_DRILL_DATABASE_URL": on_database(maintenance, drill_name),
        "CARABASE_STAGING_DATABASE_URL": on_database(maintenance, f"{name}_staging_absent"),
        "CARABASE_PROD_DATABASE_URL": on_database(maintenance, f"{name}_prod_absent"),
        "PYTHONPATH": str(REPO),
    }
    invoke = [INVOKE, "--search-root", str(REPO)]
    try:
        say(f"creating {name} (pgbench -i -s {args.scale} and the document table)...")
        create_database(maintenance, name, base_env)
        fill_database(source, args.scale, base_env)
        run([*invoke, "backup.dev"], env, "backup.dev")
        [backup] = (workdir / "backups" / "dev").glob("*/*.sql.gz.enc")
        gz = workdir / "plain.sql.gz"
        run(shell(f"{sys.executable} -m helpers.crypto decrypt < {backup} > {gz}"), env,
            "decrypt")
        sql_size = int(run(shell(f"gzip -dc {gz} | wc -c"), env, "gzip -dc").stdout)

        say("(f) verify...")
        key = bytes.fromhex(env["HOST_MASTER_KEY"])
        verify_times = alternate(args.runs, {
            "pigz -t -v (decrypted)": lambda: timed(["pigz", "-t", "-v", str(gz)], env, "pigz"),
            "gzip -t (decrypted)": lambda: timed(["gzip", "-t", str(gz)], env, "gzip -t"),
            "helpers.verify.check_backup, in-process": lambda: timed_call(
                lambda: check_in_process(key, backup)),
            "python -m helpers.verify": lambda: timed(
                shell(f"{sys.executable} -m helpers.verify < {backup}"), env, "verify filter"),
            "invoke backup.verify dev": lambda: timed([*invoke, "backup.verify", "dev"], env,
                                                      "backup.verify"),
        })

        say("(g) drill...")
        plain_target = on_database(maintenance, plain_name)

        def plain_restore() -> float:
            def steps():
                create_database(maintenance, plain_name, base_env)
                run(shell(f"gunzip -c {gz} | psql -X -q -v ON_ERROR_STOP=1 -d"
                          f" '{plain_target}' > /dev/null"), env, "plain restore")
                drop_database(maintenance, plain_name, base_env)
            return timed_call(steps)

        drill_times = alternate(args.runs, {
            "plain restore": plain_restore,
            "invoke backup.drill dev": lambda: timed([*invoke, "backup.drill", "dev"], env,
                                                     "backup.drill"),
        })
        drill_line = run([*invoke, "backup.drill", "dev"], env, "backup.drill").stdout.strip()
        version = psql(maintenance, base_env, "show server_version", "server version")
    finally:
        for database in (name, plain_name, drill_name):
            drop_database(maintenance, database, base_env)
    return report(args, backup, gz, sql_size, verify_times, drill_times, drill_line, version)


def check_in_process(key: bytes, backup: Path) -> None:
    """The check itself, without starting an interpreter: what it costs per file."""
    with open(backup, "rb") as source:
        reason = verify.check_backup(key, source)
    if reason:
        raise BenchError(f"the bench backup does not verify: {reason}")


def timed_call(function) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def report(args, backup: Path, gz: Path, sql_size: int, verify_times, drill_times,
           drill_line: str, version: str) -> list[str]:
    mib = 1024 * 1024
    median = {name: statistics.median(values)
              for name, values in {**verify_times, **drill_times}.items()}
    pigz = median["pigz -t -v (decrypted)"]
    plain = median["plain restore"]
    rows = [
        f"PostgreSQL {version}; {os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f};"
        f" scale {args.scale}, medians of {args.runs} alternating runs.",
        f"Dump: {sql_size / mib:.0f} MiB of SQL, {gz.stat().st_size / mib:.0f} MiB gzipped,"
        f" {backup.stat().st_size / mib:.0f} MiB encrypted.",
        "",
        "| measurement | median (min-max) | result |",
        "|---|---|---|",
    ]
    for name, values in verify_times.items():
        ratio = median[name] / pigz
        rows.append(f"| (f) {name} | {seconds(values)} | {ratio:.2f}x pigz -t |")
    for name, values in drill_times.items():
        ratio = median[name] / plain
        rows.append(f"| (g) {name} | {seconds(values)} | {ratio:.2f}x the plain restore |")
    rows += ["", f"Last drill: `{drill_line}`"]
    return rows


if __name__ == "__main__":
    sys.exit(main())
