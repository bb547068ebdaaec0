#!/usr/bin/env bash
# The benchmark, from a fresh clone in one command (see bench/README.md):
#
#   bench/run.sh [--scale N] [--runs N] [--url postgresql://user@host:port/postgres]
#
# Installs the project into .venv the first time, then runs bench/run.py with it.
# bench/floor.py (backup and restore against the bare pg_dump / psql floor) runs with
# the same .venv: .venv/bin/python bench/floor.py [--scale N] [--runs N] [--url URL]
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
if [ ! -x "$repo/.venv/bin/invoke" ]; then
    python3 -m venv "$repo/.venv"
    "$repo/.venv/bin/pip" install --quiet --disable-pip-version-check -e "$repo"
fi
# As scripts/setup.sh does: what is measured starts from compiled tasks and helpers.
"$repo/.venv/bin/python" -m compileall -q "$repo/tasks.py" "$repo/helpers" >/dev/null
exec "$repo/.venv/bin/python" "$repo/bench/run.py" "$@"
