#!/usr/bin/env python3
"""How fast `invoke backup.push` copies backups off-site, against a bare `rclone copy` of
the same files to the same server.

    .venv/bin/python bench/offsite.py [--files 8] [--mib 64] [--runs 5] [--bwlimit 20M]

Makes a backup tree of FILES backup-named files of MIB MiB of random bytes (backups are
ciphertext: incompressible), starts `rclone serve s3` on 127.0.0.1 with keys made for
the run, and alternates, RUNS times each, into a fresh prefix every time:

  (a) rclone copy <tree>/dev s3:<bucket>/<prefix>/dev        (the bare copy)
  (b) invoke backup.push dev  with CARABASE_OFFSITE=s3:<bucket>/<prefix>
  (c) invoke backup.push dev  again, with everything already there: the fixed cost
      (starting invoke, listing the remote; nothing is copied or read again)

(b) also lists the destination first (it must exist) and reads rclone's per-file
verification from its log. Prints a Markdown table of medians (min-max); bench/README.md
quotes the latest. --bwlimit caps (a), (b) and (c) alike at an uplink's speed (rclone's
RCLONE_BWLIMIT), as a real off-site copy would be. Everything it makes is removed at
the end.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from helpers import retention  # noqa: E402
from tests.offsite_support import S3Server, rclone, write_config  # noqa: E402
from tests.support import INVOKE  # noqa: E402


def make_tree(root: Path, files: int, mib: int) -> int:
    now = datetime.now(timezone.utc).replace(microsecond=0)
    total = 0
    for index in range(files):
        stamp = now - timedelta(days=index)
        path = root / "dev" / retention.date_dir_name(stamp) / retention.backup_name(stamp)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as out:
            for _ in range(mib):
                out.write(os.urandom(1 << 20))
        total += path.stat().st_size
    return total


def timed(command: list[str], environ: dict[str, str]) -> float:
    started = time.monotonic()
    result = subprocess.run(command, env=environ, capture_output=True, text=True)
    elapsed = time.monotonic() - started
    if result.returncode != 0:
        sys.exit(f"failed: {' '.join(command)}: {result.stderr.strip()[-500:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--bwlimit", default=None, help="e.g. 20M: an uplink's speed")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="carabase-bench-offsite-"))
    server = S3Server(work / "backing", work / "server.log")
    try:
        total = make_tree(work / "backups", args.files, args.mib)
        server.start()
        server.bucket("bench")
        config = write_config(work / "rclone.conf", server.config("bench"))
        environ = {name: value for name, value in os.environ.items()
                   if not name.startswith(("RCLONE_", "CARABASE_", "HOST_MASTER_KEY"))}
        environ.update(RCLONE_CONFIG=str(config), CARABASE_BACKUP_DIR=str(work / "backups"))
        if args.bwlimit:
            environ["RCLONE_BWLIMIT"] = args.bwlimit
        times: dict[str, list[float]] = {"bare": [], "push": [], "again": []}
        for run in range(args.runs):
            order = ["bare", "push"] if run % 2 == 0 else ["push", "bare"]
            for case in order:
                prefix = f"bench:bench/{case}{run}"
                if case == "bare":
                    command = [rclone(), "copy", str(work / "backups" / "dev"), f"{prefix}/dev"]
                    times[case].append(timed(command, environ))
                else:
                    command = [INVOKE, "--search-root", str(REPO), "backup.push", "dev"]
                    times[case].append(timed(command, {**environ, "CARABASE_OFFSITE": prefix}))
                    times["again"].append(timed(command, {**environ,
                                                          "CARABASE_OFFSITE": prefix}))
                shutil.rmtree(work / "backing" / "bench" / f"{case}{run}", ignore_errors=True)
        version = subprocess.run([rclone(), "version"], capture_output=True, text=True)
        print(f"{args.files} files x {args.mib} MiB = {total / (1 << 20):.0f} MiB,"
              f" {args.runs} runs each, alternating;"
              f" bandwidth limit {args.bwlimit or 'none'}; {version.stdout.splitlines()[0]},"
              f" {platform.python_implementation()} {platform.python_version()},"
              f" {os.cpu_count()} cores")
        print()
        print("| measurement | median (min-max) | throughput | vs bare |")
        print("|---|---|---|---|")
        bare = statistics.median(times["bare"])
        for case, label in (("bare", "(a) bare `rclone copy`"),
                            ("push", "(b) `invoke backup.push dev`"),
                            ("again", "(c) the same push again: nothing to copy")):
            median = statistics.median(times[case])
            spread = f"{min(times[case]):.2f}-{max(times[case]):.2f}"
            rate = total / (1 << 20) / median
            rate_text = f"{rate:.0f} MiB/s" if case != "again" else "-"
            print(f"| {label} | {median:.2f} s ({spread}) | {rate_text}"
                  f" | {median / bare:.2f}x |")
        best = min(times["push"]) / min(times["bare"])
        print(f"\nbest run against best run: push {best:.2f}x the bare copy")
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
