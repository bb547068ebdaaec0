#!/usr/bin/env python3
"""How close backups and restores come to the floor: the bare commands they wrap.

    .venv/bin/python bench/floor.py                     # scale 10, 5 runs of each
    .venv/bin/python bench/floor.py --scale 5 --runs 3 --url postgresql://me@db:5432/postgres

(bench/run.sh installs the project into .venv on a fresh clone; run this file with
.venv/bin/python, whose directory holds the invoke it measures.)

On the database bench/run.py builds (pgbench -i -s SCALE plus its document table), it
measures, alternating the runs of what it compares and reporting medians (min-max):

  (1) the floor of any logical backup: pg_dump -Fp (the backup's own options) > /dev/null
  (2) invoke backup.dev with CARABASE_COMPRESSION=fast (ISA-L level 2) and =best
      (pigz -9), as ratios to (1), and each backup's size
  (3) invoke backup.restore staging FILE --yes --no-keep --jobs N (N = 1, 2, 4) into an
      existing (empty) database, against a bare createdb X && gunzip -c FILE | psql X of
      the same dump, and against createdb X && pg_restore -j 2 of a pg_dump -Fd -j 2 of
      the same database (what users of the directory format get)
  (4) on a tiny database (one table, a few rows; --tiny-runs, default 10): the fixed
      cost of a backup (invoke backup.dev minus pg_dump | gzip | encrypt > file) and of a
      restore (invoke backup.restore minus createdb && decrypt | gunzip | psql), and the
      restore with its default sessions against --jobs 1
  (5) how many processes a tiny restore and a tiny backup start: psql by a counting
      wrapper first on PATH; every program (bash, python...) with strace, when installed

and prints a Markdown table (--only-restore: (3) and (4) alone, with the scaling table
README.md quotes). Everything it makes (databases, a temporary directory, a
random key file) is removed at the end. The server: --url, else the one the PG*
variables name, else postgres@127.0.0.1:5432 (as bench/run.py). Needs pg_dump, psql,
pgbench, createdb and gzip; pigz for `best` as the README describes it.
"""
from __future__ import annotations

import argparse
import collections
import functools
import os
import platform
import re
import shlex
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

# bench/run.py builds the database and times things; this file only adds its cases.
from run import (INVOKE, PG_DUMP_OPTIONS, REPO, BenchError, alternate, cpu_model,
                 create_database, drop_database, fill_database, first_line, on_database, psql,
                 run, say, seconds, server_url, shell, timed, verdict)

from helpers import crypto
from helpers.config import isal_loads

REQUIRED_TOOLS = ("pg_dump", "psql", "pgbench", "createdb", "gzip")
MIB = 1024 * 1024
TINY_TABLE = """
create table note (id int primary key, body text not null);
insert into note select i, 'note ' || i from generate_series(1, 5) i;
"""
# What a restore leaves or builds beside its target (helpers/swap.py's names).
RESTORE_SUFFIXES = ("", "__carabase_undo", "__carabase_restoring")


def check_tools() -> None:
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if not os.access(INVOKE, os.X_OK):
        missing.append("invoke (run this with the project's .venv/bin/python)")
    if missing:
        raise BenchError("missing: " + "; ".join(missing))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=int, default=10,
                        help="pgbench scale; the document table gets 10,000 rows per unit")
    parser.add_argument("--runs", type=int, default=5, help="timed runs of each case")
    parser.add_argument("--tiny-runs", type=int, default=10,
                        help="timed runs of each case on the tiny database")
    parser.add_argument("--url", help="libpq URL of the server's maintenance database")
    parser.add_argument("--only-restore", action="store_true",
                        help="measure only the restores, (3) and (4)")
    args = parser.parse_args()
    started = time.monotonic()
    try:
        check_tools()
        with tempfile.TemporaryDirectory(prefix="carabase-floor-") as workdir:
            rows = benchmark(args, Path(workdir))
    except BenchError as error:
        say(f"bench: {error}")
        return 1
    except KeyboardInterrupt:
        return 130
    print("\n".join(rows))
    say(f"(the benchmark took {time.monotonic() - started:.0f} s)")
    return 0


def benchmark(args, workdir: Path) -> list[str]:
    maintenance = server_url(args.url)
    name = f"carabase_floor_{uuid.uuid4().hex[:8]}"
    databases = {
        "source": name, "staging": f"{name}_staging", "bare": f"{name}_bare",
        "pg_restore": f"{name}_pg_restore", "tiny": f"{name}_tiny",
        "tiny_staging": f"{name}_tiny_staging", "tiny_bare": f"{name}_tiny_bare",
    }
    url = {role: on_database(maintenance, db) for role, db in databases.items()}
    base_env = {**os.environ, "PGAPPNAME": "carabase-bench"}
    server_version = psql(maintenance, base_env, "show server_version", "connecting")

    # A throwaway key in a 0600 file of the temporary directory: never a real key.
    key_file = workdir / "master.key"
    with os.fdopen(os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
        f.write(os.urandom(32).hex())
    env = {
        **{key: value for key, value in base_env.items()
           if not key.startswith(("CARABASE_", "HOST_MASTER_KEY"))},
        "HOST_MASTER_KEY_FILE": str(key_file),
        "CARABASE_BACKUP_DIR": str(workdir / "backups"),
        "CARABASE_DEV_DATABASE_URL": url["source"],
        "CARABASE_STAGING_DATABASE_URL": url["staging"],
        # restore checks that staging does not lead to prod: let prod be absent here.
        "CARABASE_PROD_DATABASE_URL": on_database(maintenance, f"{name}_prod_absent"),
        "PYTHONPATH": str(REPO),
    }
    try:
        say(f"creating {name} (pgbench -i -s {args.scale} and the document table)...")
        create_database(maintenance, name, base_env)
        fill_database(url["source"], args.scale, base_env)
        create_database(maintenance, databases["tiny"], base_env)
        psql(url["tiny"], base_env, TINY_TABLE, "creating the tiny database")
        rows = measure(args, workdir, maintenance, databases, url, env)
    finally:
        for db in databases.values():
            for suffix in RESTORE_SUFFIXES:
                drop_database(maintenance, db + suffix, base_env)
    pigz = shutil.which("pigz") is not None
    header = [
        f"Machine: {os.cpu_count()} cores ({cpu_model()}), {platform.system()}"
        f" {platform.release()}; PostgreSQL {server_version};"
        f" {first_line(['pigz', '--version']) if pigz else 'no pigz'};"
        f" ISA-L {'loads' if isal_loads() else 'does not load'};"
        f" Python {platform.python_version()}; load average at the end"
        f" {os.getloadavg()[0]:.2f}.",
        f"Command: `.venv/bin/python bench/floor.py --scale {args.scale} --runs {args.runs}"
        f" --tiny-runs {args.tiny_runs}{' --only-restore' if args.only_restore else ''}`;"
        " medians (min-max) of alternating runs.",
        "",
    ]
    return header + rows


def measure(args, workdir: Path, maintenance: str, databases: dict[str, str],
            url: dict[str, str], env: dict[str, str]) -> list[str]:
    backups = workdir / "backups"
    invoke = [INVOKE, "--search-root", str(REPO)]
    key = crypto.load_key(env)
    sizes: dict[str, int] = {}

    def clear_backups():
        shutil.rmtree(backups, ignore_errors=True)
        os.sync()  # the previous run's writes must not land in the next run's time

    def backup(profile: str | None, task_env: dict[str, str] = env) -> float:
        """One timed invoke backup.dev; its file's size lands in `sizes`."""
        profile_env = {**task_env, "CARABASE_COMPRESSION": profile} if profile else task_env
        elapsed = timed([*invoke, "backup.dev"], profile_env, f"invoke backup.dev ({profile})")
        [made] = backups.glob("dev/*/*.sql.gz.enc")
        sizes[profile or "default"] = made.stat().st_size
        return elapsed

    def dump(source: str) -> str:
        return shlex.join(["pg_dump", *PG_DUMP_OPTIONS, "--dbname", source])

    def restore(file: Path, task_env: dict[str, str], jobs: int | None = None) -> float:
        sessions = [] if jobs is None else ["--jobs", str(jobs)]
        return timed([*invoke, "backup.restore", "staging", str(file), "--yes", "--no-keep",
                      *sessions], task_env, "invoke backup.restore")

    # (1), (2): backups.
    say("(1), (2): the floor and the backups (after one untimed dump, to warm the caches)...")
    run(shell(f"{dump(url['source'])} > /dev/null"), env, "pg_dump")
    sql_size = int(run(shell(f"{dump(url['source'])} | wc -c"), env, "pg_dump | wc -c").stdout)
    backup_times = {} if args.only_restore else alternate(args.runs, {
        "floor": lambda: timed(shell(f"{dump(url['source'])} > /dev/null"), env, "pg_dump"),
        "fast": lambda: backup("fast"),
        "best": lambda: backup("best"),
    }, before=clear_backups)

    # (3): restores of the `best` backup (the default), decrypted once for the bare side.
    say("(3): restores...")
    clear_backups()
    backup("best")
    [made] = backups.glob("dev/*/*.sql.gz.enc")
    backup_file = workdir / "big.sql.gz.enc"
    shutil.move(made, backup_file)
    dump_gz = workdir / "big.sql.gz"
    with open(backup_file, "rb") as src, open(dump_gz, "wb") as dst:
        crypto.decrypt_to(key, src, dst)
    directory_dump = workdir / "big.d"
    run(["pg_dump", "-Fd", "-j", "2", *PG_DUMP_OPTIONS[1:], "-f", str(directory_dump),
         "--dbname", url["source"]], env, "pg_dump -Fd -j 2")
    createdb = ["createdb", f"--maintenance-db={maintenance}"]

    def fresh_targets():
        """No bare database; the staging target exists, empty; no restore leftovers."""
        for scratch in ("bare", "pg_restore"):
            drop_database(maintenance, databases[scratch], env)
        for suffix in RESTORE_SUFFIXES:
            drop_database(maintenance, databases["staging"] + suffix, env)
        create_database(maintenance, databases["staging"], env)
        os.sync()

    restore_times = alternate(args.runs, {
        "bare": lambda: timed(shell(
            f"{shlex.join([*createdb, databases['bare']])}"
            f" && gunzip -c {shlex.quote(str(dump_gz))}"
            f" | psql -X -q -v ON_ERROR_STOP=1 -d {shlex.quote(url['bare'])} > /dev/null"),
            env, "createdb && gunzip | psql"),
        "pg_restore -j 2": lambda: timed(shell(
            f"{shlex.join([*createdb, databases['pg_restore']])}"
            f" && pg_restore -j 2 -d {shlex.quote(url['pg_restore'])}"
            f" {shlex.quote(str(directory_dump))}"), env, "createdb && pg_restore -j 2"),
        **{f"--jobs {jobs}": functools.partial(restore, backup_file, env, jobs)
           for jobs in RESTORE_JOBS},
    }, before=fresh_targets)
    fresh_targets()  # drops the restored copy now rather than at the end

    # (4): the fixed costs, on a tiny database.
    say("(4): the tiny database...")
    tiny_env = {**env, "CARABASE_DEV_DATABASE_URL": url["tiny"],
                "CARABASE_STAGING_DATABASE_URL": url["tiny_staging"]}
    create_database(maintenance, databases["tiny_staging"], env)
    clear_backups()
    backup(None, tiny_env)
    [made] = backups.glob("dev/*/*.sql.gz.enc")
    tiny_file = workdir / "tiny.sql.gz.enc"
    shutil.move(made, tiny_file)
    bare_file = workdir / "tiny-bare.sql.gz.enc"
    encrypt = shlex.join([sys.executable, "-m", "helpers.crypto", "encrypt"])
    decrypt = shlex.join([sys.executable, "-m", "helpers.crypto", "decrypt"])

    def tiny_reset():
        clear_backups()
        drop_database(maintenance, databases["tiny_bare"], env)

    tiny_cases = {
        "bare backup": lambda: timed(shell(
            f"{dump(url['tiny'])} | gzip | {encrypt} > {shlex.quote(str(bare_file))}"),
            tiny_env, "pg_dump | gzip | encrypt"),
        "backup": lambda: backup(None, tiny_env),
        "bare restore": lambda: timed(shell(
            f"{shlex.join([*createdb, databases['tiny_bare']])}"
            f" && {decrypt} < {shlex.quote(str(tiny_file))} | gunzip -c"
            f" | psql -X -q -v ON_ERROR_STOP=1 -d {shlex.quote(url['tiny_bare'])} > /dev/null"),
            tiny_env, "createdb && decrypt | gunzip | psql"),
        "restore": lambda: restore(tiny_file, tiny_env),
        "restore --jobs 1": lambda: restore(tiny_file, tiny_env, 1),
    }
    if args.only_restore:
        del tiny_cases["bare backup"], tiny_cases["backup"]
    tiny_times = alternate(args.tiny_runs, tiny_cases, before=tiny_reset)

    # (5): the processes of one tiny restore and one tiny backup.
    started = {}
    if not args.only_restore:
        say("(5): counting processes...")
        tiny_reset()
        started = {
            "restore": count_processes([*invoke, "backup.restore", "staging", str(tiny_file),
                                        "--yes", "--no-keep"], tiny_env, workdir),
            "backup": count_processes([*invoke, "backup.dev"], tiny_env, workdir),
        }
        clear_backups()

    rows = [
        f"Dump: {sql_size / MIB:.0f} MiB of SQL; backup {sizes['best'] / MIB:.1f} MiB (best);"
        f" tiny backup {sizes['default']} bytes.",
        "",
        "| measurement | median (min-max) | result | target | |",
        "|---|---|---|---|---|",
    ]
    if not args.only_restore:
        rows += backup_rows(backup_times, sizes, sql_size)
    rows += restore_rows(restore_times, sql_size)
    rows += tiny_rows(tiny_times, started)
    return [*rows, "", *scaling_table(restore_times)]


# The sessions (3) restores with, the default (one per core) among them.
RESTORE_JOBS = tuple(sorted({1, 2, 4, os.cpu_count() or 1}))


def backup_rows(times: dict[str, list[float]], sizes: dict[str, int],
                sql_size: int) -> list[str]:
    floor = statistics.median(times["floor"])
    ratio = {profile: statistics.median(times[profile]) / floor for profile in ("fast", "best")}
    fast_label = "ISA-L level 2" if isal_loads() else "level 1: ISA-L does not load"
    best_label = (f"pigz -9, {os.cpu_count()} threads" if shutil.which("pigz")
                  else "gzip -9: no pigz")
    options = " ".join(PG_DUMP_OPTIONS)
    return [
        f"| (1) floor: `pg_dump {options} > /dev/null` | {seconds(times['floor'])}"
        f" | {sql_size / MIB / floor:.0f} MiB/s of SQL | floor | |",
        f"| (2) `invoke backup.dev`, `CARABASE_COMPRESSION=fast` ({fast_label})"
        f" | {seconds(times['fast'])} | {ratio['fast']:.2f}x the floor,"
        f" {sizes['fast'] / MIB:.1f} MiB | at most 1.3x | {verdict(ratio['fast'] <= 1.3)} |",
        f"| (2) `invoke backup.dev`, `CARABASE_COMPRESSION=best` ({best_label})"
        f" | {seconds(times['best'])} | {ratio['best']:.2f}x the floor,"
        f" {sizes['best'] / MIB:.1f} MiB | reference | |",
    ]


def restore_rows(times: dict[str, list[float]], sql_size: int) -> list[str]:
    bare = statistics.median(times["bare"])
    pg_restore = statistics.median(times["pg_restore -j 2"])
    default = f"--jobs {os.cpu_count() or 1}"
    rows = [
        "| (3) bare `createdb X && gunzip -c FILE \\| psql X`"
        f" | {seconds(times['bare'])} | {sql_size / MIB / bare:.0f} MiB/s of SQL | baseline | |",
        "| (3) `createdb X && pg_restore -j 2 -d X DIR` (a `pg_dump -Fd -j 2`)"
        f" | {seconds(times['pg_restore -j 2'])} | {pg_restore / bare:.2f}x the bare restore"
        " | reference | |",
    ]
    for jobs in RESTORE_JOBS:
        median = statistics.median(times[f"--jobs {jobs}"])
        result = f"{median / bare:.2f}x bare, {median / pg_restore:.2f}x pg_restore -j 2"
        target, met = "", ""
        if f"--jobs {jobs}" == default:
            target = "at most 1.0x bare and 1.15x pg_restore -j 2"
            met = verdict(median <= bare and median <= 1.15 * pg_restore)
        label = " (the default here)" if target else ""
        rows.append(f"| (3) `invoke backup.restore staging FILE --yes --no-keep --jobs {jobs}`"
                    f"{label} | {seconds(times[f'--jobs {jobs}'])} | {result} | {target}"
                    f" | {met} |")
    return rows


def tiny_rows(times: dict[str, list[float]], started: dict[str, str]) -> list[str]:
    rows = []
    if "backup" in times:
        overhead = statistics.median(times["backup"]) - statistics.median(times["bare backup"])
        rows += [
            "| (4) tiny: bare `pg_dump \\| gzip \\| python -m helpers.crypto encrypt > file`"
            f" | {seconds(times['bare backup'])} | baseline | | |",
            f"| (4) tiny: `invoke backup.dev` | {seconds(times['backup'])}"
            f" | {overhead:+.2f} s over bare | at most 0.25 s | {verdict(overhead <= 0.25)} |",
        ]
    restore = statistics.median(times["restore"])
    overhead = restore - statistics.median(times["bare restore"])
    one = restore - statistics.median(times["restore --jobs 1"])
    rows += [
        "| (4) tiny: bare `createdb X && python -m helpers.crypto decrypt < file \\| gunzip -c"
        f" \\| psql X` | {seconds(times['bare restore'])} | baseline | | |",
        "| (4) tiny: `invoke backup.restore staging FILE --yes --no-keep`"
        f" | {seconds(times['restore'])} | {overhead:+.2f} s over bare"
        f" | at most 0.4 s | {verdict(overhead <= 0.4)} |",
        "| (4) tiny: the same with `--jobs 1`"
        f" | {seconds(times['restore --jobs 1'])} | the default {one:+.2f} s against it"
        # Both take the same one-session path below 1 MiB: judge within 2% (noise).
        f" | the default no slower | {verdict(one <= 0.02 * restore)} |",
    ]
    for what, count in started.items():
        rows.append(f"| (5) processes a tiny {what} starts | {count} | | fewer is better | |")
    return rows


def scaling_table(times: dict[str, list[float]]) -> list[str]:
    """How the restore scales with its sessions, for README.md."""
    bare = statistics.median(times["bare"])
    rows = ["| restore of the bench database | median | against bare |", "|---|---|---|"]
    for name in ("bare", "pg_restore -j 2", *(f"--jobs {jobs}" for jobs in RESTORE_JOBS)):
        median = statistics.median(times[name])
        rows.append(f"| {name} | {median:.2f} s | {median / bare:.2f}x |")
    return rows


def count_processes(argv: list[str], env: dict[str, str], workdir: Path) -> str:
    """Run `argv` once, untimed, and say how many processes it started: psql counted by
    a wrapper first on PATH (appends a line, then execs the real psql); every program,
    invoke itself included, from strace's execve trace when strace is installed."""
    wrappers, psql_log = workdir / "wrappers", workdir / "psql.log"
    wrappers.mkdir(exist_ok=True)
    psql_log.write_text("")
    wrapper = wrappers / "psql"
    wrapper.write_text(f"#!/bin/sh\necho started >> {shlex.quote(str(psql_log))}\n"
                       f"exec {shlex.quote(shutil.which('psql', path=env.get('PATH')))}"
                       ' "$@"\n')
    wrapper.chmod(0o755)
    counting_env = {**env, "PATH": f"{wrappers}{os.pathsep}{env.get('PATH', '')}"}
    strace = shutil.which("strace")
    trace = workdir / "execve.trace"
    if strace:
        argv = [strace, "-f", "-qq", "-e", "trace=execve", "-e", "signal=none",
                "-o", str(trace), *argv]
    run(argv, counting_env, "the counted run")
    psql_count = len(psql_log.read_text().splitlines())
    if not strace:
        return f"psql {psql_count} (no strace: other programs not counted)"
    # A process can exec several times (the psql wrapper, Debian's pg_wrapper, the real
    # psql): one process each, named by the program it ended as.
    last_program: dict[str, str] = {}
    for line in trace.read_text().splitlines():
        found = re.match(r'(\d+)\s+execve\("([^"]+)".* = 0$', line)
        if found:
            program = Path(found.group(2)).name
            last_program[found.group(1)] = re.sub(r"[\d.]+$", "", program) or program
    programs = collections.Counter(last_program.values())  # python3.11 counted as python
    counts = ", ".join(f"{program} {n}" for program, n in programs.most_common() if n > 0)
    return f"psql {psql_count} (by the wrapper); all {sum(programs.values())}: {counts}"


if __name__ == "__main__":
    sys.exit(main())
