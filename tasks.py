"""Carabase backups: encrypted pg_dump backups per env, retention, status, restore, schedule.

    invoke backup.prod                         one encrypted backup of prod
    invoke backup.prune prod [--dry-run]       apply retention to prod's backups
    invoke backup.status [--json]              freshness of every env
    invoke backup.restore dev FILE [--yes]     restore a backup into dev's database
    invoke backup.undo-restore dev [--yes]     swap back what the last restore replaced
    invoke backup.install-cron prod            nightly backup + prune at 03:17
    invoke backup.uninstall-cron prod          remove that schedule

This file is the map: every task, and the shell pipeline it runs (pg_dump, gzip/pigz,
psql). What is not composing or running a command lives in `helpers/`: configuration
(config), the backup tree (tree), retention and pruning (retention, prune), freshness,
process control (process), the envelope (crypto), schedule files (install, launchd,
systemd). Sections: composing commands, backup, restore, prune and status, schedule,
the namespace. See README.md.
"""
from __future__ import annotations

import functools
import os
import shlex
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import invoke
from invoke import Collection, Exit

from helpers import (freshness, install, launchd, progress, retention, schedule, swap,
                     systemd)
from helpers.config import (ENVS, Database, check_env, compress_threads, compression_program,
                            database, env_dir, require_key, user_path)
from helpers.errors import UserError
from helpers.failures import explain_pipeline_failure
from helpers.process import env_lock, stop_on_signal, watching_terminal
from helpers.prune import prune_backups
from helpers.restore import (DumpFacts, ask, confirm_restore, decrypt_and_check,
                             open_fifo_writer, private_tempdir, private_tempfile,
                             restore_lock, sessions_phrase)
from helpers.tree import (ensure_private_dir, fresh_stamp, os_errors_reported, publish,
                          remove_if_empty, remove_stale_partials)

REPO = Path(__file__).resolve().parent


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
        return invoke.task(*args, **kwargs)(reported)
    return decorate


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


def psql_command(db: Database, *args: str) -> str:
    """psql that ignores ~/.psqlrc and stops at the first error."""
    return quoted("psql", "-X", "--quiet", "--set", "ON_ERROR_STOP=on", "--dbname", db.uri, *args)


def compressor() -> str:
    """The compression stage of the backup pipeline, level 9 whichever program; pigz
    runs CARABASE_COMPRESS_THREADS threads (default: one per core)."""
    threads = compress_threads()  # checked even for gzip: a typo must not wait for pigz
    if compression_program() == "pigz":
        return quoted("pigz", "-9", "-p", threads)
    return "gzip -9"


def gzip_check(path: Path) -> str:
    """A command that fails unless `path` holds an intact gzip stream. pigz -t takes half
    the time of gzip -t; its -v makes it refuse trailing junk, as gzip -t does."""
    if compression_program() == "pigz":
        return quoted("pigz", "-t", "-v", path)
    return quoted("gzip", "-t", path)


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

# Plain SQL that builds the database in an empty one, on any machine (a pure create
# script: restore applies it to a fresh database, then swaps that in): no owners, grants
# or tablespaces from the source, and no subscriptions (restoring prod's into dev would
# start pulling prod's changes). Older backups were made with --clean --if-exists; restore
# leaves their DROP block out (helpers/clean_section.py).
PG_DUMP_OPTIONS = (
    "--format=plain",
    "--no-owner",
    "--no-privileges",
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
            command = pipeline(
                quoted("pg_dump", *PG_DUMP_OPTIONS, "--dbname", db.uri),
                compress,
                # After compression: it counts the file as it grows, and costs next to
                # nothing there (a fifth of the bytes, or less, of the dump itself).
                progress_stage(f"{action}: wrote"),
                helper_command("crypto", "encrypt") + " > " + quoted(partial),
            )
            result = c.run(command, env=child_env(db.child_env()), hide=True, warn=True,
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


@task(name="dev")
def backup_dev(c):
    """One encrypted backup of the dev database."""
    run_backup(c, "dev")


@task(name="staging")
def backup_staging(c):
    """One encrypted backup of the staging database."""
    run_backup(c, "staging")


@task(name="prod")
def backup_prod(c):
    """One encrypted backup of the prod database."""
    run_backup(c, "prod")


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
    """psql and gzip on PATH, or one line naming the missing one (a shell's `command not
    found` would otherwise read as a damaged backup or a bad URL)."""
    for program, fix in RESTORE_PROGRAMS.items():
        if shutil.which(program) is None:
            raise UserError(f"{action}: {program} is not installed or not on PATH ({fix})")


def guard_env(c, env: str, i_know: bool, action: str) -> Database:
    """The env's database, once the prod guardrails let `action` at it."""
    check_env(env)
    i_know = i_know or os.environ.get("CARABASE_I_KNOW") == "1"
    if env == "prod" and not i_know:
        raise UserError(f"{action} refused: touching prod's database needs --i-know"
                        " (or CARABASE_I_KNOW=1)")
    target = database(env)
    if env != "prod":
        refuse_if_reaches_prod(c, target, action)
    return target


@task(
    help={
        "env": "the env whose database receives the backup (dev, staging, prod)",
        "file": "the .sql.gz.enc backup to restore",
        "yes": "do not ask for confirmation",
        "i-know": "required to restore into prod (or CARABASE_I_KNOW=1)",
        "no-keep": "drop the replaced database at once instead of keeping it for undo",
        "in-place": "for a role that may not create databases: apply inside the existing"
                    " database, in one transaction (see README for its limits)",
    }
)
def restore(c, env, file, yes=False, i_know=False, no_keep=False, in_place=False):
    """Restore a backup into an env's database: build it fresh, then swap it in."""
    action = f"restore into {env}"
    check_env(env)
    source = user_path(file)
    if not source.exists():
        raise UserError(f"{action}: no such backup file: {source}")
    if not source.is_file():
        raise UserError(f"{action}: {source} is not a file")
    key = require_key()
    require_programs(action)
    target = guard_env(c, env, i_know, action)
    server = maintenance_of(target)

    with restore_lock(env, action), stop_on_signal(f"{action} (nothing was changed)"), \
            os_errors_reported(action), private_tempfile() as plaintext:
        facts = decrypt_and_check(key, source, plaintext, action)
        identity = database_identity(c, server, target.name, action)
        if not in_place:
            refuse_without_createdb(c, server, target, identity, action)
        confirm_restore(source, env, target, yes, action, count_sessions(c, server, target.name),
                        in_place=in_place)
        started = time.monotonic()
        if in_place:
            apply_in_place(c, plaintext, facts, target, identity, action)
        else:
            replace_database(c, plaintext, facts, target, identity, no_keep, action)
    elapsed = time.monotonic() - started
    print(f"{action}: restored {source} into {target.uri} in {elapsed:.1f}s")
    if in_place:
        print(f"{action}: applied in place: there is no undo copy")
    elif identity is None:
        print(f"{action}: {target.name} did not exist before: there is nothing to undo")
    elif no_keep:
        print(f"{action}: the replaced database was dropped (--no-keep): there is nothing"
              " to undo")
    else:
        print(f"{action}: the replaced database is kept as {swap.undo_name(target.name)}"
              f" ({progress.human_bytes(identity.size)}); to put it back: invoke"
              f" backup.undo-restore {env}{' --i-know' if env == 'prod' else ''}")


def replace_database(c, plaintext: Path, facts: DumpFacts, target: Database,
                     identity: swap.DatabaseIdentity | None, no_keep: bool,
                     action: str) -> None:
    """Build the backup into a fresh database, then swap it in for `target`."""
    server = maintenance_of(target)
    fresh = target.on_database(swap.restoring_name(target.name))
    undo = swap.undo_name(target.name) if identity is not None else None
    drop_database(c, fresh)  # what a killed restore left half-built
    create_fresh_database(c, server, fresh.name, identity, action)
    try:
        apply_dump(c, plaintext, facts, fresh, action)
        if undo is not None:
            drop_database(c, target.on_database(undo))  # the previous restore's copy
        result = rename_databases(c, server, swap.swap_sql(target.name, fresh.name, undo,
                                                           identity), action)
        if not result.ok:
            raise UserError(f"{action} failed, {target.name} was not changed: could not swap"
                            f" in the restored database: {failure(result, target)}")
    except BaseException:
        drop_database(c, fresh)  # gone already if the swap committed
        raise
    if undo is not None and no_keep:
        drop_database(c, target.on_database(undo))


def rename_databases(c, server: Database, statements: list[str], action: str):
    """The swap transaction; tried again (three times in all) when a client connected to
    the target between the closing of its sessions and the rename."""
    for _attempt in range(3):
        result = held_transaction(c, server, "\n".join(statements), action)
        if result.ok or "is being accessed by other users" not in result.stderr:
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


def count_sessions(c, server: Database, name: str) -> int:
    """Sessions connected to database `name` now (the swap will close them)."""
    result = run_sql(c, server, "select count(*) from pg_stat_activity where datname = :'name'",
                     name=name)
    return int(result.stdout.strip()) if result.ok and result.stdout.strip().isdigit() else 0


def refuse_without_createdb(c, server: Database, target: Database,
                            identity: swap.DatabaseIdentity | None, action: str) -> None:
    """Before anything is built: the role must create databases, and rename the target
    (own it), or the restore would fail only at the swap."""
    result = run_sql(c, server, "select rolcreatedb or rolsuper, rolsuper or case when"
                                " :'owner' = '' then true else pg_has_role(:'owner', 'MEMBER')"
                                " end from pg_roles where rolname = current_user",
                     owner=identity.owner if identity else "")
    creates, owns = [*result.stdout.strip().split("|"), "", ""][:2]
    if result.ok and creates == "f":
        raise UserError(f"{action} refused: the role of {target.variable} may not create"
                        " databases, and a restore builds a fresh one; grant it CREATEDB, or"
                        " pass --in-place to apply inside the existing database in one"
                        " transaction (see its limits in README.md)")
    if result.ok and identity is not None and owns == "f":
        raise UserError(f"{action} refused: the role of {target.variable} does not own"
                        f" {target.name} (its owner is {identity.owner}), and a restore renames"
                        " it to keep it as the undo copy; connect as its owner, or pass"
                        " --in-place (see its limits in README.md)")


def create_fresh_database(c, server: Database, name: str,
                          identity: swap.DatabaseIdentity | None, action: str) -> None:
    """An empty database `name` on `server`, with `identity`'s owner, encoding, locale."""
    result = run_sql(c, server, swap.create_database_sql(name, identity))
    if not result.ok:
        raise UserError(f"{action}: cannot create the database to restore into ({name}):"
                        f" {failure(result, server)}")


def dump_stream(plaintext: Path, facts: DumpFacts, action: str) -> str:
    """The stages that turn the decrypted file into SQL for psql."""
    # With a person watching, a progress stage feeds gzip from the file, so that its
    # percentage is of the backup itself (gzip and psql keep pace through the pipes).
    # gzip even when pigz is installed: psql sets the pace here, and pigz -dc was
    # measured no faster (its threads compete with psql and the server for the cores).
    watch = progress_stage(f"{action}: read", total=plaintext.stat().st_size)
    if watch:
        decompress = f"{watch} < {quoted(plaintext)} | gzip -dc"
    else:
        decompress = quoted("gzip", "-dc", plaintext)
    if facts.clean_section:  # an older backup: its DROP block has nothing to drop
        decompress += " | " + helper_command("clean_section")
    return decompress


def apply_dump(c, plaintext: Path, facts: DumpFacts, db: Database, action: str) -> None:
    """Apply the dump to `db`, a database nobody else uses, stopping at the first error.
    Only for a database that a later synchronous commit makes durable (the swap).

    No transaction around it: nothing can see `db` until it is swapped in, so a failure
    is undone by dropping it, and one transaction over a big dump would run out of lock
    memory (a lock per table and per large object)."""
    command = pipeline(dump_stream(plaintext, facts, action),
                       psql_command(db, "--file", "-") + " > /dev/null")
    # Each statement commits without waiting for its WAL to reach the disk: safe, because
    # the swap's own COMMIT waits for all WAL written before it, this database's included.
    options = " ".join(filter(None, [os.environ.get("PGOPTIONS"),
                                     "-c synchronous_commit=off"]))
    result = c.run(command, env=child_env({**db.child_env(), "PGOPTIONS": options}),
                   hide=True, warn=True, in_stream=False)
    if not result.ok:
        raise UserError(f"{action} failed, nothing was changed: {failure(result, db)}")


READY = "carabase: ready to commit"


def held_transaction(c, db: Database, sql: str, action: str, stdin_stage: str | None = None,
                     ready=None):
    """Run `sql` on `db` in one transaction that only this process can commit.

    psql reads its script from a FIFO this process writes: BEGIN, `sql`, a marker that
    psql prints once everything succeeded, and, only after that marker (and `ready()`,
    when given, says yes), COMMIT. Should this process die at any point before, even by
    SIGKILL, the kernel closes the FIFO, psql reads its end, and the server rolls the
    transaction back. `stdin_stage` feeds psql's standard input (`\\i /dev/stdin` in
    `sql` reads it). Returns invoke's result; `result.ok` only if COMMIT went through.
    """
    with private_tempdir() as workdir:
        feed = workdir / "transaction.sql"
        os.mkfifo(feed, 0o600)
        command = pipeline(stdin_stage, psql_command(db, "--file", str(feed)) + " > /dev/null")
        promise = c.run(command, asynchronous=True, env=child_env(db.child_env()), hide=True,
                        warn=True, in_stream=False)
        committed = False
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
                            writer.write("COMMIT;\n")
                            committed = True
            except BrokenPipeError:  # psql stopped (an error): nothing to commit
                committed = False
        result = promise.join()
    if not committed and result.ok:
        result.exited = 1  # psql ended happily, but without our COMMIT nothing stays
        result.stderr += "\nthe transaction was not committed"
    return result


def apply_in_place(c, plaintext: Path, facts: DumpFacts, target: Database,
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
    target = guard_env(c, env, i_know, action)
    server = maintenance_of(target)
    undo = swap.undo_name(target.name)
    with restore_lock(env, action), stop_on_signal(f"{action} (nothing was changed)"):
        kept = database_identity(c, server, undo, action)
        if kept is None:
            raise UserError(f"{action}: there is no undo copy of {target.name} ({undo}): no"
                            " restore kept one (--no-keep), or it was undone and dropped")
        current = database_identity(c, server, target.name, action)
        sessions = count_sessions(c, server, target.name)
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
    print(f"{action}: {target.uri} holds again what it held before the last restore")
    if current is not None:
        print(f"{action}: what that restore brought is kept as {undo}"
              f" ({progress.human_bytes(current.size)}); undo again to bring it back")


def server_identity(c, db: Database) -> tuple[str, str] | None:
    """(cluster system identifier, database name) that `db` leads to; None if unreachable.

    The identifier is unique per PostgreSQL cluster, and the name is the one the server
    reports, so URLs spelled differently (localhost vs 127.0.0.1, a socket path, a
    tunnel, a pooler's alias) still compare equal. A database that does not exist yet
    is named as its URL names it, on the cluster its server belongs to.
    """
    def ask(candidate: Database, query: str):
        result = c.run(psql_command(candidate, "-At", "-c", query),
                       env=candidate.child_env(), hide=True, warn=True, in_stream=False)
        return result.stdout.strip() if result.ok else None

    reached = ask(db, "select system_identifier, current_database() from pg_control_system()")
    if reached:
        cluster, _, name = reached.partition("|")
        return cluster, name
    for maintenance in (db.on_database("postgres"), db.on_database("template1")):
        cluster = ask(maintenance, "select system_identifier from pg_control_system()")
        if cluster:
            return cluster, db.name
    return None


def refuse_if_reaches_prod(c, target: Database, action: str) -> None:
    prod = database("prod")
    target_identity = server_identity(c, target)
    if target_identity is None:
        raise UserError(f"{action}: cannot connect to the server of {target.uri}"
                        f" (check {target.variable})")
    prod_identity = server_identity(c, prod)
    if prod_identity is None and os.environ.get(prod.variable):
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


def drop_database(c, db: Database):
    """Drop `db` if it exists. FORCE: an orphaned psql of a killed restore, or the
    backend of one we just stopped, may still be connected to it."""
    return run_sql(c, maintenance_of(db), 'drop database if exists :"name" with (force)',
                   name=db.name)


# --- prune and status -----------------------------------------------------------------


@task(help={"env": "dev, staging or prod",
            "dry-run": "print what would be kept and deleted; delete nothing"})
def prune(c, env, dry_run=False):
    """Apply retention to an env's backups: the last 7 days, 4 weekly, 3 monthly."""
    root = env_dir(env)  # checks env
    if not root.is_dir():
        print(f"{env}: nothing to prune: {root} does not exist")
        return
    with os_errors_reported(f"prune {env}"):
        if dry_run:  # deletes nothing, so it needs no lock and leaves partial files alone
            prune_backups(env, dry_run=True)
            return
        with env_lock(env, "prune"):  # no backup of env can start or finish meanwhile
            remove_stale_partials(env)
            prune_backups(env, dry_run=False)


@task(help={"json": "print one JSON object (for a health endpoint) instead of lines"})
def status(c, json=False):
    """Freshness of every env: exit 0 all PASS, 1 worst is WARN, 2 any FAIL."""
    now = datetime.now(timezone.utc)
    reports = [freshness.freshness_of(env, now) for env in ENVS]
    worst = freshness.worst_status(reports)
    if json:
        print(freshness.status_json(worst, reports))
    else:
        for report in reports:
            print(report.line())
    if freshness.SEVERITY[worst]:
        raise Exit(code=freshness.SEVERITY[worst])


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
    }
)
def install_cron(c, env, platform=None, dry_run=False):
    """Run backup.<env> then backup.prune <env> every night at 03:17 local time."""
    action = f"install-cron {check_env(env)}"
    platform = install.check_platform(platform)
    files = install.schedule_files(env, platform, action)
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
    install.prepare_log(env, action)
    for file in files:
        install.write_atomically(file, action)
        print(f"wrote {file.path}")
    if platform == "launchd":
        load_launchd(c, env, files[0].path, action)
    else:
        load_systemd(c, env, action)
    print(f"{env}: backup then prune every night at"
          f" {schedule.HOUR:02d}:{schedule.MINUTE:02d} local time; output in {log}")


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


# --- the namespace --------------------------------------------------------------------


ns = Collection()
backup_tasks = Collection("backup")
ns.add_collection(backup_tasks)
for _task in (backup_dev, backup_staging, backup_prod, restore, prune, status, install_cron,
              uninstall_cron, undo_restore):
    backup_tasks.add_task(_task)
