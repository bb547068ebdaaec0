"""Apply `retention.plan` to an env's backups on disk, one line per backup.

The caller holds the env's lock (unless it is a dry run, which deletes nothing).
"""
from __future__ import annotations

from datetime import datetime, timezone

from helpers import retention, tree
from helpers.errors import UserError


def prune_backups(env: str, dry_run: bool) -> None:
    backups, others = tree.scan_backups(env)
    delete_word = "would delete" if dry_run else "delete"
    width = len(delete_word)
    for path, kind in others:  # never backups: docs/retention.md
        print(f"{'skip':<{width}}  {path.parent.name}/{path.name}  {kind}, not a backup:"
              " left alone")
    if not backups:
        print(f"{env}: no backups, nothing to prune")
        return
    decided = retention.plan([stamp for stamp, _ in backups], datetime.now(timezone.utc))
    for stamp, path in backups:  # oldest first
        label = f"{path.parent.name}/{path.name}"
        if stamp in decided.keep:
            print(f"{'keep':<{width}}  {label}  {decided.why(stamp)}")
            continue
        if not dry_run:
            try:
                path.unlink(missing_ok=True)
            except OSError as error:
                raise UserError(f"prune {env}: cannot delete {path}: {error.strerror}") \
                    from None
            tree.remove_if_empty(path.parent)
        print(f"{delete_word:<{width}}  {label}")
    kept, deleted = len(decided.keep), len(decided.delete)
    if dry_run:
        print(f"{env}: would keep {kept}, would delete {deleted} (dry run: nothing deleted)")
    else:
        print(f"{env}: kept {kept}, deleted {deleted}")
