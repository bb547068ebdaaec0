#!/usr/bin/env bash
# Restore a backup on any machine that has this repository, the same master key and
# a PostgreSQL to restore into:
#
#   scripts/restore-db.sh dev backup.sql.gz.enc
#
# A thin wrapper over `invoke backup.restore <env> <file> [--yes] [--i-know] [--no-keep]
# [--in-place]`: it builds the backup into a fresh database and swaps it in, keeping the
# replaced one as the env's undo copy (`invoke backup.undo-restore <env>` puts it back).
set -euo pipefail
if [ $# -lt 2 ]; then
    echo "usage: $0 <env> <file> [--yes] [--i-know] [--no-keep] [--in-place]" >&2
    exit 2
fi
repo="$(cd "$(dirname "$0")/.." && pwd)"
# On a machine that has only a clone so far, install first.
if [ ! -x "$repo/.venv/bin/invoke" ]; then
    python3 -m venv "$repo/.venv"
    "$repo/.venv/bin/pip" install --quiet --disable-pip-version-check -e "$repo"
fi
exec "$repo/.venv/bin/invoke" --search-root "$repo" backup.restore "$@"
