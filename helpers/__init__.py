"""Small, pure pieces the shell cannot do, one module a job: configuration (config), the
backup tree (tree), retention and pruning (retention, prune), freshness, the envelope
filter (crypto), failure messages (failures), the restore's file steps (restore), the SQL
of the fresh-database swap (swap), the filter for older --clean dumps (clean_section),
process control (process, lifeline), schedule files (install, schedule, launchd, systemd), progress.

Nothing here imports invoke; tasks.py composes these with pg_dump, gzip and psql. A
failure the user must act on is a `helpers.errors.UserError`: one line, an exit status.
"""
