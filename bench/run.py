#!/usr/bin/env python3
"""How fast backups and restores are, against the plain shell pipelines they replace.

    bench/run.sh                                    # scale 10, 5 runs of each: ~4.5 minutes
    bench/run.sh --scale 50 --runs 5 --url postgresql://me@db:5432/postgres

(bench/run.sh installs into .venv on a fresh clone, then runs this file with
.venv/bin/python, which is also how to run it directly.)

Creates a database of its own (pgbench -i -s SCALE, plus a text- and jsonb-heavy table of
10,000 rows per scale unit), then measures, alternating the runs of what it compares
and reporting medians:

  (a) the original pipeline alone: pg_dump | gzip -9 > file (same pg_dump options)
  (b) invoke backup.dev on the same database: with the default compressor (pigz when
      installed), with CARABASE_COMPRESSOR=gzip, and on a terminal (progress line)
  (c) the encrypt and decrypt filters on a 1 GiB file, against openssl enc -aes-256-ctr
  (d) the filters' peak memory (GNU time's maximum RSS) at 10 MiB and at 1 GiB of input
  (e) invoke backup.restore against a bare gunzip | psql of the same dump into an empty
      database, and against pg_restore -j 2 of a pg_dump -Fd -j 2 (--only-restore: this
      one alone)

and prints a Markdown table (bench/README.md quotes the latest). Everything it makes (the
databases, a temporary directory, a random key) is removed at the end.

The server: --url, else the one the PG* variables name, else postgres@127.0.0.1:5432.
Needs pg_dump, psql, pgbench, gzip, openssl and GNU time (/usr/bin/time; on Debian
`apt-get install time`); pigz is used when installed. It installs nothing itself: it
says what is missing and stops.
"""
from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from helpers import crypto  # noqa: E402  (needs REPO on sys.path)
from tasks import PG_DUMP_OPTIONS  # noqa: E402  (the very options the backup uses)

INVOKE = str(Path(sys.executable).parent / "invoke")
GNU_TIME = "/usr/bin/time"
REQUIRED_TOOLS = ("pg_dump", "psql", "pgbench", "gzip", "openssl")
MIB = 1024 * 1024
FILTER_SIZE = 1024 * MIB
SMALL_FILTER_SIZE = 10 * MIB

# A text- and jsonb-heavy table: prose-like text (words drawn from a small vocabulary,
# some non-ASCII) and nested JSON, which compress the way application data does: slowly.
DOCUMENT_TABLE = r"""
select setseed(0.42);
create table document (
    id bigserial primary key,
    title text not null,
    body text not null,
    attributes jsonb not null,
    created timestamptz not null
);
with vocabulary as (
    select regexp_split_to_array(
        'the a of to and in is it that for on with as was by at from this be are have or not '
        'backup restore database tenant invoice customer report quarterly payment account '
        'balance order shipping address city street number total amount due paid refund '
        'note comment review approved pending rejected draft final café naïve Zürich 東京 '
        'meeting schedule project deadline budget forecast revenue expense contract renewal',
        ' ') as words
)
insert into document (title, body, attributes, created)
select
    initcap(words[1 + (i * 7) % 60]) || ' ' || words[1 + (i * 13) % 60] || ' #' || i,
    (select string_agg(words[1 + floor(random() * 60)::int], ' ' order by n)
       from generate_series(1, 80 + i % 120) n),
    jsonb_build_object(
        'owner', 'user' || (i % 997) || '@example.com',
        'score', round((random() * 100)::numeric, 2),
        'tags', jsonb_build_array(words[1 + i % 60], words[1 + (i * 3) % 60]),
        'address', jsonb_build_object('city', 'City ' || i % 500,
                                      'zip', lpad((i * 37 % 99999)::text, 5, '0'))),
    timestamptz '2024-01-01' + i * interval '1 minute'
from vocabulary, generate_series(1, :rows) i;
vacuum analyze;
"""


class BenchError(Exception):
    """Something the benchmark needs is missing or failed: one line for the person."""


# --- running and timing ---------------------------------------------------------------


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run(argv: list[str], env: dict[str, str], what: str, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, env=env, capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise BenchError(f"{what} failed: {detail[-1] if detail else result.returncode}")
    return result


def shell(script: str) -> list[str]:
    return ["bash", "-c", "set -o pipefail; " + script]


def timed(argv: list[str], env: dict[str, str], what: str, **kwargs) -> float:
    started = time.perf_counter()
    run(argv, env, what, **kwargs)
    return time.perf_counter() - started


def timed_on_terminal(argv: list[str], env: dict[str, str], what: str) -> float:
    """Like `timed`, with a pseudo-terminal as stdin, stdout and stderr: what a person
    at a terminal gets (the progress line). The terminal's output is read and dropped."""
    controller, terminal = os.openpty()
    drained = threading.Thread(target=drain, args=(controller,), daemon=True)
    drained.start()
    try:
        started = time.perf_counter()
        process = subprocess.Popen(argv, env=env, stdin=terminal, stdout=terminal,
                                   stderr=terminal)
        os.close(terminal)
        code = process.wait()
        elapsed = time.perf_counter() - started
        drained.join()
    finally:
        os.close(controller)
    if code != 0:
        raise BenchError(f"{what} failed on a terminal (exit status {code})")
    return elapsed


def drain(fd: int) -> None:
    try:
        while os.read(fd, 65536):
            pass
    except OSError:  # EIO: every process holding the terminal has closed it
        pass


def alternate(runs: int, cases: dict, before=None) -> dict[str, list[float]]:
    """Run each case once per round, in turn, `runs` rounds: a slow spell of the machine
    then hurts every case alike. Each round starts with the next case, so that none is
    always first (after the previous round's writeback). `before()` runs, untimed,
    before every timed run."""
    times: dict[str, list[float]] = {name: [] for name in cases}
    names = list(cases)
    for round_number in range(1, runs + 1):
        shift = (round_number - 1) % len(names)
        for name in names[shift:] + names[:shift]:
            measure = cases[name]
            if before:
                before()
            times[name].append(measure())
            say(f"  {name}: run {round_number}/{runs}: {times[name][-1]:.2f} s")
    return times


def peak_memory_mib(script: str, env: dict[str, str], workdir: Path, what: str) -> float:
    """Maximum resident set size of the first command of `script`, via GNU time."""
    report = workdir / "time.out"
    run(shell(f"{GNU_TIME} -f %M -o {report} {script}"), env, what)
    return int(report.read_text().split()[-1]) / 1024


# --- the database ---------------------------------------------------------------------


def server_url(option: str | None) -> str:
    if option:
        return option
    if os.environ.get("PGHOST") or os.environ.get("PGPORT"):
        return "postgresql:///postgres"  # libpq takes the rest from PG*
    return "postgresql://postgres@127.0.0.1:5432/postgres"


def on_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


def psql(url: str, env: dict[str, str], sql: str, what: str, *options: str) -> str:
    return run(["psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", *options, "-d", url,
                "-f", "-"], env, what, input=sql).stdout.strip()


def create_database(url: str, name: str, env: dict[str, str]) -> None:
    psql(url, env, f'create database "{name}"', f"create database {name}")


def drop_database(url: str, name: str, env: dict[str, str]) -> None:
    subprocess.run(["psql", "-X", "-q", "-d", url, "-c",
                    f'drop database if exists "{name}" with (force)'],
                   env=env, capture_output=True)


def fill_database(url: str, scale: int, env: dict[str, str]) -> None:
    run(["pgbench", "-i", "-q", "-s", str(scale), url], env, "pgbench -i")
    psql(url, env, DOCUMENT_TABLE, "creating the document table", "-v", f"rows={10_000 * scale}")
    # Write the load out now rather than during the first timed runs (needs superuser or
    # pg_checkpoint; without, the warm-up dump below has to do).
    subprocess.run(["psql", "-X", "-q", "-d", url, "-c", "checkpoint"], env=env,
                   capture_output=True)


# --- the machine ----------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def first_line(argv: list[str]) -> str:
    try:
        result = subprocess.run(argv, capture_output=True, text=True)
    except OSError:
        return "not installed"
    return ((result.stdout or result.stderr).strip().splitlines() or ["?"])[0]


def check_tools() -> None:
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if not os.access(INVOKE, os.X_OK):
        missing.append("invoke (run this with the project's .venv/bin/python)")
    if "GNU" not in first_line([GNU_TIME, "--version"]):
        missing.append(f"GNU time at {GNU_TIME} (Debian/Ubuntu: apt-get install time)")
    if missing:
        raise BenchError("missing: " + "; ".join(missing))


# --- the report -----------------------------------------------------------------------


def seconds(values: list[float]) -> str:
    """The median, and the spread: how far to trust a difference of a few percent."""
    return f"{statistics.median(values):.2f} s ({min(values):.2f}-{max(values):.2f})"


def verdict(ok: bool) -> str:
    return "met" if ok else "**not met**"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=int, default=10,
                        help="pgbench scale; the document table gets 10,000 rows per unit")
    parser.add_argument("--runs", type=int, default=5, help="timed runs of each case")
    parser.add_argument("--url", help="libpq URL of the server's maintenance database")
    parser.add_argument("--only-restore", action="store_true",
                        help="measure only (e), the restores (a minute or two)")
    args = parser.parse_args()
    try:
        check_tools()
        with tempfile.TemporaryDirectory(prefix="carabase-bench-") as workdir:
            rows = benchmark(args, Path(workdir))
    except BenchError as error:
        say(f"bench: {error}")
        return 1
    except KeyboardInterrupt:
        return 130
    print("\n".join(rows))
    return 0


def benchmark(args, workdir: Path) -> list[str]:
    maintenance = server_url(args.url)
    name = f"carabase_bench_{uuid.uuid4().hex[:8]}"
    restore_name = f"{name}_restore"
    source, target = on_database(maintenance, name), on_database(maintenance, restore_name)
    base_env = {**os.environ, "PGAPPNAME": "carabase-bench"}
    server_version = psql(maintenance, base_env, "show server_version", "connecting")
    pigz = shutil.which("pigz") is not None
    threads = os.cpu_count() or 1

    # A throwaway key, made now and gone with this process: never a real key.
    invoke_env = {
        **{key: value for key, value in base_env.items()
           if not key.startswith(("CARABASE_", "HOST_MASTER_KEY"))},
        "HOST_MASTER_KEY": os.urandom(32).hex(),
        "CARABASE_BACKUP_DIR": str(workdir / "backups"),
        "CARABASE_DEV_DATABASE_URL": source,
        "CARABASE_STAGING_DATABASE_URL": target,
        # restore checks that staging does not lead to prod: let prod be absent here.
        "CARABASE_PROD_DATABASE_URL": on_database(maintenance, f"{name}_prod_absent"),
        "PYTHONPATH": str(REPO),
    }
    try:
        say(f"creating {name} (pgbench -i -s {args.scale} and the document table)...")
        create_database(maintenance, name, base_env)
        fill_database(source, args.scale, base_env)
        if args.only_restore:
            rows = measure_restores(args, workdir, source, target, maintenance, restore_name,
                                    invoke_env)[3]
        else:
            rows = measure(args, workdir, source, target, maintenance, restore_name,
                           invoke_env, pigz, threads)
    finally:
        drop_database(maintenance, name, base_env)
        drop_database(maintenance, restore_name, base_env)
    header = [
        f"Machine: {os.cpu_count()} cores ({cpu_model()}), {platform.system()}"
        f" {platform.release()}; PostgreSQL {server_version};"
        f" {first_line(['pigz', '--version']) if pigz else 'no pigz'};"
        f" Python {platform.python_version()}; load average at the end"
        f" {os.getloadavg()[0]:.2f}.",
        f"Command: `bench/run.sh --scale {args.scale} --runs {args.runs}`;"
        f" medians of {args.runs} alternating runs.",
        "",
    ]
    return header + rows


def measure(args, workdir: Path, source: str, target: str, maintenance: str,
            restore_name: str, env: dict[str, str], pigz: bool, threads: int) -> list[str]:
    backups = workdir / "backups"
    baseline_file = workdir / "baseline.sql.gz"
    invoke = [INVOKE, "--search-root", str(REPO)]
    pg_dump = shlex.join(["pg_dump", *PG_DUMP_OPTIONS, "--dbname", source])
    encrypt = shlex.join([sys.executable, "-m", "helpers.crypto", "encrypt"])
    def clear_backups():
        shutil.rmtree(backups, ignore_errors=True)
        os.sync()  # the previous run's writes must not land in the next run's time

    say("(a), (b): backups (after one untimed dump, to warm the caches)...")
    run(shell(f"{pg_dump} > /dev/null"), env, "pg_dump")
    cases = {
        "a": lambda: timed(shell(f"{pg_dump} | gzip -9 > {baseline_file}"), env,
                           "pg_dump | gzip -9"),
        "a_encrypted": lambda: timed(
            shell(f"{pg_dump} | gzip -9 | {encrypt} > {baseline_file}"), env,
            "pg_dump | gzip -9 | encrypt"),
        "b": lambda: timed([*invoke, "backup.dev"], env, "invoke backup.dev"),
        "b_gzip": lambda: timed([*invoke, "backup.dev"],
                                {**env, "CARABASE_COMPRESSOR": "gzip"},
                                "invoke backup.dev with gzip"),
        "b_tty": lambda: timed_on_terminal([*invoke, "backup.dev"], env,
                                           "invoke backup.dev"),
    }
    backup_times = alternate(args.runs, cases, before=clear_backups)
    clear_backups()
    dump_size, dump_gz, backup_size, restore_rows = measure_restores(
        args, workdir, source, target, maintenance, restore_name, env)

    say("(c), (d): the filters...")
    filter_rows = measure_filters(args.runs, workdir, env)

    a = statistics.median(backup_times["a"])
    a_encrypted = statistics.median(backup_times["a_encrypted"])
    b = statistics.median(backup_times["b"])
    b_gzip = statistics.median(backup_times["b_gzip"])
    b_tty = statistics.median(backup_times["b_tty"])
    compressor = f"pigz -9, {threads} threads" if pigz else "gzip -9: pigz not installed"
    rows = [
        f"Dump: {dump_size / MIB:.0f} MiB of SQL, {dump_gz.stat().st_size / MIB:.0f} MiB"
        f" gzipped, {backup_size / MIB:.0f} MiB encrypted.",
        "",
        "| measurement | median (min-max) | result | target | |",
        "|---|---|---|---|---|",
        f"| (a) `pg_dump \\| gzip -9 > file` | {seconds(backup_times['a'])}"
        f" | {dump_size / MIB / a:.0f} MiB/s of SQL | baseline | |",
        "| (a) + encryption: `pg_dump \\| gzip -9 \\| python -m helpers.crypto encrypt > file`"
        f" | {seconds(backup_times['a_encrypted'])}"
        f" | {(a_encrypted / a - 1) * 100:+.1f}% over (a)"
        f" | encryption adds at most 3% | {verdict(a_encrypted <= 1.03 * a)} |",
        f"| (b) `invoke backup.dev` ({compressor}) | {seconds(backup_times['b'])}"
        f" | {a / b:.2f}x faster than (a) | at least 1.5x faster"
        f" | {verdict(a / b >= 1.5) if pigz else 'not measured: no pigz'} |",
        "| (b) `invoke backup.dev`, `CARABASE_COMPRESSOR=gzip`"
        f" | {seconds(backup_times['b_gzip'])}"
        f" | {(b_gzip / a - 1) * 100:+.1f}% over (a) | (whole task: see the notes) | |",
        "| (b) `invoke backup.dev` on a terminal (progress line)"
        f" | {seconds(backup_times['b_tty'])}"
        f" | {(b_tty / b - 1) * 100:+.1f}% over (b) | no meaningful overhead | |",
        *filter_rows,
        *restore_rows[3:],
    ]
    return rows


def measure_restores(args, workdir: Path, source: str, target: str, maintenance: str,
                     restore_name: str, env: dict[str, str]):
    """(e): invoke backup.restore (fresh database, swap) against a bare gunzip | psql
    into an empty database, and against pg_restore -j 2 of a pg_dump -Fd -j 2 of the
    same database. Returns the dump's sizes and the table rows."""
    backups = workdir / "backups"
    invoke = [INVOKE, "--search-root", str(REPO)]
    shutil.rmtree(backups, ignore_errors=True)
    run([*invoke, "backup.dev"], env, "invoke backup.dev")  # the one to restore, untimed
    [backup] = backups.glob("dev/*/*.sql.gz.enc")
    backup_size = backup.stat().st_size
    dump_gz = workdir / "dump.sql.gz"
    with open(backup, "rb") as src, open(dump_gz, "wb") as dst:
        crypto.decrypt_to(bytes.fromhex(env["HOST_MASTER_KEY"]), src, dst)
    dump_size = int(run(shell(f"gzip -dc {dump_gz} | wc -c"), env, "measuring the dump").stdout)
    directory_dump = workdir / "dump.d"
    run(["pg_dump", "-Fd", "-j", "2", "--no-owner", "--no-privileges", "-f",
         str(directory_dump), "--dbname", source], env, "pg_dump -Fd -j 2")

    say("(e): restores...")

    def fresh_target():
        for name in (restore_name, f"{restore_name}__carabase_undo",
                     f"{restore_name}__carabase_restoring"):
            drop_database(maintenance, name, env)
        create_database(maintenance, restore_name, env)
        os.sync()

    restore_times = alternate(args.runs, {
        "e_bare": lambda: timed(shell(f"gunzip -c {dump_gz} | psql -X -q -v ON_ERROR_STOP=1"
                                      f" -d {shlex.quote(target)} > /dev/null"),
                                env, "gunzip | psql"),
        "e": lambda: timed([*invoke, "backup.restore", "staging", str(backup), "--yes"], env,
                           "invoke backup.restore"),
        "e_pg_restore": lambda: timed(["pg_restore", "-j", "2", "--no-owner", "--no-privileges",
                                       "-d", target, str(directory_dump)], env,
                                      "pg_restore -j 2"),
    }, before=fresh_target)
    for name in (f"{restore_name}__carabase_undo", f"{restore_name}__carabase_restoring"):
        drop_database(maintenance, name, env)
    shutil.rmtree(backups, ignore_errors=True)
    e = statistics.median(restore_times["e"])
    e_bare = statistics.median(restore_times["e_bare"])
    e_pg_restore = statistics.median(restore_times["e_pg_restore"])
    rows = [
        f"Dump: {dump_size / MIB:.0f} MiB of SQL, {dump_gz.stat().st_size / MIB:.0f} MiB"
        f" gzipped, {backup_size / MIB:.0f} MiB encrypted.",
        "",
        "| measurement | median (min-max) | result | target | |",
        "|---|---|---|---|---|",
        f"| (e) bare `gunzip -c \\| psql` into an empty database"
        f" | {seconds(restore_times['e_bare'])}"
        f" | {dump_size / MIB / e_bare:.0f} MiB/s of SQL | baseline | |",
        f"| (e) `invoke backup.restore` (check, fresh database, swap, undo copy kept)"
        f" | {seconds(restore_times['e'])}"
        f" | {e / e_bare:.2f}x the bare restore | at most 1.1x | {verdict(e <= 1.1 * e_bare)} |",
        f"| (e) `pg_restore -j 2` of a `pg_dump -Fd -j 2`"
        f" | {seconds(restore_times['e_pg_restore'])}"
        f" | {e_pg_restore / e_bare:.2f}x the bare restore | reference | |",
    ]
    return dump_size, dump_gz, backup_size, rows


def measure_filters(runs: int, workdir: Path, env: dict[str, str]) -> list[str]:
    """(c) throughput against openssl enc -aes-256-ctr, (d) peak memory."""
    plain, sealed, out = workdir / "1g.bin", workdir / "1g.enc", workdir / "out"
    small_plain, small_sealed = workdir / "10m.bin", workdir / "10m.enc"
    for path, size in ((plain, FILTER_SIZE), (small_plain, SMALL_FILTER_SIZE)):
        with open(path, "wb") as file:
            for _ in range(size // MIB):
                file.write(os.urandom(MIB))
    filter_cmd = f"{sys.executable} -m helpers.crypto"
    for source, sealed_path in ((plain, sealed), (small_plain, small_sealed)):
        run(shell(f"{filter_cmd} encrypt < {source} > {sealed_path}"), env, "encrypt")
    # openssl wants the key in its arguments: a separate throwaway key, not the one above.
    openssl_key, openssl_iv = os.urandom(32).hex(), os.urandom(16).hex()

    def settle():  # start each run with no dirty pages of the previous one to write back
        out.unlink(missing_ok=True)
        os.sync()

    times = alternate(runs, {
        "encrypt": lambda: timed(shell(f"{filter_cmd} encrypt < {plain} > {out}"), env,
                                 "encrypt"),
        "decrypt": lambda: timed(shell(f"{filter_cmd} decrypt < {sealed} > {out}"), env,
                                 "decrypt"),
        "openssl": lambda: timed(["openssl", "enc", "-aes-256-ctr", "-K", openssl_key,
                                  "-iv", openssl_iv, "-in", str(plain), "-out", str(out)],
                                 env, "openssl enc"),
    }, before=settle)
    out.unlink(missing_ok=True)
    openssl = statistics.median(times["openssl"])
    rate = {name: FILTER_SIZE / MIB / statistics.median(values) for name, values in times.items()}

    memory = {}
    for name, script in (
            ("encrypt", f"{filter_cmd} encrypt < {{plain}} > /dev/null"),
            ("decrypt to a file", f"{filter_cmd} decrypt < {{sealed}} > {out}"),
            ("decrypt to a pipe", f"{filter_cmd} decrypt < {{sealed}} | cat > /dev/null")):
        memory[name] = [
            peak_memory_mib(script.format(plain=p, sealed=s), env, workdir, name)
            for p, s in ((small_plain, small_sealed), (plain, sealed))]
    out.unlink(missing_ok=True)

    rows = [
        f"| (c) `openssl enc -aes-256-ctr`, 1 GiB file to file | {seconds(times['openssl'])}"
        f" | {rate['openssl']:.0f} MiB/s | reference | |",
    ]
    for name in ("encrypt", "decrypt"):
        ratio = openssl / statistics.median(times[name])
        rows.append(f"| (c) `python -m helpers.crypto {name}`, 1 GiB file to file"
                    f" | {seconds(times[name])} | {rate[name]:.0f} MiB/s, {ratio:.2f}x openssl"
                    f" | at least 0.5x | {verdict(ratio >= 0.5)} |")
    for name, (small, large) in memory.items():
        flat = abs(large - small) <= 2  # MiB: allocator noise, not growth
        rows.append(f"| (d) peak memory, {name}: 10 MiB / 1 GiB in | {small:.0f} / {large:.0f} MiB"
                    f" | {'flat' if flat else 'grows'} | at most 64 MB, flat"
                    f" | {verdict(flat and large * MIB <= 64e6)} |")
    return rows


if __name__ == "__main__":
    sys.exit(main())
