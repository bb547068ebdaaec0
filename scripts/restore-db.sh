#!/usr/bin/env bash
# Restore a backup on any machine that has this repository, the same master key and
# a PostgreSQL to restore into:
#
#   HOST_MASTER_KEY_FILE=~/.carabase/master.key scripts/restore-db.sh dev backup.sql.gz.enc
#
# A thin wrapper over `invoke backup.restore <env> <file> [--yes] [--i-know]`.
set -euo pipefail
if [ $# -lt 2 ]; then
    echo "usage: $0 <env> <file> [--yes] [--i-know]" >&2
    exit 2
fi
repo="$(cd "$(dirname "$0")/.." && pwd)"
invoke="$repo/.venv/bin/invoke"
if [ ! -x "$invoke" ]; then
    invoke="$(command -v invoke || true)"
fi
if [ -z "$invoke" ]; then
    echo "restore-db.sh: invoke not found: run 'scripts/setup.sh' in $repo first" >&2
    exit 1
fi
exec "$invoke" --search-root "$repo" backup.restore "$@"
