#!/usr/bin/env python3
"""What listing the roles a dump names costs the restore's one decrypt-and-check pass,
and what the filter stage that leaves their statements out costs the apply.

    .venv/bin/python bench/dump_roles.py [--scale N] [--runs N] [--url URL]

Creates a pgbench database (pgbench -i -s SCALE) with grants to a role, dumps it as a
backup would (plain SQL, owners and grants kept), then measures, alternating the runs
and reporting medians, on the SQL held in memory:

  (h) inflating the gzip stream (helpers.verify.GzipChecker, as the restore's check
      does) with no sink, against the same with helpers.dumproles.DumpRoles as its sink
  (i) `cat` of the SQL, against `python -m helpers.dumproles --lacks=ROLE` (the stage the
      apply adds only when a role must be left out)
  (j) the drill's check pass: inflating with DumpRoles as sink and
      helpers.dumpscan.DumpScanner counting COPY rows on its reader's pieces

The database and the temporary files are removed at the end. The server: --url, else
the one the PG* variables name.
"""
from __future__ import annotations

import argparse
import gzip
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from helpers import dumproles, dumpscan, verify  # noqa: E402


def timed(action) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def inflate(compressed: bytes, sink=None) -> None:
    checker = verify.GzipChecker(sink or (lambda sql: None))
    for start in range(0, len(compressed), 1 << 20):
        checker.feed(compressed[start:start + (1 << 20)])
    assert checker.finish() is None


def with_roles(compressed: bytes) -> None:
    named = dumproles.DumpRoles()
    inflate(compressed, named.feed)
    named.finish()


def drill_check(compressed: bytes) -> None:
    scanner = dumpscan.DumpScanner()
    named = dumproles.DumpRoles(also=scanner.piece)  # as tasks.run_drill does
    inflate(compressed, named.feed)
    named.finish()
    scanner.finish()


def filter_stage(path: str, role: str) -> None:
    with open(path, "rb") as sql:
        subprocess.run([sys.executable, "-m", "helpers.dumproles", f"--lacks={role}"],
                       stdin=sql,
                       stdout=subprocess.DEVNULL, check=True, cwd=REPO,
                       env={**os.environ, "PYTHONPATH": str(REPO)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=10)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--url", default=None)
    options = parser.parse_args()
    name = f"bench_roles_{uuid.uuid4().hex[:8]}"
    admin = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1"]
    url = (options.url.rsplit("/", 1)[0] + "/" + name) if options.url else name
    maintenance = options.url or "postgres"
    subprocess.run([*admin, "-d", maintenance, "-c", f'create database "{name}"'], check=True)
    try:
        subprocess.run(["pgbench", "-i", "-q", "-s", str(options.scale), url], check=True,
                       capture_output=True)
        subprocess.run([*admin, "-d", url, "-c", f"create role {name}_reader; grant select"
                        f" on all tables in schema public to {name}_reader"], check=True)
        sql = subprocess.run(["pg_dump", "--format=plain", "--quote-all-identifiers", url],
                             check=True, capture_output=True).stdout
        compressed = gzip.compress(sql, 1)
        with tempfile.NamedTemporaryFile() as dump:
            dump.write(sql)
            dump.flush()
            runs: dict[str, list[float]] = {key: [] for key in "abcde"}
            for _ in range(options.runs):
                runs["a"].append(timed(lambda: inflate(compressed)))
                runs["b"].append(timed(lambda: with_roles(compressed)))
                runs["c"].append(timed(lambda: subprocess.run(
                    ["cat", dump.name], stdout=subprocess.DEVNULL, check=True)))
                runs["d"].append(timed(lambda: filter_stage(dump.name, f"{name}_reader")))
                runs["e"].append(timed(lambda: drill_check(compressed)))
        print(f"dump: {len(sql) / 2**20:.0f} MiB of SQL, {options.runs} runs each")
        labels = {"a": "(h) inflate and check, no sink",
                  "b": "(h) inflate and check, DumpRoles as sink",
                  "c": "(i) cat of the SQL",
                  "d": "(i) python -m helpers.dumproles --lacks=ROLE",
                  "e": "(j) the drill's check pass (roles and rows)"}
        for key, label in labels.items():
            median = statistics.median(runs[key])
            rate = len(sql) / 2**20 / median
            print(f"{label:45} {median:6.2f} s ({min(runs[key]):.2f}-{max(runs[key]):.2f})"
                  f"  {rate:6.0f} MiB/s")
    finally:
        subprocess.run([*admin, "-d", maintenance, "-c",
                        f'drop database if exists "{name}" with (force)'], check=False)
        subprocess.run([*admin, "-d", maintenance, "-c", f"drop role if exists {name}_reader"],
                       check=False)


if __name__ == "__main__":
    main()
