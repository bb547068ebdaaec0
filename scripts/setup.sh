#!/usr/bin/env bash
# From a fresh clone: install into .venv, make sure there is a master key, and take a
# first backup of one env (dev unless told otherwise):
#
#   scripts/setup.sh [dev|staging|prod]
#
# The key is HOST_MASTER_KEY_FILE or HOST_MASTER_KEY when set; otherwise
# ~/.carabase/master.key, created (0600) when it does not exist yet, where the tools find
# it by themselves. The env backed up is recorded in ~/.carabase/env (CARABASE_ENVS), so
# that backup.status checks the envs this machine backs up.
set -euo pipefail
env="${1:-dev}"
case "$env" in  # before installing anything: a typo must not cost a venv and a key
    dev | staging | prod) ;;
    *) echo "scripts/setup.sh: unknown env '$env': expected one of dev, staging, prod" >&2
       exit 1 ;;
esac
repo="$(cd "$(dirname "$0")/.." && pwd)"

if [ ! -x "$repo/.venv/bin/python" ]; then
    python3 -m venv "$repo/.venv"
fi
"$repo/.venv/bin/pip" install --quiet --disable-pip-version-check -e "$repo"
# Compile the tasks and helpers now: every invoke (and every scheduled run) then starts
# about 0.1 s sooner where Python may not write its own cache (PYTHONDONTWRITEBYTECODE,
# a read-only checkout).
"$repo/.venv/bin/python" -m compileall -q "$repo/tasks.py" "$repo/helpers" >/dev/null

key_file="$HOME/.carabase/master.key"
if [ -z "${HOST_MASTER_KEY:-}" ] && [ -z "${HOST_MASTER_KEY_FILE:-}" ] && [ ! -e "$key_file" ]; then
    mkdir -p -m 700 "$HOME/.carabase"
    (umask 077 && "$repo/.venv/bin/python" -c \
        'import secrets; print(secrets.token_hex(32))' > "$key_file")
    echo "Created a new master key in $key_file (mode 0600)."
    echo "Keep a copy somewhere safe and separate (a password manager): without it"
    echo "no backup can ever be read."
fi

"$repo/.venv/bin/invoke" --search-root "$repo" "backup.$env"
"$repo/.venv/bin/python" -m helpers.settings add-env "$env"

cat <<NEXT

Next, in this shell and each new one (invoke is in .venv):
  cd $repo && . .venv/bin/activate
  invoke backup.status
  invoke backup.install-cron $env
NEXT
