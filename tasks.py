"""Carabase backups: encrypted pg_dump backups per env, retention, status, restore, schedule.

    invoke backup.prod                         one encrypted backup of prod
    invoke backup.prune prod [--dry-run]       apply retention to prod's backups
    invoke backup.status [--json]              freshness of every env
    invoke backup.restore dev FILE [--yes]     restore a backup into dev's database
    invoke backup.undo-restore dev [--yes]     swap back what the last restore replaced
    invoke backup.push prod                    copy prod's backups off-site (CARABASE_OFFSITE)
    invoke backup.fetch prod latest|STAMP      download an off-site backup into the tree
    invoke backup.verify prod [--all]          authenticate + gzip-check backups, no plaintext
    invoke backup.drill prod [--file FILE]     restore into a scratch database, prove, drop
    invoke backup.nightly prod                 what the schedule runs: backup, push, prune, drill
    invoke backup.install-cron prod            run backup.nightly prod at 03:17
    invoke backup.uninstall-cron prod          remove that schedule
    invoke backup.pitr-setup prod [--restart]  WAL archiving to pgBackRest (server on this machine)
    invoke backup.pitr-backup prod             a pgBackRest base backup, copied off-site
    invoke backup.pitr-restore prod --to T --data-dir DIR --port P   a new cluster at T
    invoke backup.pitr-drill prod              restore to now into a scratch cluster, check

This file is the map: every task, and the shell pipeline it runs (pg_dump, gzip/pigz,
psql). What is not composing or running a command lives in `helpers/`: configuration
(config), the backup tree (tree), retention and pruning (retention, prune), freshness,
process control (process), the envelope (crypto), schedule files (install, launchd,
systemd), off-site copies (offsite: rclone is run here, its output read there),
verifying (verify), the drill's dump counts and judgement (dumpscan, drill), the nightly
job's pings and log (notify, cronlog), PITR's config, passphrase and judgements (pitr).
Sections: composing commands, backup, restore, prune and status, off-site copies,
schedule, verify and drill, point-in-time recovery, nightly, the namespace.
See README.md.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import invoke
from invoke import Collection, Exit

from helpers import (cronlog, drill, dumproles, dumpscan, freshness, install, launchd, notify,
                     offsite, pitr, progress, retention, schedule, settings, swap, systemd,
                     verify)
from helpers.config import (ENVS, Database, check_env, compress_threads, compression_profile,
                            compression_program, configured_envs, database, drill_database,
                            env_dir, isal_loads, lock_wait_timeout, parse_database_url,
                            require_key, restore_jobs, restore_sessions, user_path)
from helpers.errors import UserError
from helpers.failures import explain_pipeline_failure
from helpers.process import (Interrupted, env_lock, on_lifeline, stop_on_signal,
                             watching_terminal)
from helpers.prune import prune_backups
from helpers.restore import (DamagedBackup, DumpFacts, Plaintext, ask, confirm_restore,
                             decrypt_and_check, open_fifo_writer, private_tempdir,
                             private_tempfile, sessions_phrase)
from helpers.server_lock import RestoreLock
from helpers.tree import (ensure_private_dir, fresh_stamp, list_backups, not_a_directory,
                          not_backups, os_errors_reported, publish, remove_if_empty,
                          remove_stale_partials)

REPO = Path(__file__).resolve().parent


class Task(invoke.Task):
    """invoke's Task, whose automatic short flags never take the dash of a dashed name:
    with -i and -n taken, invoke would give --in-place the flag `-` (`--, --in-place`)."""

    def arg_opts(self, name, default, taken_names):
        return super().arg_opts(name, default, taken_names | {"-"})


def task(*args, **kwargs):
    """invoke's @task, where a helpers UserError ends the task as invoke's Exit: its one
    line on stderr and its exit status, never a traceback."""
    def decorate(body):
        @functools.wraps(body)
        def reported(*call_args, **call_kwargs):
            try:
                return body(*call_args, **call_kwargs)
            except UserError as error:
                raise Exit(error.message or None, code=error.code) from None
        return invoke.task(*args, klass=Task, **kwargs)(reported)
    return decorate


def in_background(work: Callable[[], object]) -> Callable[[], object]:
    """Start `work` in a thread (a daemon: it never holds up the exit of a task that
    failed meanwhile); the function returned waits for its result, or raises what it
    raised."""
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["value"] = work()
        except BaseException as error:  # handed to whoever waits for the result
            outcome["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def result() -> object:
        thread.join()
        if "error" in outcome:
            raise outcome["error"]
        return outcome["value"]
    return result


# --- composing commands ---------------------------------------------------------------


def pipeline(*stages: str | None) -> str:
    """A bash pipeline that fails when any stage fails; None stages are left out."""
    return "set -o pipefail; " + " | ".join(stage for stage in stages if stage)


def quoted(*words: object) -> str:
    return " ".join(shlex.quote(str(word)) for word in words)


def helper_command(module: str, *args: str) -> str:
    """`python -m helpers.<module>` with this very interpreter."""
    return quoted(sys.executable, "-m", f"helpers.{module}", *args)


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment additions for every pipeline: helpers importable from any cwd."""
    pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return {"PYTHONPATH": pythonpath, **(extra or {})}


def psql_words(db: Database, *args: str) -> tuple[str, ...]:
    """psql that ignores ~/.psqlrc and stops at the first error."""
    return ("psql", "-X", "--quiet", "--set", "ON_ERROR_STOP=on", "--dbname", db.uri, *args)


def psql_command(db: Database, *args: str) -> str:
    return quoted(*psql_words(db, *args))


def compressor() -> str:
    """The compression stage of the backup pipeline. CARABASE_COMPRESSION=best (default):
    level 9, pigz on CARABASE_COMPRESS_THREADS threads (default: one per core) or gzip.
    fast: ISA-L at level 2 (measured: level 3 is slower and no smaller), or level 1 of
    pigz/gzip where ISA-L does not load. Every choice writes the same gzip format."""
    profile = compression_profile()
    threads = compress_threads()  # checked even for gzip: a typo must not wait for pigz
    if profile == "fast" and isal_loads():
        return quoted(sys.executable, "-m", "isal.igzip", "-2", "-n")
    level = "-9" if profile == "best" else "-1"
    if compression_program() == "pigz":
        return quoted("pigz", level, "-p", threads)
    return f"gzip {level}"


def progress_stage(label: str, total: int | None = None) -> str | None:
    """A pass-through stage that draws a live progress line on the watching terminal,
    or None when nobody watches. It draws on the terminal itself, not on its stderr,
    which invoke captures for error messages; and drawing is best effort, so that it
    cannot fail the pipeline."""
    terminal = watching_terminal()
    if terminal is None:
        return None
    sizes = () if total is None else ("--total", str(total))
    return helper_command("progress", "--label", label, *sizes, "--to", terminal)


def failure(result, db: Database) -> str:
    """The one line that says why `result`'s pipeline failed (helpers.failures)."""
    return explain_pipeline_failure(result.stderr, result.exited, db)


# --- backup ---------------------------------------------------------------------------

# Plain SQL that builds the database in an empty one (a pure create script: restore
# applies it to a fresh database, then swaps that in), with owners and grants (restore
# leaves out those naming roles the target server lacks: helpers/dumproles.py), but no
# tablespaces and no subscriptions (restoring prod's into dev would start pulling prod's
# changes). Older backups were made with --no-owner --no-privileges, some with --clean
# --if-exists; restore leaves their DROP block out (helpers/clean_section.py).
PG_DUMP_OPTIONS = (
    "--format=plain",
    "--no-tablespaces",
    "--no-subscriptions",
    "--no-security-labels",
    "--quote-all-identifiers",
)


def run_backup(c, env: str) -> Path:
    """One encrypted backup of `env`, published only once complete and on disk:
    pg_dump | pigz | encrypt > .partial, then fsync and rename, under the env's lock."""
    action = f"backup {env}"
    require_key()
    db = database(env)
    compress = compressor()
    # Never wait forever behind a session that holds a table ACCESS EXCLUSIVE: give up,
    # and say so (helpers.failures). The unit makes it seconds on every server version.
    lock_wait = f"--lock-wait-timeout={lock_wait_timeout()}s"
    started = time.monotonic()
    with os_errors_reported(action), stop_on_signal(f"{action} (nothing was published)"), \
            env_lock(env, action):
        remove_stale_partials(env)
        stamp = fresh_stamp(env)
        day = ensure_private_dir(env_dir(env) / retention.date_dir_name(stamp))
        final = day / retention.backup_name(stamp)
        partial = day / retention.partial_name(stamp)
        os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        try:
            # On a lifeline: a kill -9 of this process stops the dump too.
            command = backup_pipeline(db, compress, lock_wait, partial, action)
            result = c.run(on_lifeline(command),
                           env=child_env(db.child_env()), hide=True, warn=True,
                           in_stream=False)
            if not result.ok:
                raise UserError(f"{action} failed: {failure(result, db)}")
            publish(partial, final, action)
        except BaseException:
            partial.unlink(missing_ok=True)
            remove_if_empty(day)
            raise
    size = final.stat().st_size
    elapsed = time.monotonic() - started
    print(f"{action}: wrote {final} ({progress.human_bytes(size)}) in {elapsed:.1f}s")
    return final


def backup_pipeline(db: Database, compress: str, lock_wait: str, partial: Path,
                    action: str) -> str:
    """pg_dump | compress | [progress] | encrypt > partial."""
    return pipeline(
        quoted("pg_dump", *PG_DUMP_OPTIONS, lock_wait, "--dbname", db.uri),
        compress,
        # After compression: it counts the file as it grows, and costs next to nothing
        # there (a fifth of the bytes, or less, of the dump itself).
        progress_stage(f"{action}: wrote"),
        helper_command("crypto", "encrypt") + " > " + quoted(partial),
    )


def backup_and_copy(c, env: str) -> None:
    """run_backup, then with CARABASE_OFFSITE set (checked first) the new backup's copy
    off-site. A failed copy leaves the local backup where it is and ends the task
    non-zero, saying how to retry."""
    dest = offsite.destination()
    final = run_backup(c, env)
    if dest is None:
        return
    stamp = retention.parse_backup_name(final.name)
    action = f"backup {env}"
    try:
        push_backups(c, env, [(stamp, final)], action)
    except UserError as error:
        reason = error.message.removeprefix(f"{action} failed").lstrip(": ")
        raise UserError(f"{action}: the off-site copy of {final} failed: {reason}; the local"
                        f" backup is kept; retry with: invoke backup.push {env}",
                        code=error.code) from None


@task(name="dev")
def backup_dev(c):
    """One encrypted backup of the dev database (copied off-site if CARABASE_OFFSITE)."""
    backup_and_copy(c, "dev")


@task(name="staging")
def backup_staging(c):
    """One encrypted backup of the staging database (copied off-site if CARABASE_OFFSITE)."""
    backup_and_copy(c, "staging")


@task(name="prod")
def backup_prod(c):
    """One encrypted backup of the prod database (copied off-site if CARABASE_OFFSITE)."""
    backup_and_copy(c, "prod")


# --- restore --------------------------------------------------------------------------
#
# A restore never applies a dump over the env's database. It builds a fresh database
# beside it (`<target>__carabase_restoring`), applies the dump there, and then one
# transaction, committed by this process only, renames the target to its undo copy
# (`<target>__carabase_undo`) and the fresh database to the target's name. Killed at any
# moment before that COMMIT, the target is untouched; the next restore of the env drops
# whatever was left half-built. The names and the SQL are in helpers/swap.py.


RESTORE_PROGRAMS = {"psql": "install the PostgreSQL client tools", "gzip": "install gzip"}


def require_programs(action: str) -> None:
    """psql (and gzip, where ISA-L does not load) on PATH, or one line naming the missing
    one (a shell's `command not found` would otherwise read as a damaged backup or a bad
    URL)."""
    for program, fix in RESTORE_PROGRAMS.items():
        if program == "gzip" and isal_loads():
            continue
        if shutil.which(program) is None:
            raise UserError(f"{action}: {program} is not installed or not on PATH ({fix})")


def guard_env(c, env: str, i_know: bool,
              action: str) -> tuple[Database, swap.Probe, RestoreLock]:
    """The env's database, once the prod guardrails let `action` at it, what the server
    says of it (probe_target), and its restore lock, taken while the probe runs (enter
    it with `with` before changing anything)."""
    check_env(env)
    i_know = i_know or os.environ.get("CARABASE_I_KNOW") == "1"
    if env == "prod" and not i_know:
        raise UserError(f"{action} refused: touching prod's database needs --i-know"
                        " (or CARABASE_I_KNOW=1)")
    target = database(env)
    lock = RestoreLock(maintenance_of(target), target.name, action)
    try:
        # Where prod's URL leads is looked up while the target is probed: neither waits.
        prod_identity = None if env == "prod" else in_background(lambda: look_up_prod(c))
        probe = probe_target(c, target, action)
        if prod_identity is not None:
            refuse_if_reaches_prod(c, target, (probe.cluster, probe.database), action,
                                   prod_identity())
    except BaseException:
        lock.release()
        raise
    return target, probe, lock


@task(
    help={
        "env": "the env whose database receives the backup (dev, staging, prod)",
        "file": "the .sql.gz.enc backup to restore",
        "yes": "do not ask for confirmation",
        "i-know": "required to restore into prod (or CARABASE_I_KNOW=1)",
        "no-keep": "drop the replaced database at once instead of keeping it for undo",
        "in-place": "for a role that may not create databases: apply inside the existing"
                    " database, in one transaction (see docs/restoring.md for its limits)",
        "drop-settings": "leave out the target's settings this role could not set again"
                         " (each is named) instead of refusing",
        "jobs": "sessions that load the fresh database (default CARABASE_RESTORE_JOBS, else"
                " one per core; one for a backup under 1 MiB)",
    }
)
def restore(c, env, file, yes=False, i_know=False, no_keep=False, in_place=False,
            drop_settings=False, jobs=None):
    """Restore a backup into an env's database: build it fresh, then swap it in."""
    action = f"restore into {env}"
    check_env(env)
    jobs = restore_jobs(jobs)
    source = user_path(file)
    if not source.exists():
        raise UserError(f"{action}: no such backup file: {source}")
    if not source.is_file():
        raise UserError(f"{action}: {source} is not a file")
    key = require_key()
    require_programs(action)
    target, probe, lock = guard_env(c, env, i_know, action)
    identity = probe.identity  # --in-place keeps the database, settings and all
    if not in_place:
        refuse_without_createdb(target, probe, action)
        refuse_blocking_sessions(target, probe, action)
        identity = settings_kept(target, probe, drop_settings, action)

    with lock, stop_on_signal(f"{action} (nothing was changed)"), \
            os_errors_reported(action), private_tempfile() as plaintext:
        facts = checked_dump(key, source, plaintext, probe.restoring, action)
        confirm_restore(source, env, target, yes, action, probe.sessions, in_place=in_place)
        started = time.monotonic()
        if in_place:
            apply_in_place(c, plaintext, facts, target, identity, action)
        else:
            tidy = replace_database(c, plaintext, facts, target, identity, no_keep, action,
                                    restore_sessions(jobs, source.stat().st_size),
                                    force=probe.restoring.superuser)
    print(f"{action}: restored {source} into {target.uri} in"
          f" {time.monotonic() - started:.1f}s")
    if in_place:
        print(f"{action}: applied in place: {undo_after_in_place(c, env, target, action)}")
    else:
        print(f"{action}: {what_undo_brings_back(env, target, identity, no_keep and tidy)}")


def what_undo_brings_back(env: str, target: Database, identity: swap.DatabaseIdentity | None,
                          dropped: bool) -> str:
    """The restore's last line: where the replaced database went, and how to undo."""
    if identity is None:
        return f"{target.name} did not exist before: there is nothing to undo"
    if dropped:
        return "the replaced database was dropped (--no-keep): there is nothing to undo"
    return (f"the replaced database is kept as {swap.undo_name(target.name)}"
            f" ({progress.human_bytes(identity.size)}); to put it back: invoke"
            f" backup.undo-restore {env}{' --i-know' if env == 'prod' else ''}")


def undo_after_in_place(c, env: str, target: Database, action: str) -> str:
    """What undo-restore would do after an --in-place restore, which keeps no copy of
    what it replaced: nothing, or bring back the copy an earlier restore kept."""
    undo = swap.undo_name(target.name)
    kept = database_identity(c, maintenance_of(target), undo, action)
    if kept is None:
        return "there is no undo copy"
    return (f"no copy of what it replaced was kept; undo-restore {env} would bring back"
            f" {undo} ({progress.human_bytes(kept.size)}), the copy an earlier restore kept,"
            " and replace this restore's result")


def replace_database(c, plaintext: Plaintext, facts: DumpFacts, target: Database,
                     identity: swap.DatabaseIdentity | None, no_keep: bool,
                     action: str, jobs: int = 1, force: bool = False) -> bool:
    """Build the backup into a fresh database, then swap it in for `target`. False if,
    the swap done, an old copy could not be dropped (said on stderr). `force`: the
    role may drop with WITH (FORCE) (swap.drop_database_sql)."""
    server = maintenance_of(target)
    fresh = target.on_database(swap.restoring_name(target.name))
    undo = swap.undo_name(target.name) if identity is not None else None
    retired = swap.retired_name(target.name)
    # First drop what a killed restore left behind (half-built, or retired but not yet
    # dropped), then create the fresh database (apply_dump).
    create = [*swap.drop_database_sql(fresh.name, force),
              *swap.drop_database_sql(retired, force),
              swap.create_database_sql(fresh.name, identity)]
    try:
        apply_dump(c, plaintext, facts, fresh, action, create=create, server=server,
                   jobs=jobs)
        # After the COMMIT, in the same psql: drop the previous undo copy (and, with
        # --no-keep, the one just made).
        result = rename_databases(
            c, server, swap.swap_sql(target.name, fresh.name, undo, identity), action,
            after=swap.after_swap_sql(target.name, drop_undo=no_keep and undo is not None,
                                      force=force))
        if not committed(result):
            raise UserError(f"{action} failed, {target.name} was not changed: could not swap"
                            f" in the restored database: {failure(result, target)}")
        report_ended_sessions(result, action)
    except BaseException as error:
        drop_database(c, fresh, force)  # waits for the swap to end; gone if it committed
        if isinstance(error, Interrupted):
            report_if_swapped_in(c, server, target, identity, error, action)
        raise
    if not result.ok:  # swapped in; only a drop after the COMMIT failed
        print(f"{action}: warning: the restore is done, but an old copy could not be dropped"
              f" after it (drop it by hand, or the next restore of this env tries again:"
              f' DROP DATABASE "{retired}"): {failure(result, target)}', file=sys.stderr)
    return result.ok


def report_if_swapped_in(c, server: Database, target: Database,
                         identity: swap.DatabaseIdentity | None, stop: Interrupted,
                         action: str) -> None:
    """Interrupted while the swap's psql ran: if the swap had committed (another database
    holds the target's name now), say so rather than "nothing was changed"."""
    if identity is not None and identity.oid is None:
        return  # a server before 12 does not show the oid: we cannot tell
    now = run_sql(c, server, "select oid from pg_database where datname = :'name'",
                  name=target.name)
    was = "" if identity is None else str(identity.oid)
    if now.ok and now.stdout.strip() not in ("", was):
        name = signal.Signals(stop.signum).name
        raise UserError(f"{action}: interrupted by {name} after the swap had committed:"
                        f" {target.name} holds the backup; an old copy may be left, which"
                        " the next restore of this env drops", code=128 + stop.signum)


def rename_databases(c, server: Database, statements: list[str], action: str,
                     after: list[str] = ()):
    """The swap transaction, then `after` (statements that run on their own once it has
    committed); tried again (three times in all) when a client connected to the target
    between the closing of its sessions and the rename."""
    for _attempt in range(3):
        result = held_transaction(c, server, "\n".join(statements), action,
                                  after="\n".join(after))
        if committed(result) or "is being accessed by other users" not in result.stderr:
            break
    return result


def maintenance_of(db: Database) -> Database:
    """Where database-level statements run: another database of the same server."""
    return db.on_database("template1" if db.name == "postgres" else "postgres")


def database_identity(c, server: Database, name: str,
                      action: str) -> swap.DatabaseIdentity | None:
    """What database `name` keeps across a restore (owner, locale, settings...), or None
    if there is no such database."""
    result = run_sql(c, server, swap.IDENTITY_QUERY, name=name)
    if not result.ok:
        raise UserError(f"{action}: cannot connect to the server of {server.uri}:"
                        f" {failure(result, server)}")
    row = result.stdout.strip()
    return swap.DatabaseIdentity.from_json(row) if row else None


def probe_target(c, target: Database, action: str) -> swap.Probe:
    """What a restore needs to know of the target before it starts, in one psql
    (helpers.swap.PROBE_QUERY): asked on the target database itself, so that the prod
    guard sees where its URL really leads; on the server's maintenance database when
    the target does not exist yet (it is then named as its URL names it)."""
    for db in (target, maintenance_of(target)):
        result = run_sql(c, db, swap.PROBE_QUERY, name=target.name,
                         undo=swap.undo_name(target.name))
        if result.ok:
            probe = swap.Probe.from_json(result.stdout.strip())
            return probe if db is target else dataclasses.replace(probe, database=target.name)
    raise UserError(f"{action}: cannot connect to the server of {target.uri}:"
                    f" {failure(result, target)} (check {target.variable})")


def refuse_without_createdb(target: Database, probe: swap.Probe, action: str) -> None:
    """Before anything is built: the role must create databases, and rename the target
    (own it), or the restore would fail only at the swap."""
    if not probe.creates:
        raise UserError(f"{action} refused: the role of {target.variable} may not create"
                        " databases, and a restore builds a fresh one; grant it CREATEDB, or"
                        " pass --in-place to apply inside the existing database in one"
                        " transaction (see its limits in docs/restoring.md)")
    if probe.identity is not None and not probe.owns:
        raise UserError(f"{action} refused: the role of {target.variable} does not own"
                        f" {target.name} (its owner is {probe.identity.owner}), and a restore"
                        " renames it to keep it as the undo copy; connect as its owner, or"
                        " pass --in-place (see its limits in docs/restoring.md)")


def refuse_blocking_sessions(target: Database, probe: swap.Probe, action: str) -> None:
    """Before decrypting: a client session on the target (or its undo copy) that this
    role may not end would fail the swap after the whole load."""
    if not probe.blocking:
        return
    sessions = ", ".join(f"{s.role} ({s.application or 'no application name'})"
                         for s in probe.blocking)
    places = " and ".join(sorted({s.database for s in probe.blocking}))
    one = len(probe.blocking) == 1
    which = f"a session of {sessions} is" if one else f"sessions of {sessions} are"
    raise UserError(f"{action} refused: {which} connected to {places} and role"
                    f" {probe.restoring.name} may not end {'it' if one else 'them'}: close"
                    f" {'it' if one else 'them'}, or restore as a superuser")


def settings_kept(target: Database, probe: swap.Probe, drop_settings: bool,
                  action: str) -> swap.DatabaseIdentity | None:
    """The target's identity, less the settings this role could not set again on the
    fresh copy: refused before anything is done, or left out and named with
    --drop-settings."""
    identity = probe.identity
    if identity is None or not probe.unsettable:
        return identity
    statements = [swap.setting_sql(target.name, setting) for setting in probe.unsettable]
    if not drop_settings:
        raise UserError(f"{action} refused: role {probe.restoring.name} could not set again"
                        f" what an administrator set on {target.name}: {' '.join(statements)}"
                        " (restore as a superuser, or pass --drop-settings to leave them out)")
    for statement in statements:
        print(f"{action}: --drop-settings: left out {statement}", file=sys.stderr)
    kept = tuple(s for s in identity.settings if s not in probe.unsettable)
    return dataclasses.replace(identity, settings=kept)


def roles_left_out(named: dumproles.DumpRoles, role: dumproles.RestoringRole,
                   action: str) -> tuple[str, ...]:
    """Once the dump is checked, before anything is built: refuse what only a superuser
    may create, and say which owners and grants will be left out (helpers.dumproles)."""
    refused = dumproles.superuser_only(named, role)
    if refused:
        raise UserError(f"{action} refused: role {role.name} cannot create what the backup"
                        f" holds: {', '.join(refused)}; restore as a superuser (or install"
                        " what is missing), nothing was changed")
    for line in dumproles.left_out_warnings(named, role):
        print(f"{action}: warning: {line}", file=sys.stderr)
    return dumproles.filter_arguments(named, role)


def checked_dump(key: bytes, source: Path, plaintext: Plaintext,
                 role: dumproles.RestoringRole, action: str) -> DumpFacts:
    """Decrypt and check the backup in one pass, which also lists the roles it names
    (roles_left_out: refused or left out, before anything is built)."""
    named = dumproles.DumpRoles()
    facts = decrypt_and_check(key, source, plaintext, action, sink=named.feed)
    named.finish()
    facts.leave_out = roles_left_out(named, role, action)
    return facts


def report_ended_sessions(result, action: str) -> None:
    ended = swap.ended_sessions(result.stderr)
    if ended:
        print(f"{action}: ended {len(ended)} session(s): {', '.join(ended)}")


# Below this many compressed bytes gzip inflates faster than a Python interpreter starts
# (about 40 ms here), so ISA-L's speed cannot pay for it.
SMALL_BACKUP = 256 * 1024


def inflate_stage(size: int) -> str:
    """The stage that inflates a checked gzip stream of `size` bytes from stdin: ISA-L
    (about five times gzip's speed here, which leaves the cores to psql and the server)
    where it loads, else gzip; gzip too for a small stream, where it is there. The
    stream was checked whole before, so ISA-L's one blind spot, taking empty input for
    an empty stream, cannot arise."""
    if isal_loads() and (size >= SMALL_BACKUP or shutil.which("gzip") is None):
        return quoted(sys.executable, "-m", "isal.igzip", "-dc")
    return "gzip -dc"


def dump_stream(plaintext: Plaintext, facts: DumpFacts, action: str) -> str:
    """The stages that turn the decrypted file into SQL for psql. They read it as
    plaintext.path (/proc/<pid>/fd/N on Linux: see helpers.restore.Plaintext)."""
    # With a person watching, a progress stage feeds the inflater from the file, so that
    # its percentage is of the backup itself (the inflater and psql keep pace through
    # the pipes).
    size = plaintext.size()
    watch = progress_stage(f"{action}: read", total=size)
    if watch:
        decompress = f"{watch} < {quoted(plaintext.path)} | {inflate_stage(size)}"
    else:
        decompress = f"{inflate_stage(size)} < {quoted(plaintext.path)}"
    if facts.clean_section:  # an older backup: its DROP block has nothing to drop
        decompress += " | " + helper_command("clean_section")
    if facts.leave_out:  # what names roles this server lacks, or this role may not act as
        decompress += " | " + helper_command("dumproles", *facts.leave_out)
    return decompress


def apply_dump(c, plaintext: Plaintext, facts: DumpFacts, db: Database, action: str,
               jobs: int = 1, create: list[str] = (), server: Database | None = None) -> None:
    """Apply the dump to `db`, a database nobody else uses, stopping at the first error.
    Only for a database that a later synchronous commit makes durable (the swap). Over
    `jobs` sessions when more than one (helpers.parallel_apply), except for an older
    backup (its DROP block is for one). `create`: statements that make `db`, run first,
    each on its own, on `server`: by the one psql (see apply_psql), or by a psql of
    their own before the sessions start (make_database).

    No transaction around it: nothing can see `db` until it is swapped in, so a failure
    is undone by dropping it, and one transaction over a big dump would run out of lock
    memory (a lock per table and per large object)."""
    server = server or maintenance_of(db)
    if jobs > 1 and not facts.clean_section:
        make_database(c, server, create, db, action)  # the sessions only connect to it
        # Its lifeline (fd 3) is the shell's stdin, a pipe this process holds: killed,
        # even by SIGKILL, it stops its sessions instead of loading on unattended.
        apply = helper_command("parallel_apply", "--jobs", str(jobs), "--dbname", db.uri,
                               "--lifeline", "3")
        command = "exec 3<&0; " + pipeline(dump_stream(plaintext, facts, action), apply)
    else:
        command = pipeline(dump_stream(plaintext, facts, action),
                           apply_psql(db, create, server) + " > /dev/null")
    # Each statement commits without waiting for its WAL to reach the disk: safe, because
    # the swap's own COMMIT waits for all WAL written before it, this database's included.
    options = " ".join(filter(None, [os.environ.get("PGOPTIONS"),
                                     "-c synchronous_commit=off"]))
    result = c.run(command, env=child_env({**db.child_env(), "PGOPTIONS": options}),
                   hide=True, warn=True, in_stream=False)
    if not result.ok:
        raise UserError(f"{action} failed, nothing was changed: {failure(result, db)}")


def each_on_its_own(statements: list[str]) -> list[str]:
    """psql's arguments that run `statements` one by one, outside any transaction (as
    DROP and CREATE DATABASE must)."""
    return [word for sql in statements for word in ("--command", sql)]


def make_database(c, server: Database, create: list[str], db: Database, action: str) -> None:
    """Run `create` on `server` (each_on_its_own)."""
    if not create:
        return
    made = c.run(psql_command(server, *each_on_its_own(create)), env=server.child_env(),
                 hide=True, warn=True, in_stream=False)
    if not made.ok:
        raise UserError(f"{action} failed, nothing was changed: {failure(made, db)}")


def apply_psql(db: Database, create: list[str], server: Database) -> str:
    """The one psql that applies the dump; with `create`, it first runs those statements
    on `server`, then connects to `db` by its URI, as any other psql here would (one
    psql start fewer than a psql of their own)."""
    if not create:
        return psql_command(db, "--file", "-")
    # Unset before psql reads the dump, where it would replace any `:fresh` that stands
    # outside quotes (an array slice `a[1:fresh]`).
    return psql_command(server, *each_on_its_own(create), "--set", f"fresh={db.uri}",
                        "--command", r"\connect :fresh", "--command", r"\unset fresh",
                        "--file", "-")


READY = "carabase: ready to commit"
COMMITTED = "carabase: committed"


def held_transaction(c, db: Database, sql: str, action: str, stdin_stage: str | None = None,
                     ready=None, after: str = ""):
    """Run `sql` on `db` in one transaction that only this process can commit (then
    `after`, statements that run on their own once it has, in the same psql).

    psql reads its script from a FIFO this process writes: BEGIN, `sql`, a marker that
    psql prints once everything succeeded, and, only after that marker (and `ready()`,
    when given, says yes), COMMIT. Should this process die at any point before, even by
    SIGKILL, the kernel closes the FIFO, psql reads its end, and the server rolls the
    transaction back. `stdin_stage` feeds psql's stdin (`\\i /dev/stdin` in `sql` reads
    it). Returns invoke's result: committed(result) if COMMIT went through, result.ok
    if `after` did too."""
    with private_tempdir() as workdir:
        feed = workdir / "transaction.sql"
        os.mkfifo(feed, 0o600)
        command = pipeline(stdin_stage, psql_command(db, "--file", str(feed)) + " > /dev/null")
        promise = c.run(command, asynchronous=True, env=child_env(db.child_env()), hide=True,
                        warn=True, in_stream=False)
        committing = False
        writer = open_fifo_writer(feed, lambda: promise.runner.process_is_finished)
        if writer is not None:
            try:
                with writer:
                    writer.write(f"BEGIN;\n{sql}\n\\warn '{READY}'\n")
                    writer.flush()
                    while READY not in "".join(promise.runner.stderr):
                        if promise.runner.process_is_finished:
                            break
                        time.sleep(0.02)
                    else:
                        if ready is None or ready():
                            writer.write(f"COMMIT;\n\\warn '{COMMITTED}'\n{after}\n")
                            committing = True
            except BrokenPipeError:  # psql stopped (an error): nothing to commit
                committing = False
        result = promise.join()
    if not committing and result.ok:
        result.exited = 1  # psql ended happily, but without our COMMIT nothing stays
        result.stderr += "\nthe transaction was not committed"
    return result


def committed(result) -> bool:
    """Whether held_transaction's COMMIT went through (psql printed the marker after it)."""
    return f"\n{COMMITTED}\n" in f"\n{result.stderr}"


def apply_in_place(c, plaintext: Plaintext, facts: DumpFacts, target: Database,
                   identity: swap.DatabaseIdentity | None, action: str) -> None:
    """--in-place: empty the target and apply the dump in one transaction, committed
    only by this process once psql applied all of it and gzip read the whole file."""
    if identity is None:
        raise UserError(f"{action}: {target.name} does not exist, and --in-place applies"
                        " inside the existing database; create it first")
    with private_tempdir() as workdir:
        status = workdir / "gzip.status"
        # psql reads the dump on its standard input; gzip's exit status lands in a file
        # before psql sees the end of it.
        feed = f"{{ {dump_stream(plaintext, facts, action)}; echo $? > {quoted(status)}; }}"
        result = held_transaction(
            c, target, swap.IN_PLACE_CLEAR_SQL + "\n\\i /dev/stdin\n", action,
            stdin_stage=feed,
            ready=lambda: status.exists() and status.read_text().strip() == "0")
    if not result.ok:
        raise UserError(f"{action} failed, nothing was changed: {failure(result, target)}")


@task(
    help={
        "env": "the env whose last restore to undo (dev, staging, prod)",
        "yes": "do not ask for confirmation",
        "i-know": "required for prod (or CARABASE_I_KNOW=1)",
    }
)
def undo_restore(c, env, yes=False, i_know=False):
    """Swap back the database the last restore replaced (kept as its undo copy)."""
    action = f"undo-restore {env}"
    check_env(env)
    require_programs(action)
    target, probe, lock = guard_env(c, env, i_know, action)
    refuse_blocking_sessions(target, probe, action)
    server = maintenance_of(target)
    undo = swap.undo_name(target.name)
    with lock, stop_on_signal(f"{action} (nothing was changed)"):
        kept = database_identity(c, server, undo, action)
        if kept is None:
            raise UserError(f"{action}: no restore of {env} to undo: there is no undo copy"
                            f" {undo} (none was made here, or the last restore ran with"
                            " --no-keep or --in-place, or the copy was dropped)")
        current, sessions = probe.identity, probe.sessions
        ask(f"This puts back {env}'s database {target.uri} as it was before the last restore"
            f" (kept as {undo}, {progress.human_bytes(kept.size)}), and keeps what is there"
            f" now as the undo copy. {sessions_phrase(sessions)}", action, yes)
        spare = swap.restoring_name(target.name)
        drop_database(c, target.on_database(spare))  # a killed restore's leftover
        if current is None:
            statements = [swap.close_sessions_sql(undo),
                          f"ALTER DATABASE {swap.quote_ident(undo)} RENAME TO"
                          f" {swap.quote_ident(target.name)};"]
        else:
            statements = swap.undo_swap_sql(target.name, undo, spare)
        result = rename_databases(c, server, statements, action)
        if not result.ok:
            raise UserError(f"{action} failed, nothing was changed: {failure(result, target)}")
        report_ended_sessions(result, action)
    print(f"{action}: {target.uri} holds again what it held before the last restore")
    if current is not None:
        print(f"{action}: what that restore brought is kept as {undo}"
              f" ({progress.human_bytes(current.size)}); undo again to bring it back")


def server_identity(c, db: Database, fallback: bool = True) -> tuple[str, str] | None:
    """(cluster system identifier, database name) that `db` leads to; None if unreachable,
    if its database exists but refuses the connection, or if `db` cannot be connected to
    and `fallback` is False.

    The identifier is unique per PostgreSQL cluster, and the name is the one the server
    reports, so URLs spelled differently (localhost vs 127.0.0.1, a socket path, a
    tunnel, a pooler's alias) still compare equal. A database that does not exist yet
    is named as its URL names it, on the cluster its server belongs to (the fallback:
    identity_by_maintenance).
    """
    result = c.run(psql_command(db, "-At", "-c", "select system_identifier,"
                                " current_database() from pg_control_system()"),
                   env=db.child_env(), hide=True, warn=True, in_stream=False)
    reached = result.stdout.strip() if result.ok else None
    if reached:
        cluster, _, name = reached.partition("|")
        return cluster, name
    return identity_by_maintenance(c, db) if fallback else None


def identity_by_maintenance(c, db: Database) -> tuple[str, str] | None:
    """server_identity of a database that cannot be connected to, asked of the server's
    maintenance database."""
    for maintenance in (db.on_database("postgres"), db.on_database("template1")):
        answer = run_sql(c, maintenance, "select system_identifier, exists (select from"
                         " pg_database where datname = :'name') from pg_control_system()",
                         name=db.name)
        if answer.ok:
            cluster, _, exists = answer.stdout.strip().partition("|")
            # There, but it would not let us in (connection limit, CONNECT revoked):
            # where its URL really leads (a pooler's alias?) is unknown.
            return None if exists == "t" else (cluster, db.name)
    return None


def look_up_prod(c) -> tuple[str, str] | None:
    """server_identity of prod's database; when prod is not configured (it is then just
    not on this machine), only if it can be connected to."""
    prod = database("prod")
    return server_identity(c, prod, fallback=bool(os.environ.get(prod.variable)))


def refuse_if_reaches_prod(c, target: Database, target_identity: tuple[str, str],
                           action: str, prod_identity: tuple[str, str] | None) -> None:
    """Refuse when `target_identity` (cluster, database) is where prod's URL leads
    (`prod_identity`: look_up_prod's answer)."""
    prod = database("prod")
    configured = bool(os.environ.get(prod.variable))
    # An unconfigured prod that cannot be connected to can only be the target if the
    # names match: then its server decides.
    if prod_identity is None and not configured and prod.name == target_identity[1]:
        prod_identity = identity_by_maintenance(c, prod)
    if prod_identity is None and configured:
        # A configured prod we cannot reach might be this very server under another
        # route: refuse rather than guess. (Unset, prod is just not on this machine.)
        raise UserError(f"{action} refused: cannot reach the prod database to check that"
                        f" {target.variable} does not lead to it; fix {prod.variable}"
                        " or unset it if prod is not reachable from here")
    if prod_identity == target_identity:
        raise UserError(f"{action} refused: {target.variable} leads to the prod database"
                        f" ({prod.uri}); restore into prod only with: invoke backup.restore"
                        " prod FILE --i-know")


def run_sql(c, server: Database, sql: str, **variables: str):
    """Run `sql` on `server`; each keyword is a psql variable, so that :'name' is `name`
    as a literal and :"name" as an identifier, quoted by psql itself.

    psql interpolates variables only in scripts it reads, hence the printf pipe.
    """
    settings = [word for key, value in variables.items() for word in ("--set", f"{key}={value}")]
    command = pipeline(quoted("printf", "%s\n", sql), psql_command(server, "-At", *settings))
    return c.run(command, env=server.child_env(), hide=True, warn=True, in_stream=False)


def drop_database(c, db: Database, force: bool = False):
    """Drop `db` if it exists, ending the sessions still in it first (an orphaned psql
    of a killed restore, or the backend of one we just stopped): swap.drop_database_sql."""
    return run_sql(c, maintenance_of(db), "\n".join(swap.drop_database_sql(db.name, force)))


# --- prune and status -----------------------------------------------------------------


@task(help={"env": "dev, staging or prod",
            "dry-run": "print what would be kept and deleted; delete nothing"})
def prune(c, env, dry_run=False):
    """Delete the backups of an env that the retention rules no longer keep.

    Kept: the last 7 days, 4 weekly, 3 monthly; then the same to its off-site copies
    (CARABASE_OFFSITE, unless CARABASE_OFFSITE_PRUNE=0)."""
    root = env_dir(env)  # checks env
    misplaced = not_a_directory(env)
    if misplaced:
        raise UserError(f"prune {env}: {misplaced}")
    with os_errors_reported(f"prune {env}"):
        if not root.is_dir():
            print(f"{env}: nothing to prune: {root} does not exist")
        elif dry_run:  # deletes nothing, so it needs no lock and leaves partial files alone
            prune_backups(env, dry_run=True)
        else:
            with env_lock(env, "prune"):  # no backup of env can start or finish meanwhile
                remove_stale_partials(env)
                prune_backups(env, dry_run=False)
    prune_offsite(c, env, dry_run)


def report_not_backups(env: str, action: str) -> None:
    """A line on stderr for each entry with a backup's name that is not a regular file:
    not counted as a backup (docs/retention.md)."""
    try:
        others = not_backups(env)
    except OSError:  # status says why the env cannot be read
        return
    for path, kind in others:
        print(f"{action}: {path} has a backup's name but is {kind}: not counted as a backup",
              file=sys.stderr)


@task(help={"json": "print one JSON object (for a health endpoint) instead of lines"})
def status(c, json=False):
    """Freshness of every env in CARABASE_ENVS: exit 0 all PASS, 1 worst is WARN, 2 any FAIL."""
    now = datetime.now(timezone.utc)
    reports = [with_pitr(c, offsite.with_offsite(freshness.freshness_of(env, now), now), now)
               for env in configured_envs()]
    for env in configured_envs():
        report_not_backups(env, "status")
    worst = freshness.worst_status(reports)
    if json:
        print(freshness.status_json(worst, reports))
    else:
        for report in reports:
            print(report.line())
    if freshness.SEVERITY[worst]:
        raise Exit(code=freshness.SEVERITY[worst])


# --- off-site copies ------------------------------------------------------------------

# rclone logs one JSON object a line on stderr: for each file it copies, what it checked
# after the upload ("size = ... OK", "md5 = ... OK", at DEBUG); an error line naming
# each file that failed; and no transfer statistics. Whether a file arrived is judged
# from a listing after the copy (push_backups).
RCLONE_LOG = ("--use-json-log", "--log-level", "DEBUG", "--stats", "0")


def rclone_program(c) -> Path:
    """The rclone to run (helpers.offsite.choose_rclone): asks a PATH rclone its version."""
    bundled = offsite.bundled_rclone()
    on_path = offsite.rclone_on_path()
    if on_path is None or on_path == bundled:
        return offsite.choose_rclone(bundled, "", on_path, None)
    probe = c.run(quoted(on_path, "version"), hide=True, warn=True, in_stream=False)
    return offsite.choose_rclone(bundled, offsite.bundled_version(), on_path,
                                 probe.stdout if probe.ok else None)


def run_rclone(c, program: Path, *args: object, paths: list[str] | None = None):
    """rclone with `args`, `paths` on its standard input (for --files-from-raw -).
    Credentials reach it only through its environment or its config file. umask 077:
    what it creates on a folder remote, or in the local tree, is private (0600/0700)."""
    command = quoted(program, *args)
    if paths is not None:
        command = pipeline(quoted("printf", "%s\n", *paths), command)
    return c.run("umask 077; " + command, env=offsite.rclone_environment(), hide=True, warn=True,
                 in_stream=False)


def rclone_failure(result) -> str:
    return offsite.explain_failure(result.stderr, result.exited)


def remote_backups(c, program: Path, dest: offsite.Destination, env: str,
                   action: str) -> list[offsite.RemoteBackup]:
    """The env's backups on the remote (lsjson), oldest first. The destination itself
    must exist: a missing bucket, or a NAS that is not mounted, is an error, never
    something to create."""
    # No --hash: on SFTP or WebDAV that would read every file on the server.
    listing = run_rclone(c, program, "lsjson", "-R", "--files-only", dest.env_root(env))
    if listing.ok:
        return offsite.parse_listing(listing.stdout)
    if listing.exited == 3:  # directory not found: the env's, or the destination's?
        root = run_rclone(c, program, "lsf", "--dirs-only", "--max-depth", "1", dest.text)
        if root.ok:
            return []
        if root.exited == 3:
            raise UserError(f"{action} failed: {dest.text} does not exist: create the bucket"
                            " or folder (nothing is created above <env>/), or fix"
                            " CARABASE_OFFSITE")
        listing = root
    raise UserError(f"{action} failed: {rclone_failure(listing)}")


def push_backups(c, env: str, backups: list, action: str) -> int:
    """Copy `backups` ((stamp, path), oldest first) missing off-site, each checked by
    rclone after its upload (size and hash, read from its log; no --inplace); never
    replace one (docs/offsite.md); record the newest; the number copied."""
    dest = offsite.require_destination(action)
    program = rclone_program(c)
    remote = {backup.relative: backup
              for backup in remote_backups(c, program, dest, env, action)}
    sizes = {offsite.relative_path(stamp): path.stat().st_size for stamp, path in backups}
    failed = offsite.size_mismatches(sizes, remote)
    missing = [path for path in sizes if path not in remote]
    copied, hashes = [], set()  # the paths copied; the hashes rclone checked them by
    if missing:
        outcome = copy_missing(c, program, dest, env, missing, sizes, action)
        failed.update(outcome.failed)
        for path, kinds in sorted(outcome.confirmed.items()):  # date order, as listed
            copied.append(path)
            hashes.update(kinds)
            how = "size and " + "/".join(kinds) if kinds else "size only: no common hash"
            print(f"{action}: copied {path} ({progress.human_bytes(sizes[path])}, verified"
                  f" {how}) to {dest.backup_path(env, path)}")
    for path, reason in sorted(failed.items()):
        print(f"{action}: FAILED {path}: {offsite.explain_failure(reason, 1)}")
    safe = [stamp for stamp, _ in backups if offsite.relative_path(stamp) not in failed]
    if safe:
        offsite.write_record(env, dest, max(safe), datetime.now(timezone.utc))
    if failed:
        first, reason = sorted(failed.items())[0]
        raise UserError(f"{action} failed for {len(failed)} of {len(backups)} backups"
                        f" (first: {first}: {offsite.explain_failure(reason, 1)})")
    if copied:
        how = "size and " + "/".join(sorted(hashes)) if hashes else "size only"
        print(f"{action}: {len(copied)} copied and verified ({how}),"
              f" {len(backups) - len(copied)} already off-site")
    return len(copied)


def copy_missing(c, program: Path, dest: offsite.Destination, env: str, missing: list[str],
                 sizes: dict[str, int], action: str) -> offsite.CopyOutcome:
    """rclone copy of `missing`, then the remote listed again: a file counts as copied
    when it is there with its local size (not by how rclone words its log lines)."""
    # --ignore-existing: should a file have appeared meanwhile, it is not replaced.
    copy = run_rclone(c, program, "copy", "--ignore-existing", "--files-from-raw", "-",
                      *RCLONE_LOG, env_dir(env), dest.env_root(env), paths=missing)
    if not copy.ok and not offsite.failed_objects(copy.stderr):
        raise UserError(f"{action} failed: {rclone_failure(copy)}")
    listed = {backup.relative: backup
              for backup in remote_backups(c, program, dest, env, action)}
    return offsite.copy_outcome(missing, sizes, listed, copy.stderr)


@task(help={"env": "dev, staging or prod"})
def push(c, env):
    """Copy the local backups of an env that are missing off-site, verified.

    Never replaces or deletes anything there (CARABASE_OFFSITE)."""
    action = f"push {check_env(env)}"
    dest = offsite.require_destination(action)
    with os_errors_reported(action), stop_on_signal(f"{action} (copies under way were"
                                                    " abandoned)"):
        backups = list_backups(env)
        if not backups:
            print(f"{action}: no local backups to copy")
            return
        copied = push_backups(c, env, backups, action)
    if not copied:
        print(f"{action}: nothing to copy: all {len(backups)} backups are already at"
              f" {dest.env_root(env)}")


def prune_offsite(c, env: str, dry_run: bool) -> None:
    """The retention plan applied to the remote's own listing: deletes only backup names
    in their date directories, never anything else there."""
    dest = offsite.destination()
    if dest is None:
        return
    action = f"prune {env} off-site"
    if not offsite.prune_remote():
        print(f"{env} off-site: CARABASE_OFFSITE_PRUNE=0: nothing deleted at"
              f" {dest.env_root(env)} (the bucket's own rules decide)")
        return
    program = rclone_program(c)
    backups = remote_backups(c, program, dest, env, action)
    if not backups:
        print(f"{env} off-site: no backups at {dest.env_root(env)}, nothing to prune")
        return
    decided = retention.plan([backup.stamp for backup in backups], datetime.now(timezone.utc))
    doomed = [backup.relative for backup in backups if backup.stamp in decided.delete]
    if doomed and not dry_run:
        deleted = run_rclone(c, program, "delete", "--files-from-raw", "-", *RCLONE_LOG,
                             dest.env_root(env), paths=doomed)
        if not deleted.ok:
            raise UserError(f"{action} failed: {rclone_failure(deleted)}; with append-only"
                            " credentials, set CARABASE_OFFSITE_PRUNE=0")
        for day in sorted({path.split("/")[0] for path in doomed}):
            # Folders only (object stores have no empty directories); fails, harmlessly,
            # where anything is left in it.
            run_rclone(c, program, "rmdir", dest.backup_path(env, day))
    print(f"{env} off-site: {dest.env_root(env)}")
    for line in offsite.prune_report(env, backups, decided, dry_run):
        print(line)


def download_verified(c, program: Path, remote: str, partial: Path, size: int,
                      action: str) -> None:
    """rclone copyto `remote` -> `partial` (our own temporary name, hence --inplace: no
    second one that a killed fetch would leave), then size and hash checked."""
    result = run_rclone(c, program, "copyto", "--inplace", remote, partial)
    if not result.ok:
        raise UserError(f"{action} failed: {rclone_failure(result)}")
    partial.chmod(0o600)
    got = partial.stat().st_size
    if got != size:
        raise UserError(f"{action} failed: got {got} bytes of {size}")
    # rclone checked the download's size and hash already; check the hash the remote
    # reports for this one file once more, with our own eyes.
    stat = run_rclone(c, program, "lsjson", "--stat", "--hash", remote)
    if not stat.ok:
        raise UserError(f"{action} failed: {rclone_failure(stat)}")
    expected = offsite.comparable_hash(json.loads(stat.stdout).get("Hashes") or {})
    if expected and offsite.file_hash(partial, expected[0]) != expected[1]:
        raise UserError(f"{action} failed: the download's {expected[0]} does not match the"
                        " remote's")


def fetch_into(c, program: Path, remote: str, final: Path, chosen: offsite.RemoteBackup,
               key: bytes, action: str) -> None:
    """Download `remote` beside `final` under a temporary name, check it (size, hash,
    then authenticated: status and prune would count a damaged file as a good backup),
    and only then give it its final name. Under the env's lock."""
    day = ensure_private_dir(final.parent)
    partial = day / retention.partial_name(chosen.stamp)
    try:
        download_verified(c, program, remote, partial, chosen.size, action)
        damage = verify_file(key, partial)
        if damage:
            raise UserError(f"{action} refused: {remote} is damaged ({damage}): not kept;"
                            f" check the other copies with: invoke backup.verify"
                            f" {final.parent.parent.name} --offsite --all")
        publish(partial, final, action)
    except BaseException:
        partial.unlink(missing_ok=True)
        remove_if_empty(day)
        raise


def fetch_key(action: str) -> bytes:
    """The master key, which fetch needs to authenticate a download before keeping it."""
    try:
        return require_key()
    except UserError as error:
        raise UserError(f"{action}: needs the master key to check the download before"
                        f" keeping it ({error.message.removeprefix('refusing to run: ')})") \
            from None


@task(help={"env": "dev, staging or prod",
            "which": "latest, or a backup's stamp: 2026-04-09T031700"})
def fetch(c, env, which):
    """Download an off-site backup into the local tree and print its path.

    Verified, never overwriting; the path is for backup.restore."""
    action = f"fetch {check_env(env)}"
    dest = offsite.require_destination(action)
    program = rclone_program(c)
    backups = remote_backups(c, program, dest, env, action)
    chosen = offsite.choose_backup(backups, which)
    if chosen is None:
        newest = f" (newest: {backups[-1].relative})" if backups else ""
        raise UserError(f"{action}: no backup {which!r} at {dest.env_root(env)}{newest}")
    final = env_dir(env) / chosen.relative
    if final.exists():
        if final.stat().st_size != chosen.size:
            raise UserError(f"{action}: {final} exists and differs from the off-site copy;"
                            " not overwritten (move it aside to fetch this one)")
        print(final)
        return
    key = fetch_key(action)
    with os_errors_reported(action), stop_on_signal(f"{action} (nothing was kept)"), \
            env_lock(env, action):
        fetch_into(c, program, dest.backup_path(env, chosen.relative), final, chosen, key,
                   action)
    print(final)


# --- schedule -------------------------------------------------------------------------


def last_line(result) -> str:
    text = (result.stderr or result.stdout or "").strip()
    return text.splitlines()[-1] if text else f"exit status {result.exited}"


def launchctl_commands(env: str, plist: Path) -> tuple[str, str]:
    domain = f"gui/{os.getuid()}"
    return (quoted("launchctl", "bootout", f"{domain}/{launchd.label(env)}"),
            quoted("launchctl", "bootstrap", domain, plist))


def systemd_user_manager(c) -> str | None:
    """None when `systemctl --user` reaches a user manager, else why not."""
    if shutil.which("systemctl") is None:
        return "systemctl is not installed"
    probe = c.run("systemctl --user show --property=Version", warn=True, hide=True, in_stream=False)
    return None if probe.ok else f"systemctl --user failed: {last_line(probe)}"


def load_launchd(c, env: str, plist: Path, action: str) -> None:
    bootout, bootstrap = launchctl_commands(env, plist)
    if shutil.which("launchctl") is None:
        install.warn(f"WARNING: launchctl not found, so the job is written but not loaded;"
                     f" on the Mac, run: {bootstrap}")
        return
    c.run(bootout, warn=True, hide=True, in_stream=False)  # fails when not loaded: fine
    result = c.run(bootstrap, warn=True, hide=True, in_stream=False)
    if result.failed:
        raise UserError(f"{action}: wrote {plist} but could not load it ({last_line(result)});"
                        f" run: {bootstrap}")
    print(f"loaded {launchd.label(env)} into launchd")


def load_systemd(c, env: str, action: str) -> None:
    timer = systemd.unit_name(env, "timer")
    enable = f"systemctl --user daemon-reload && systemctl --user enable --now {timer}"
    absent = systemd_user_manager(c)
    if absent is not None:
        install.warn(f"WARNING: no systemd user manager ({absent}), so the timer is written but"
                     f" not enabled; in a session with one, run: {enable}")
        return
    for command in ("systemctl --user daemon-reload", f"systemctl --user enable --now {timer}"):
        result = c.run(command, warn=True, hide=True, in_stream=False)
        if result.failed:
            raise UserError(f"{action}: {command} failed ({last_line(result)}); run: {enable}")
    print(f"enabled {timer}")
    linger = c.run(quoted("loginctl", "show-user", os.getuid(), "--property=Linger", "--value"),
                   warn=True, hide=True, in_stream=False)
    if linger.ok and linger.stdout.strip() == "no":
        install.warn("NOTE: the timer runs only while you are logged in;"
                     " to run it at night regardless, run: loginctl enable-linger $USER")


@task(
    help={
        "env": "dev, staging or prod",
        "platform": "launchd or systemd (default: launchd on macOS, systemd elsewhere)",
        "dry-run": "print what would be written and run, and change nothing",
        "drill": "weekly (Sundays, the default), nightly or off: when the job restore-drills",
    }
)
def install_cron(c, env, platform=None, dry_run=False, drill=drill.DEFAULT_SCHEDULE):
    """Schedule backup.nightly for an env every night at 03:17 (launchd or systemd)."""
    action = f"install-cron {check_env(env)}"
    platform = install.check_platform(platform)
    files = install.schedule_files(env, platform, action, drill)
    log = install.schedule_log(env)
    if dry_run:
        for file in files:
            print(f"would write {file.path} (mode {file.mode:04o}):")
            print(file.content.decode(), end="" if file.content.endswith(b"\n") else "\n")
        print(f"would create {log} (mode 0600) for the output of the nightly runs")
        if platform == "launchd":
            print("would run: " + "; ".join(launchctl_commands(env, files[0].path)))
        else:
            timer = systemd.unit_name(env, "timer")
            print(f"would run: systemctl --user daemon-reload;"
                  f" systemctl --user enable --now {timer}")
        print("dry run: nothing written")
        return
    install.prepare_schedule_dir(files[0].path.parent, action)
    install.prepare_log(env, action)
    for file in files:
        install.write_atomically(file, action)
        print(f"wrote {file.path}")
    if platform == "launchd":
        load_launchd(c, env, files[0].path, action)
    else:
        load_systemd(c, env, action)
    print(f"{env}: backup.nightly {env} every night at"
          f" {schedule.HOUR:02d}:{schedule.MINUTE:02d} local time; output in {log}")
    print(f"{env}: restore drill {drill}" + (" (Sundays, after the backup)"
                                            if drill == "weekly" else ""))
    envs = settings.add_env(env, ENVS)  # so that backup.status checks what runs here
    print(f"{env}: recorded in {settings.settings_file()}: CARABASE_ENVS={','.join(envs)}")


@task(
    help={
        "env": "dev, staging or prod",
        "platform": "launchd or systemd (default: launchd on macOS, systemd elsewhere)",
        "dry-run": "print what would be removed and run, and change nothing",
    }
)
def uninstall_cron(c, env, platform=None, dry_run=False):
    """Remove the nightly schedule of an env (its backups and cron.log stay)."""
    action = f"uninstall-cron {check_env(env)}"
    platform = install.check_platform(platform)
    paths = install.schedule_paths(env, platform)
    if platform == "launchd":
        bootout = launchctl_commands(env, paths[0])[0]
        commands = [bootout] if shutil.which("launchctl") else []
    else:
        timer = systemd.unit_name(env, "timer")
        commands = [f"systemctl --user disable --now {timer}"] if shutil.which("systemctl") else []
    present = [path for path in paths if path.is_symlink() or path.exists()]
    if dry_run:
        for command in commands:
            print(f"would run: {command}")
        for path in present:
            print(f"would remove {path}")
        print("dry run: nothing removed")
        return
    unloaded = False
    for command in commands:
        unloaded |= c.run(command, warn=True, hide=True, in_stream=False).ok
    removed = []
    for path in paths:
        if path.is_symlink() or path.exists():
            try:
                path.unlink()
            except OSError as error:
                raise UserError(f"{action}: cannot remove {path}: {error.strerror or error}") \
                    from None
            removed.append(path)
            print(f"removed {path}")
    if platform == "systemd" and removed and systemd_user_manager(c) is None:
        c.run("systemctl --user daemon-reload", warn=True, hide=True, in_stream=False)
        c.run(f"systemctl --user reset-failed {systemd.unit_name(env, 'service')}",
              warn=True, hide=True, in_stream=False)
    if not removed and not unloaded:
        print(f"{env}: no nightly schedule was installed ({platform})")
        return
    print(f"{env}: nightly schedule removed; the backups and {install.schedule_log(env)} stay")


# --- verify and drill -----------------------------------------------------------------


@task(
    name="verify",
    help={
        "env": "dev, staging or prod",
        "all": "every backup of the env, not only the newest",
        "offsite": "the off-site copies (CARABASE_OFFSITE) instead of the local files",
    },
)
def verify_backups(c, env, all=False, offsite=False):
    """Authenticate backups and check their gzip streams: OK or DAMAGED, one line each."""
    action = f"verify {check_env(env)}"
    key = require_key()
    if offsite:  # (the flag; the module is helpers.offsite)
        verify_offsite_copies(c, env, all, f"{action} --offsite")
        return
    pitr_intact = verify_pitr(c, env, action)  # None: no PITR for this env
    with os_errors_reported(action):
        backups = [path for _, path in list_backups(env)]
    if not backups and pitr_intact is None:
        raise UserError(f"{action}: no backups in {env_dir(env)}")
    if pitr_intact is False:
        raise UserError(f"{action}: the PITR repository is damaged (pgbackrest verify)")
    damaged = 0
    checked = backups if all else backups[-1:]
    for path in checked:
        try:
            reason = verify_file(key, path)
        except FileNotFoundError:  # pruned since the listing: nothing left to verify
            continue
        damaged += reason is not None
        print(f"DAMAGED {path}: {reason}" if reason else f"OK {path}", flush=True)
    if damaged:
        raise UserError(f"{action}: {damaged} of {len(checked)} backups damaged")


def verify_offsite_copies(c, env: str, every: bool, action: str) -> None:
    """verify, on the off-site copies: `rclone cat <copy> | python -m helpers.verify`,
    streamed from the remote, so that nothing but ciphertext is ever written here."""
    if not os.environ.get("CARABASE_OFFSITE"):
        raise UserError(f"{action}: needs CARABASE_OFFSITE, the rclone destination of the"
                        " off-site copies")
    dest = offsite.require_destination(action)
    program = rclone_program(c)
    backups = remote_backups(c, program, dest, env, action)
    if not backups:
        raise UserError(f"{action}: no backups of {env} in {dest.env_root(env)}")
    checked = backups if every else backups[-1:]
    damaged = 0
    for backup in checked:
        remote = dest.backup_path(env, backup.relative)
        result = c.run("umask 077; " + pipeline(quoted(program, "cat", remote),
                                                helper_command("verify")),
                       env=child_env(offsite.rclone_environment()), hide=True, warn=True,
                       in_stream=False)
        reason = None
        if not result.ok:
            said = [line for line in result.stderr.splitlines() if line.startswith("verify: ")]
            rclone_said = [line for line in result.stderr.splitlines()
                           if line.strip() and not line.startswith("verify: ")]
            if rclone_said:  # the copy could not be read: not the same as damaged
                reason = f"cannot read it: {rclone_failure(result)}"
            else:
                reason = said[-1].removeprefix("verify: ") if said else \
                    f"exit status {result.exited}"
        damaged += reason is not None
        print(f"DAMAGED {remote}: {reason}" if reason else f"OK {remote}", flush=True)
    if damaged:
        raise UserError(f"{action}: {damaged} of {len(checked)} off-site copies damaged or"
                        " unreadable")


def verify_file(key: bytes, path: Path, sink=None) -> str | None:
    """helpers.verify.check_backup on a file: None if intact, else the reason."""
    try:
        with open(path, "rb") as source:
            return verify.check_backup(key, source, sink)
    except FileNotFoundError:
        raise
    except OSError as error:
        return f"cannot read it: {error.strerror or error}"


@task(
    name="drill",
    # --file, not a positional FILE: invoke has no optional positional arguments (it
    # requires every positional one, and takes none that has a default).
    help={
        "env": "dev, staging or prod: whose backup, and whose live database to compare with",
        "file": "the .sql.gz.enc backup to drill (default: the env's newest)",
    },
)
def restore_drill(c, env, file=None):
    """Restore a backup into the scratch database, prove it holds the data, drop it."""
    action = f"drill {check_env(env)}"
    key = require_key()
    source = drill_source(env, file, action)
    scratch = drill_database()
    refuse_if_scratch_reaches_an_env(c, scratch, action)
    with os_errors_reported(action):
        ensure_private_dir(env_dir(env))  # for the lock and the record, even with --file
    with stop_on_signal(f"{action} (the scratch database was dropped)"), \
            drill.scratch_lock(action):
        proof, seconds = run_drill(c, env, key, source, scratch, action)
    drill.record(env, proof, source, datetime.now(timezone.utc), seconds)
    line = drill.summary(env, proof, source, seconds)
    if proof.result != "PASS":
        raise UserError(line)
    print(line)


def drill_source(env: str, file: str | None, action: str) -> Path:
    if file is None:
        with os_errors_reported(action):
            backups = list_backups(env)
        if not backups:
            raise UserError(f"{action}: no backups in {env_dir(env)}")
        return backups[-1][1]
    source = user_path(file)
    if not source.is_file():
        raise UserError(f"{action}: no such backup file: {source}")
    return source


def run_drill(c, env: str, key: bytes, source: Path, scratch: Database,
              action: str) -> tuple[drill.Proof, float | None]:
    """The drill itself, on the restore's machinery: decrypt and check the file in one
    pass (counting its COPY rows on the way), apply it into a fresh scratch database,
    count what arrived, always drop it."""
    scanner = dumpscan.DumpScanner()
    named = dumproles.DumpRoles(also=scanner.piece)  # one reader for both
    jobs = restore_sessions(restore_jobs(), source.stat().st_size)  # as a restore would
    with private_tempfile() as plaintext:
        try:
            facts = decrypt_and_check(key, source, plaintext, action, sink=named.feed)
        except DamagedBackup as damaged:  # nothing was touched
            # Wrong key, or damaged? The smallest other backup, tried with the key, tells.
            others = [path for _, path in list_backups(env) if path != source]
            other = min(others, key=lambda path: path.stat().st_size, default=None)
            problem = drill.unreadable_problem(damaged.reason, other,
                                               other is not None and verify.key_opens(key, other))
            return drill.Proof("FAIL", problems=[problem]), None
        named.finish()
        scanner.finish()
        facts.leave_out = roles_left_out(named, restoring_role(c, scratch, action), action)
        live, unreachable = live_tables(c, database(env))
        create_scratch(c, scratch, action)
        try:
            started = time.monotonic()
            try:
                apply_dump(c, plaintext, facts, scratch, action, jobs=jobs)
            except UserError as failed:
                return drill.Proof("FAIL", problems=[f"the restore failed: {failed.message}"]), \
                    time.monotonic() - started
            seconds = time.monotonic() - started
            restored, restored_large_objects = count_restored(c, scratch, action)
        finally:
            drop_scratch(c, scratch, action)
    return drill.judge(scanner.rows, scanner.large_objects, restored, restored_large_objects,
                       live, scanner.unfinished_table, unreachable), seconds


def restoring_role(c, db: Database, action: str) -> dumproles.RestoringRole:
    """What the dump's owners and grants will meet on `db`'s server, as `db`'s role."""
    result = run_sql(c, maintenance_of(db), swap.RESTORING_ROLE_QUERY)
    if not result.ok:
        raise UserError(f"{action}: cannot connect to the server of {db.uri}:"
                        f" {failure(result, db)}")
    return swap.restoring_role(json.loads(result.stdout))


def refuse_if_scratch_reaches_an_env(c, scratch: Database, action: str) -> None:
    """The drill drops its scratch database: it must not be any env's database, judged
    by where the connections lead (as restore's prod guard judges)."""
    scratch_identity = server_identity(c, scratch)
    if scratch_identity is None:
        raise UserError(f"{action}: cannot connect to the server of {scratch.uri}"
                        f" (check {scratch.variable})")
    for env in ENVS:
        db = database(env)
        identity = server_identity(c, db)
        if identity is None and os.environ.get(db.variable):
            raise UserError(f"{action} refused: cannot reach {env}'s database to check that"
                            f" {scratch.variable} does not lead to it; fix {db.variable} or"
                            f" unset it if {env} is not reachable from here")
        if identity == scratch_identity:
            raise UserError(f"{action} refused: {scratch.variable} leads to {env}'s database"
                            f" ({db.uri}), which a drill would drop; point it at a database"
                            " of its own (default postgresql:///carabase_drill)")


# Every ordinary table (leaf partitions included: pg_dump writes their rows, not their
# parent's), outside the system schemas and extensions (whose scripts make their tables).
USER_TABLES = """
    from pg_class c join pg_namespace n on n.oid = c.relnamespace
    where c.relkind = 'r' and n.nspname <> 'information_schema' and n.nspname !~ '^pg_'
      and not exists (select from pg_depend d where d.classid = 'pg_class'::regclass
                      and d.objid = c.oid and d.deptype = 'e')"""

# Estimates, not counts: a count(*) of every table of a live database costs a full scan.
# reltuples once VACUUM or ANALYZE has run; before that, the statistics' live rows.
LIVE_ESTIMATES = f"""
    select json_build_object(
      'tables', coalesce(json_agg(json_build_array(n.nspname, c.relname,
          case when c.reltuples > 0 then c.reltuples
               else coalesce((select n_live_tup from pg_stat_user_tables s
                              where s.relid = c.oid), 0) end)), '[]'),
      'large_objects', (select count(*) from pg_largeobject_metadata))
    {USER_TABLES}"""

# Exact counts in the scratch database, in one query: query_to_xml runs the count(*)
# built for each table. row_security off: a policy would fail the count, not shrink it.
RESTORED_COUNTS = f"""
    set row_security = off;
    select json_build_object(
      'tables', coalesce(json_agg(json_build_array(n.nspname, c.relname,
          (xpath('/row/n/text()', query_to_xml(
              format('select count(*) as n from %I.%I', n.nspname, c.relname),
              false, true, '')))[1]::text::bigint)), '[]'),
      'large_objects', (select count(*) from pg_largeobject_metadata))
    {USER_TABLES}"""


def table_counts(c, db: Database, query: str, owner: str | None = None):
    """Run one of the queries above (as OS user `owner` when given): ({(schema, table):
    rows}, large objects), or the one line saying why it failed."""
    words = psql_words(db, "-At", "-c", query)
    result = c.run(as_owner(owner, *words) if owner else quoted(*words), env=db.child_env(),
                   hide=True, warn=True, in_stream=False)
    if not result.ok:
        return None, failure(result, db)
    try:
        answer = json.loads(result.stdout)
    except ValueError:
        return None, f"unexpected answer from psql: {result.stdout[:80]!r}"
    tables = {(schema, name): rows for schema, name, rows in answer["tables"]}
    return (tables, answer["large_objects"]), None


def live_tables(c, db: Database) -> tuple[drill.Live | None, str | None]:
    counted, why = table_counts(c, db, LIVE_ESTIMATES)
    if counted is None:
        return None, why
    return drill.Live(*counted), None


def count_restored(c, scratch: Database, action: str) -> tuple[dict, int]:
    counted, why = table_counts(c, scratch, RESTORED_COUNTS)
    if counted is None:
        raise UserError(f"{action}: cannot count the rows of {scratch.uri}: {why}")
    return counted


# What marks the scratch database as the drill's own: a leftover is dropped only with it.
SCRATCH_MARK = "carabase restore drill scratch database: dropped after each drill"


def create_scratch(c, scratch: Database, action: str) -> None:
    """A new, empty scratch database (from template0, as pristine as a fresh server's);
    first drop the one a killed drill left behind, never a database of that name the
    drill did not make."""
    server = maintenance_of(scratch)
    probe = run_sql(c, server, "select count(*), coalesce(max(shobj_description(oid,"
                    " 'pg_database')), '') from pg_database where datname = :'name'",
                    name=scratch.name)
    if not probe.ok:
        raise UserError(f"{action}: cannot connect to the server of {scratch.uri}:"
                        f" {failure(probe, scratch)}")
    exists, _, mark = probe.stdout.strip().partition("|")
    if exists != "0":
        if mark != SCRATCH_MARK:
            raise UserError(f"{action} refused: database {scratch.name} exists and was not"
                            f" made by a drill; set {scratch.variable} to another database,"
                            " or drop it yourself if nothing in it matters")
        drop_scratch(c, scratch, action)
    # Created and marked by one psql; dropped again if that is cut short, so that no
    # unmarked scratch database (which later drills would refuse to drop) stays behind.
    try:
        created = run_sql(c, server, swap.create_database_sql(scratch.name, None)
                          + f"""\ncomment on database :"name" is '{SCRATCH_MARK}';""",
                          name=scratch.name)
        if not created.ok:
            raise UserError(f"{action}: cannot create the scratch database {scratch.name}:"
                            f" {failure(created, scratch)}")
    except BaseException:
        drop_scratch(c, scratch, action)
        raise


def drop_scratch(c, scratch: Database, action: str) -> None:
    """Drop the scratch database; if that fails, say so (the next drill drops it)."""
    dropped = drop_database(c, scratch)
    if not dropped.ok:
        print(f"{action}: could not drop the scratch database {scratch.uri}"
              f" ({failure(dropped, scratch)}); the next drill drops it", file=sys.stderr)


# --- point-in-time recovery (pgBackRest) ------------------------------------------------
#
# Handed to pgBackRest: base backups, WAL archiving, restore, verify. This section only
# composes its commands and runs them as the data directory's owner; the config, the
# passphrase, reading its JSON and the judgements are in helpers/pitr.py.

# The server's settings pitr-setup needs, in one query (superuser).
PITR_SETTINGS_QUERY = """
    select json_build_object(
      'data_directory', current_setting('data_directory'),
      'port', current_setting('port'),
      'sockets', current_setting('unix_socket_directories'),
      'wal_level', current_setting('wal_level'),
      'archive_mode', current_setting('archive_mode'),
      'archive_command', current_setting('archive_command'),
      'archive_library', coalesce(current_setting('archive_library', true), ''),
      'archive_timeout', current_setting('archive_timeout'),
      'config_file', current_setting('config_file'),
      'hba_file', current_setting('hba_file'),
      'ident_file', current_setting('ident_file'),
      'role', current_user,
      'superuser', (select rolsuper from pg_roles where rolname = current_user),
      'recovery', pg_is_in_recovery())"""

# Archiving as the server sees it, and the .ready backlog (pg_ls_archive_statusdir: no
# file permissions needed); times as epoch seconds.
PITR_ARCHIVER_QUERY = """
    select json_build_object(
      'last_archived', extract(epoch from last_archived_time),
      'last_archived_wal', last_archived_wal,
      'last_failed', extract(epoch from last_failed_time),
      'last_failed_wal', last_failed_wal,
      'failed_count', failed_count,
      'ready', (select count(*) from pg_ls_archive_statusdir() where name like '%.ready'),
      'oldest_ready', (select extract(epoch from min(modification))
                       from pg_ls_archive_statusdir() where name like '%.ready'),
      'archive_mode', current_setting('archive_mode'),
      'archive_command', current_setting('archive_command'),
      'archive_library', coalesce(current_setting('archive_library', true), ''))
    from pg_stat_archiver"""


def require_pgbackrest(action: str) -> None:
    if shutil.which("pgbackrest") is None:
        raise UserError(f"{action}: pgbackrest is not installed: {pitr.INSTALL_HINT}")


def as_owner(owner: str, *words: object) -> str:
    """A command run as `owner` (the data directory's): as root through runuser (sudo
    where there is none); as that user, as it is; as anyone else, refused."""
    me = pwd.getpwuid(os.geteuid()).pw_name
    if owner == me:
        return quoted(*words)
    if os.geteuid() != 0:
        raise UserError(f"the server's data directory belongs to {owner}: run this as"
                        f" {owner} or as root")
    switch = ("runuser", "-u", owner, "--") if shutil.which("runuser") else \
        ("sudo", "-u", owner, "--")
    return quoted(*switch, *words)


def run_pgbackrest(c, setup: pitr.Setup, *args: str, action: str, check: bool = True):
    """pgbackrest on the env's stanza, as the server's owner; its error as one line."""
    command = as_owner(setup.server.owner, "pgbackrest", f"--config={setup.config}",
                       f"--stanza={setup.env}", *args)
    result = c.run(command, hide=True, warn=True, in_stream=False)
    if check and not result.ok:
        raise UserError(f"{action} failed: {pgbackrest_failure(result)}")
    return result


def pgbackrest_failure(result) -> str:
    """pgBackRest's own error line; a wrong passphrase reads as what it is."""
    text = f"{result.stderr}\n{result.stdout}"
    errors = [line.strip() for line in text.splitlines() if "ERROR:" in line]
    said = errors[0].split("ERROR:", 1)[1].strip() if errors else last_line(result)
    if re.search(r"cipher|decrypt|no backup set found", text, re.I) and \
            "repo1-cipher-pass" not in text:
        return (f"{said} (a repository encrypted under another master key reads like this:"
                " use the key PITR was set up with)")
    return said


def pitr_json(c, db: Database, query: str, action: str) -> dict:
    result = c.run(psql_command(db, "-At", "-c", query), env=db.child_env(), hide=True,
                   warn=True, in_stream=False)
    if not result.ok:
        raise UserError(f"{action}: cannot query the server of {db.uri}: {failure(result, db)}"
                        f" (check {db.variable})")
    return json.loads(result.stdout)


def local_server(live: dict, action: str) -> pitr.Server:
    """The env's server, which must run on this machine, as a superuser sees it."""
    if not live["superuser"]:
        raise UserError(f"{action}: PITR set-up needs a superuser connection; {live['role']}"
                        " is not one")
    if live["recovery"]:
        raise UserError(f"{action}: the server is a standby; set PITR up on the primary")
    data = Path(live["data_directory"])
    try:
        opts = (data / "postmaster.opts").read_text().split()
        owner = pwd.getpwuid(data.stat().st_uid).pw_name
    except (OSError, KeyError):
        raise UserError(f"{action}: the server's data directory {data} is not on this"
                        " machine (or not readable here): PITR is set up where the server"
                        " runs") from None
    socket = next((s.strip() for s in live["sockets"].split(",") if s.strip()), "/tmp")
    # Debian keeps the configuration in /etc: a restore has to borrow its hba files.
    outside = data not in Path(live["config_file"]).parents
    return pitr.Server(data, int(live["port"]), socket, live["role"], owner,
                       Path(opts[0].strip("'\"")).parent,
                       (live["hba_file"], live["ident_file"]) if outside else None)


def owned_dir(path: Path, owner: str) -> None:
    """mkdir -p `path`, 0700; whatever is created (and `path`) owned by `owner`."""
    entry = pwd.getpwnam(owner)
    for directory in (*reversed(path.parents), path):
        if not directory.exists():
            directory.mkdir(mode=0o700)
            os.chown(directory, entry.pw_uid, entry.pw_gid)
    os.chown(path, entry.pw_uid, entry.pw_gid)
    path.chmod(0o700)


def write_owned(path: Path, text: str, owner: str) -> bool:
    """Write `text` to `path` (0600, owned by `owner`) in one step, unless it holds that
    already; whether it was written."""
    if path.exists() and path.read_text() == text:
        return False
    entry = pwd.getpwnam(owner)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
        os.fchown(fd, entry.pw_uid, entry.pw_gid)
    finally:
        os.close(fd)
    os.replace(partial, path)
    return True


def write_pitr_files(c, setup: pitr.Setup, key: bytes, action: str) -> None:
    """The PITR directory and its config; refuses a repository made under another key."""
    passphrase = pitr.cipher_passphrase(key)
    if setup.config.exists() and any(setup.repo.glob("*/*")) and not pitr.same_passphrase(
            pitr.config_passphrase(setup.config.read_text()), passphrase):
        raise UserError(f"{action}: the repository {setup.repo} was set up with another"
                        " master key: use that key (its passphrase is derived from it)")
    # The env's own folder first, as ours: pitr.json lives there, and what it names is
    # what runs as root later; only the PITR folder and below go to the server's user.
    if setup.directory in (env_dir(setup.env), *env_dir(setup.env).parents):
        raise UserError(f"{action}: the PITR directory {setup.directory} would hold the"
                        " backup tree: set CARABASE_PITR_REPO to a folder of its own")
    ensure_private_dir(env_dir(setup.env))
    for directory in (setup.directory, *setup.subdirectories()):
        owned_dir(directory, setup.server.owner)
    text = pitr.render_config(setup, passphrase, pitr.retention_days())
    if write_owned(setup.config, text, setup.server.owner):
        print(f"{action}: wrote {setup.config}")
    probe = c.run(as_owner(setup.server.owner, "test", "-r", setup.config), warn=True,
                  hide=True, in_stream=False)
    if not probe.ok:
        raise UserError(f"{action}: {setup.server.owner} (the server's user) cannot reach"
                        f" {setup.config}: set CARABASE_PITR_REPO to a directory it can"
                        " reach, e.g. /var/lib/carabase-pitr")
    write_owned(pitr.pointer_path(setup.env), pitr.pointer_json(setup), pwd.getpwuid(
        os.geteuid()).pw_name)


def pg_ctl_restart(setup: pitr.Setup) -> str:
    """pg_ctl restart as the owner (it reuses the server's options). -l: the server must
    not write to our pipe, or the restart would never end for us."""
    server = setup.server
    return as_owner(server.owner, server.bindir / "pg_ctl", "-D", server.data_dir, "-l",
                    setup.directory / "log" / "server.log", "restart", "-m", "fast", "-w",
                    "-t", "300")


def configure_archiving(c, db: Database, setup: pitr.Setup, live: dict, restart: bool,
                        action: str) -> None:
    """ALTER SYSTEM what archiving needs; reload; restart (--restart) where needed."""
    changes = pitr.settings_to_change(live, pitr.archive_command(setup))
    for name, value in changes.items():
        result = run_sql(c, db, f'alter system set "{name}" = :\'value\'', value=value)
        if not result.ok:
            raise UserError(f"{action}: cannot set {name}: {failure(result, db)}")
        print(f"{action}: set {name} = {value!r}")
    if changes:
        run_sql(c, db, "select pg_reload_conf()")
    if not any(name in changes for name in pitr.RESTART_SETTINGS):
        return
    command = pg_ctl_restart(setup)
    needing = [name for name in pitr.RESTART_SETTINGS if name in changes]
    if not restart:
        raise UserError(f"{action}: the server must restart for {', '.join(needing)}: run"
                        f" {command}  (or pass --restart), then invoke backup.pitr-setup"
                        f" {setup.env} again")
    result = c.run(command, hide=True, warn=True, in_stream=False)
    if not result.ok:
        raise UserError(f"{action}: the restart failed: {last_line(result)}")
    print(f"{action}: restarted the server")


def read_info(c, setup: pitr.Setup, action: str) -> pitr.Info:
    result = run_pgbackrest(c, setup, "info", "--output=json", action=action)
    try:
        return pitr.parse_info(result.stdout, setup.env)
    except ValueError as error:
        raise UserError(f"{action}: {error}") from None


def check_key(setup: pitr.Setup, key: bytes, action: str) -> None:
    """The master key must be the one the repository's passphrase came from."""
    with os_errors_reported(action):
        said = pitr.config_passphrase(setup.config.read_text())
    if not pitr.same_passphrase(said, pitr.cipher_passphrase(key)):
        raise UserError(f"{action}: the master key is not the one PITR for {setup.env} was"
                        " set up with (the repository's passphrase is derived from it): use"
                        " that key")


@task(name="pitr-setup",
      help={"env": "dev, staging or prod: an env whose server runs on this machine",
            "restart": "restart the server if archiving needs it (else say how)"})
def pitr_setup(c, env, restart=False):
    """Turn on WAL archiving to pgBackRest for a server on this machine (idempotent)."""
    action = f"pitr-setup {check_env(env)}"
    key = require_key()
    require_pgbackrest(action)
    db = database(env)
    live = pitr_json(c, db, PITR_SETTINGS_QUERY, action)
    setup = pitr.Setup(env, pitr.chosen_dir(env), local_server(live, action))
    with os_errors_reported(action):
        write_pitr_files(c, setup, key, action)
    configure_archiving(c, db, setup, live, restart, action)
    run_pgbackrest(c, setup, "stanza-create", action=action)
    run_pgbackrest(c, setup, "check", action=action)
    if read_info(c, setup, action).newest is None:
        pitr_base_backup(c, setup, "full", action)
    else:
        print(f"{action}: the repository has a base backup already")
    print(f"{action}: PITR is on: WAL archived to {setup.repo}; restore with invoke"
          f" backup.pitr-restore {env} --to TIME --data-dir DIR --port P")


def pitr_base_backup(c, setup: pitr.Setup, kind: str, action: str) -> None:
    started = time.monotonic()
    run_pgbackrest(c, setup, "backup", f"--type={kind}", action=action)
    print(f"{action}: {kind} base backup done in {time.monotonic() - started:.1f}s")


@task(name="pitr-backup",
      help={"env": "dev, staging or prod", "type": "full, diff or incr (default: diff,"
            " full when the newest full is a week old)"})
def pitr_backup(c, env, type=None):
    """Take a pgBackRest base backup of an env, then copy the repository off-site.

    Expires what CARABASE_PITR_DAYS no longer needs; copies to <offsite>/<env>/pitr
    when CARABASE_OFFSITE is set."""
    action = f"pitr-backup {check_env(env)}"
    key = require_key()
    require_pgbackrest(action)
    setup = pitr.require_setup(env, action)
    check_key(setup, key, action)
    if type is None:
        fulls = [b.stopped for b in read_info(c, setup, action).backups if b.type == "full"]
        type = pitr.nightly_type(max(fulls, default=None), datetime.now(timezone.utc))
    if type not in ("full", "diff", "incr"):
        raise UserError(f"{action}: --type must be full, diff or incr, not {type!r}")
    with stop_on_signal(f"{action} (pgBackRest resumes or discards it next time)"):
        pitr_base_backup(c, setup, type, action)  # expires by retention after it
        copy_pitr_offsite(c, setup, action)


def copy_pitr_offsite(c, setup: pitr.Setup, action: str) -> None:
    """The repository to <offsite>/<env>/pitr: rclone sync, so that what pgBackRest
    expired goes there too; copy only with CARABASE_OFFSITE_PRUNE=0, or when the remote
    holds backups this repository has no record of (a repository lost and set up again
    must not erase the older history off-site). WAL archived since lives only here until
    the next copy."""
    dest = offsite.destination()
    if dest is None:
        return
    remote = offsite.join(dest.env_root(setup.env), "pitr")
    program = rclone_program(c)
    unknown = unknown_remote_backups(c, program, setup, remote, action) \
        if offsite.prune_remote() else []
    if unknown:
        print(f"{action}: {pitr.unknown_history_note(remote, unknown)}", flush=True)
    verb = "sync" if offsite.prune_remote() and not unknown else "copy"
    result = run_rclone(c, program, verb, setup.repo, remote)
    if not result.ok:
        raise UserError(f"{action}: the off-site copy of {setup.repo} failed:"
                        f" {rclone_failure(result)}")
    print(f"{action}: repository copied to {remote} (rclone {verb})")


def unknown_remote_backups(c, program: Path, setup: pitr.Setup, remote: str,
                           action: str) -> list[str]:
    """The base backups in the remote copy that the local repository has no record of,
    current or expired (backup.history)."""
    listed = run_rclone(c, program, "lsf", "--dirs-only", offsite.join(remote, "backup",
                                                                      setup.env))
    if not listed.ok and listed.exited != 3:  # 3: no such directory yet, a first copy
        raise UserError(f"{action}: cannot list {remote}: {rclone_failure(listed)}")
    local = setup.repo / "backup" / setup.env
    with os_errors_reported(action):
        known = [path.name for path in local.glob("*")] + \
            [path.name for path in local.glob("backup.history/*/*")]
    return pitr.unknown_backups(listed.stdout.splitlines() if listed.ok else [], known)


def flush_archive(c, db: Database, action: str) -> tuple[datetime | None, str]:
    """Ask the live server to archive everything up to now: a commit (recovery stops at
    commits), a WAL switch, then wait briefly until it is archived. The time archived up
    to, or None and why not (down, or its archiving failing: perhaps why we restore)."""
    now = datetime.now(timezone.utc)  # before the commit: the commit comes after it
    switched = run_sql(c, db, "select txid_current();"
                       " select pg_walfile_name(pg_switch_wal())")
    if not switched.ok:
        return None, f"the live server is not reachable ({failure(switched, db)})"
    segment = switched.stdout.split()[-1]
    deadline = time.monotonic() + pitr.FLUSH_WAIT
    while time.monotonic() < deadline:
        try:
            state = pitr.flush_state(pitr_json(c, db, PITR_ARCHIVER_QUERY, action), segment,
                                     now)
        except UserError as error:
            return None, error.message
        if state == "archived":
            return now, ""
        if state == "failed":
            return None, (f"the live server cannot archive {segment} (its archive_command"
                          " fails: see its log)")
        time.sleep(0.2)
    return None, f"the live server has not archived {segment} after {pitr.FLUSH_WAIT}s"


def archived_commit(c, setup: pitr.Setup, info: pitr.Info) -> datetime | None:
    """When the newest commit in the repository's WAL was (None: cannot tell): the newest
    segments, newest first, fetched with archive-get and read by pg_waldump."""
    folder = setup.repo / "archive" / setup.env / (info.archive_id or "")
    waldump = setup.server.bindir / "pg_waldump"
    if info.archive_id is None or not waldump.exists():
        return None
    try:
        names = pitr.segments_newest_first([p.name for p in folder.glob("*/*")])
        scratch = Path(tempfile.mkdtemp(prefix="wal-", dir=setup.directory / "spool"))
    except OSError:
        return None
    try:
        owned_dir(scratch, setup.server.owner)
        for name in names[:pitr.SEGMENTS_READ]:
            # Not async: that would prefetch the segments after this one into the spool.
            got = run_pgbackrest(c, setup, "--no-archive-async", "archive-get", name,
                                 scratch / name, action="archive-get", check=False)
            read = c.run(quoted(waldump, "--rmgr=Transaction", scratch / name),
                         env={"TZ": "UTC"}, hide=True, warn=True, in_stream=False) \
                if got.ok else None
            newest = pitr.last_commit(read.stdout) if read else None
            if newest is not None:
                return newest
        return None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def archived_reach(c, setup: pitr.Setup, info: pitr.Info, target: datetime | None,
                   action: str) -> datetime | None:
    """How far the archive reaches for this restore (None: unknown). A time the archive
    covers already needs nothing of the live server; else it is asked to archive what it
    has. When it cannot, `latest` goes ahead with what is archived, saying up to when,
    and a time past the newest archived commit is refused, saying why."""
    newest = archived_commit(c, setup, info) if target is not None else None
    if newest is not None and target < newest:
        return newest
    flushed, why_not = flush_archive(c, database(setup.env), action)
    if flushed is not None:
        return flushed
    if target is not None:
        if newest is not None:
            raise UserError(f"--to {pitr.utc_text(target)} is after the newest archived"
                            f" commit, {pitr.utc_text(newest)}, and {why_not}: choose an"
                            " earlier time, or --to latest")
        return None  # unknown: recovery itself finds out
    note = pitr.unarchived_note(why_not, archived_commit(c, setup, info), info.archive_max)
    print(f"{action}: {note}", flush=True)
    return None


def empty_restore_dir(path: Path, owner: str, action: str) -> None:
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise UserError(f"{action}: {path} is not an empty directory: a PITR restore builds a"
                        " new data directory, never over anything")
    owned_dir(path, owner)


def restore_cluster(c, setup: pitr.Setup, target: datetime | None, directory: Path,
                    port: int, action: str) -> Database:
    """pgbackrest restore into `directory`, started on `port`, promoted; its URL."""
    server = setup.server
    socket = Path(server.socket_dir) / f".s.PGSQL.{port}"
    if port == server.port or socket.exists():
        raise UserError(f"{action}: port {port} is in use: choose another --port")
    empty_restore_dir(directory, server.owner, action)
    aim = ("--type=default",) if target is None else \
        ("--type=time", f"--target={pitr.target_text(target)}", "--target-action=promote")
    # archive-mode=off: the new cluster must never archive into the env's repository.
    run_pgbackrest(c, setup, f"--pg1-path={directory}", "--archive-mode=off", *aim,
                   "restore", action=action)
    options = (f"-p {port} -c listen_addresses='' -c unix_socket_directories="
               f"{shlex.quote(server.socket_dir)} -c archive_mode=off")
    if server.config_elsewhere:  # the restored directory has no configuration of its own
        hba, ident = server.config_elsewhere
        options += f" -c hba_file={shlex.quote(hba)} -c ident_file={shlex.quote(ident)}"
        write_owned(directory / "postgresql.conf", "# pitr-restore: the live server's"
                    " configuration is outside its data directory; defaults here\n",
                    server.owner)
    started = c.run(as_owner(server.owner, server.bindir / "pg_ctl", "-D", directory, "-l",
                             directory / "startup.log", "-o", options, "-w", "-t", "600",
                             "start"), hide=True, warn=True, in_stream=False)
    if not started.ok:
        raise UserError(f"{action}: the restored cluster did not start (see"
                        f" {directory / 'startup.log'}); {directory} is left for inspection")
    restored = parse_database_url(pitr.cluster_url(server, port, database(setup.env).name),
                                  "the restored cluster")
    wait_promoted(c, server, restored, directory, action)
    return restored


def wait_promoted(c, server: pitr.Server, db: Database, directory: Path, action: str,
                  timeout: float = 600) -> None:
    """Until the restored cluster is out of recovery. Asked as the data directory's owner
    over the socket, as pgBackRest asks the live server: the invoking user may be refused
    (root, under Debian's peer rules); a refused login ends the wait at once."""
    deadline = time.monotonic() + timeout
    ask = as_owner(server.owner, *psql_words(db.on_database("postgres"), "-At", "-c",
                                             "select pg_is_in_recovery()"))
    while time.monotonic() < deadline:
        result = c.run(ask, env=db.child_env(), hide=True, warn=True, in_stream=False)
        if result.ok and result.stdout.strip() == "f":
            return
        refused = pitr.login_refused(result.stderr)
        if refused:
            raise UserError(f"{action}: the restored cluster in {directory} refuses"
                            f" {server.owner}'s login as {server.role}: {refused} (its"
                            " pg_hba.conf is the live server's; the cluster is left running)")
        time.sleep(0.2)
    raise UserError(f"{action}: the restored cluster in {directory} was not promoted after"
                    f" {timeout:.0f}s (see {directory / 'startup.log'})")


def stop_cluster(c, server: pitr.Server, directory: Path) -> None:
    c.run(as_owner(server.owner, server.bindir / "pg_ctl", "-D", directory, "-m", "fast",
                   "-w", "stop"), hide=True, warn=True, in_stream=False)


def pitr_restore_ready(c, env: str, to: str, action: str):
    """The checks before a restore: key, set-up, the target inside the window."""
    key = require_key()
    require_pgbackrest(action)
    setup = pitr.require_setup(env, action)
    check_key(setup, key, action)
    try:
        target = pitr.parse_target(to)
        info = read_info(c, setup, action)
        pitr.check_target(target, info, archived_reach(c, setup, info, target, action)
                          if info.oldest else None)
    except UserError as refused:
        prefix = "" if refused.message.startswith(action) else f"{action} refused: "
        raise UserError(prefix + refused.message) from None
    return setup, target, info


@task(name="pitr-restore",
      help={"env": "dev, staging or prod", "to": "\"YYYY-MM-DD HH:MM:SS[+TZ]\" (local time"
            " without a zone) or latest", "data-dir": "a new, empty directory for the restored"
            " cluster", "port": "the port it starts on"})
def pitr_restore(c, env, to, data_dir, port):
    """Restore an env's server as it was at a moment, as a new cluster on --port.

    The live cluster is never touched."""
    action = f"pitr-restore {check_env(env)}"
    setup, target, _ = pitr_restore_ready(c, env, to, action)
    directory = user_path(data_dir)
    started = time.monotonic()
    with os_errors_reported(action):
        restored = restore_cluster(c, setup, target, directory, pitr.check_port(port), action)
    print(f"{action}: restored to {pitr.utc_text(target) if target else 'latest'} in"
          f" {time.monotonic() - started:.1f}s: {directory} runs on port {port}")
    owner = setup.server.owner  # its login rules are the live server's: as its owner
    print(f"{action}: connect: {as_owner(owner, 'psql', restored.uri)}")
    stop = as_owner(owner, setup.server.bindir / "pg_ctl", "-D", directory, "stop")
    print(f"{action}: to take data from it: {as_owner(owner, 'pg_dump', restored.uri)} ...;"
          f" to stop it: {stop}")
    print(f"{action}: to switch to it, stop the live server and start this one on its port"
          " (its archiving is off: run pitr-setup again for it)")


@task(name="pitr-drill", help={"env": "dev, staging or prod"})
def pitr_drill(c, env):
    """Restore to a recent time into a scratch cluster, check every table, remove it."""
    action = f"pitr-drill {check_env(env)}"
    target_text = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f+00")
    setup, target, info = pitr_restore_ready(c, env, target_text, action)
    started, directory = time.monotonic(), None
    try:
        with os_errors_reported(action):
            directory = drill_directory(setup, info)
            restored = restore_cluster(c, setup, target, directory, pitr.spare_port(), action)
        problems = drill_checks(c, env, restored, setup.server.owner)
    except UserError as error:
        problems = [error.message]
    finally:
        if directory is not None:
            stop_cluster(c, setup.server, directory)
            shutil.rmtree(directory, ignore_errors=True)
    seconds = time.monotonic() - started
    result = "FAIL" if problems else "PASS"
    pitr.write_drill_record(env, result, target, datetime.now(timezone.utc), seconds, problems)
    line = f"pitr-drill {env}: {result} restored to {pitr.utc_text(target)} in {seconds:.1f}s"
    if problems:
        raise UserError(f"{line}: {'; '.join(problems)}")
    print(line)


def drill_directory(setup: pitr.Setup, info: pitr.Info) -> Path:
    """A new directory for the drill's cluster beside the repository (or in
    CARABASE_PITR_DRILL_DIR), once there is room there for the newest base backup."""
    parent = pitr.drill_parent(setup)
    short = pitr.drill_room_problem(parent, shutil.disk_usage(parent).free, info)
    if short:
        raise UserError(short)
    directory = Path(tempfile.mkdtemp(prefix=f"drill-{setup.env}-", dir=parent))
    owned_dir(directory, setup.server.owner)
    return directory


def drill_checks(c, env: str, restored: Database, owner: str) -> list[str]:
    """Every live table in the restored cluster, with rows where the live one has rows."""
    live, why = live_tables(c, database(env))
    counted, why_restored = table_counts(c, restored, RESTORED_COUNTS, owner)
    if live is None or counted is None:
        return [f"cannot count tables: {why or why_restored}"]
    return pitr.drill_problems(live.estimates, counted[0])


def verify_pitr(c, env: str, action: str) -> bool | None:
    """pgbackrest verify on the env's repository, when PITR is set up: whether it is
    intact (None: no PITR). Its text decides, not its exit status."""
    setup = pitr.load_setup(env)
    if setup is None:
        return None
    require_pgbackrest(action)
    # No retries: a file that fails to read fails again, 15 s later by default.
    result = run_pgbackrest(c, setup, "--log-level-console=info", "--job-retry=0", "verify",
                            action=action, check=False)
    problems = pitr.verify_problems(result.stdout + result.stderr)
    if not result.ok and not problems:
        problems = [pgbackrest_failure(result)]
    print(f"DAMAGED {setup.repo}: {'; '.join(problems)}" if problems else f"OK {setup.repo}",
          flush=True)
    return not problems


def pitr_facts(c, env: str, setup: pitr.Setup) -> pitr.Facts:
    """What status reads for an env with PITR; what it cannot read becomes a problem."""
    problems, newest = [], None
    try:
        newest = read_info(c, setup, "status").newest
    except UserError as error:
        problems.append(f"PITR: cannot read the repository: {error.message}")
    try:
        state = pitr_json(c, database(env), PITR_ARCHIVER_QUERY, "status")
    except UserError as error:
        problems.append(f"PITR: {error.message}")
        state = {}
    return pitr.facts_from(newest.stopped if newest else None, state, pitr.last_drill(env),
                           problems, pitr.archive_command(setup))


def with_pitr(c, report, now: datetime):
    try:
        setup = pitr.load_setup(report.env)
    except UserError as unreadable:
        return pitr.with_pitr(report, "WARN", {"warnings": [f"PITR: {unreadable.message}"]})
    if setup is None:
        return pitr.with_pitr(report, "PASS", None)
    verdict, data, _ = pitr.judge(pitr_facts(c, report.env, setup), now)
    return pitr.with_pitr(report, verdict, data)


def pitr_drill_if_due(c, env: str) -> None:
    record = pitr.last_drill(env)
    try:
        last = drill.finished_at(record) if record and "finished" in record else None
    except (TypeError, ValueError):  # a record not written by us: the drill is due
        last = None
    if drill.is_due(drill.drill_schedule(os.environ), last, datetime.now().astimezone(),
                    record.get("result") if record else None):
        pitr_drill(c, env)


# --- nightly --------------------------------------------------------------------------


def nightly_steps(c, env: str) -> list[tuple[str, Callable[[], object] | None]]:
    """What `nightly` runs, in order; a step that is None is skipped tonight."""
    return [
        ("backup", lambda: run_backup(c, env)),
        # push copies tonight's backup and any earlier one whose copy failed (a night the
        # remote was down), and records the newest off-site.
        ("off-site copy", (lambda: push(c, env)) if os.environ.get("CARABASE_OFFSITE") else None),
        ("prune", lambda: prune(c, env)),
        ("drill", lambda: drill_if_due(c, env)),
        # Where PITR is set up: a base backup (full weekly, diff otherwise), its off-site
        # copy and expiry; its drill on the drill's schedule.
        *([("PITR base backup", lambda: pitr_backup(c, env)),
           ("PITR drill", lambda: pitr_drill_if_due(c, env))]
          if pitr.load_setup(env) else []),
    ]


def drill_if_due(c, env: str) -> None:
    """The restore drill on the nights CARABASE_DRILL makes it due (helpers.drill.is_due)."""
    if drill.drill_due(env, os.environ, datetime.now().astimezone()):
        restore_drill(c, env)
    else:
        print(f"nightly {env}: no drill tonight (CARABASE_DRILL="
              f"{drill.drill_schedule(os.environ)})")


def notify_setup(env: str) -> str | None:
    """The check URL, or None; a bad setting is reported and only costs the pings."""
    try:
        return notify.notify_url()
    except UserError as error:
        print(f"nightly {env}: not notifying: {error.message}", file=sys.stderr)
        return None


def send_ping(env: str, url: str | None, signal: str, body: str = "") -> None:
    if url is not None:
        problem = notify.ping(url, signal, body)
        if problem:  # logged, and the night's result stays what it is
            print(f"nightly {env}: {problem}", file=sys.stderr)


def rotate_log(env: str) -> str | None:
    """cron.log rotated past 1 MiB: what to say of it, if anything."""
    log = install.schedule_log(env)
    try:
        return cronlog.rotate(log) and f"{log} passed 1 MiB, kept as {log.name}.1"
    except OSError as error:  # the night matters more than its log
        return f"cannot rotate {log}: {error.strerror or error}"


@task(help={"env": "dev, staging or prod"})
def nightly(c, env):
    """Run one night of an env: backup, off-site copy, prune, drill when due.

    What the schedule runs. Stops at the first failure; pings CARABASE_NOTIFY_URL (start,
    success or fail); rotates cron.log."""
    rotated = rotate_log(check_env(env))  # first: this night starts the new log
    with cronlog.teeing(cronlog.OutputTail()) as tail:
        started = time.monotonic()
        print(f"nightly {env}: started {datetime.now(timezone.utc):%Y-%m-%dT%H:%M:%SZ}")
        if rotated:
            print(f"nightly {env}: {rotated}")
        url = notify_setup(env)
        send_ping(env, url, "start")
        try:
            steps = nightly_steps(c, env)
        except UserError as error:  # an unreadable PITR set-up: the monitor hears of it
            print(error.message, file=sys.stderr)
            send_ping(env, url, "fail", tail.text())
            raise Exit(code=error.code) from None
        for name, step in steps:
            if step is None:
                continue
            try:
                step()
            except (UserError, Exit) as error:
                # The step's own one line; the steps after it do not run.
                code = error.code or 1
                print(error.message or f"nightly {env}: {name} failed (exit status {code})",
                      file=sys.stderr)
                send_ping(env, url, "fail", tail.text())
                raise Exit(code=code) from None
            except Exception as error:  # a bug: still say so to the monitor, then show it
                print(f"nightly {env}: {name} stopped by an unexpected error:"
                      f" {type(error).__name__}: {error}", file=sys.stderr)
                send_ping(env, url, "fail", tail.text())
                raise
        print(f"nightly {env}: done in {time.monotonic() - started:.1f}s")
        send_ping(env, url, "success", tail.text())


# --- the namespace --------------------------------------------------------------------


ns = Collection()
backup_tasks = Collection("backup")
ns.add_collection(backup_tasks)
for _task in (backup_dev, backup_staging, backup_prod, restore, prune, status, install_cron,
              uninstall_cron, undo_restore, push, fetch, verify_backups, restore_drill,
              nightly, pitr_setup, pitr_backup, pitr_restore, pitr_drill):
    backup_tasks.add_task(_task)
