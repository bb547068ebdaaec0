"""How restore composes its commands (the end-to-end tests run them for real)."""
from __future__ import annotations

import os
import shlex
import signal
import sys
from pathlib import Path

import pytest
from invoke import MockContext, Result

import tasks
from helpers.config import parse_database_url
from helpers.errors import UserError
from helpers.process import Interrupted
from helpers.restore import DumpFacts, Plaintext
from helpers.swap import DatabaseIdentity

ISAL_INFLATE = f"{sys.executable} -m isal.igzip -dc"


def plaintext_at(path: Path, size: int = 0) -> Plaintext:
    """A Plaintext of `size` bytes that children open by its name (as without /proc)."""
    path.write_bytes(b"")
    os.truncate(path, size)
    return Plaintext(path.open("r+b"), str(path.parent), name=str(path))


def test_apply_dump_stops_at_the_first_error_and_skips_an_old_clean_block(tmp_path,
                                                                          monkeypatch):
    monkeypatch.setattr(tasks, "watching_terminal", lambda: None)
    monkeypatch.setattr(tasks, "isal_loads", lambda: True)
    monkeypatch.delenv("PGOPTIONS", raising=False)
    plaintext = plaintext_at(tmp_path / "dump.sql.gz", tasks.SMALL_BACKUP)
    db = parse_database_url("postgresql://u:pw@h/db__carabase_restoring", "V")
    context = MockContext(run=Result(exited=0), repeat=True)

    tasks.apply_dump(context, plaintext, DumpFacts(clean_section=True), db, "restore into dev")

    (command,), options = context.run.call_args
    assert command.startswith(f"set -o pipefail; {ISAL_INFLATE} < {plaintext.path} | ")
    assert "-m helpers.clean_section | psql -X --quiet --set ON_ERROR_STOP=on" in command
    assert "--dbname postgresql://u@h/db__carabase_restoring" in command
    assert "pw" not in command.replace("pipefail", "")
    assert options["env"]["PGOPTIONS"] == "-c synchronous_commit=off"


@pytest.mark.parametrize("isal, size, inflate", [
    # A pure create script goes straight from ISA-L to psql...
    (True, tasks.SMALL_BACKUP, ISAL_INFLATE),
    # ...but gzip inflates a small backup: it starts faster than Python.
    (True, tasks.SMALL_BACKUP - 1, "gzip -dc"),
    # Where ISA-L does not load, gzip inflates whatever the size.
    (False, tasks.SMALL_BACKUP, "gzip -dc"),
], ids=["isal-for-a-big-backup", "gzip-for-a-small-backup", "gzip-where-isal-cannot-load"])
def test_the_dump_stream_inflates_with_the_fastest_program_there(tmp_path, monkeypatch, isal,
                                                                 size, inflate):
    monkeypatch.setattr(tasks, "watching_terminal", lambda: None)
    monkeypatch.setattr(tasks, "isal_loads", lambda: isal)
    monkeypatch.setattr(tasks.shutil, "which", lambda program: f"/usr/bin/{program}")
    plaintext = plaintext_at(tmp_path / "dump.sql.gz", size)

    stream = tasks.dump_stream(plaintext, DumpFacts(clean_section=False), "restore")

    assert stream == f"{inflate} < {plaintext.path}"


def test_the_dump_stream_leaves_out_roles_only_when_there_are_some(tmp_path, monkeypatch):
    monkeypatch.setattr(tasks, "watching_terminal", lambda: None)
    monkeypatch.setattr(tasks, "isal_loads", lambda: False)
    plaintext = plaintext_at(tmp_path / "dump.sql.gz", 10)

    plain = tasks.dump_stream(plaintext, DumpFacts(), "restore")
    filtered = tasks.dump_stream(plaintext, DumpFacts(leave_out=("--lacks=reader",
                                                                 "--lacks=o'dd")), "restore")

    assert "dumproles" not in plain
    assert filtered == plain + (f" | {sys.executable} -m helpers.dumproles --lacks=reader"
                                f" '--lacks=o'\"'\"'dd'")


def test_a_role_without_createdb_is_refused_pointing_to_in_place():
    db = parse_database_url("postgresql:///carabase_dev", "CARABASE_DEV_DATABASE_URL")
    context = MockContext(run=Result(
        stdout='{"cluster": "7712428185212053603", "database": "carabase_dev",'
               ' "identity": null, "creates": false, "owns": null, "sessions": 0,'
               ' "restoring": {"name": "app", "superuser": false, "roles": {},'
               ' "extensions": {}}}\n'))

    probe = tasks.probe_target(context, db, "restore")
    with pytest.raises(UserError, match=r"may not create databases.*--in-place"):
        tasks.refuse_without_createdb(db, probe, "restore")
    (command,), _ = context.run.call_args
    assert "--set name=carabase_dev" in command  # one psql asks everything, name by psql
    assert "--dbname postgresql:///carabase_dev" in command  # on the target itself


def test_the_one_psql_creates_the_fresh_database_then_connects_to_it(tmp_path):
    fresh = parse_database_url("postgresql://u:pw@h/app__carabase_restoring?sslmode=require",
                               "V")
    server = fresh.on_database("template1")
    plaintext = plaintext_at(tmp_path / "dump.sql.gz")
    context = MockContext(run=Result(exited=0))
    create = ['DROP DATABASE IF EXISTS "app__carabase_restoring" WITH (FORCE);',
              'CREATE DATABASE "app__carabase_restoring" WITH TEMPLATE template0;']

    tasks.apply_dump(context, plaintext, DumpFacts(clean_section=False), fresh, "restore",
                     create=create, server=server)

    [command] = [call.args[0] for call in context.run.call_args_list]
    psql = shlex.split(command.rsplit("|", 1)[1].removesuffix("> /dev/null"))
    assert psql[psql.index("--dbname") + 1] == "postgresql://u@h/template1?sslmode=require"
    assert psql[psql.index("--dbname") + 2:] == [
        "--command", create[0], "--command", create[1],  # each on its own: no transaction
        # then the fresh database by its URI, as any psql here connects; and the variable
        # is gone before the dump is read, which could hold `:fresh` outside quotes.
        "--set", "fresh=postgresql://u@h/app__carabase_restoring?sslmode=require",
        "--command", r"\connect :fresh", "--command", r"\unset fresh", "--file", "-"]
    assert "pw" not in command.replace("pipefail", "")


def test_several_sessions_apply_through_the_parallel_apply_on_a_lifeline(tmp_path):
    fresh = parse_database_url("postgresql://u:pw@h/app__carabase_restoring", "V")
    plaintext = plaintext_at(tmp_path / "dump.sql.gz")
    context = MockContext(run=[Result(exited=0), Result(exited=0)])
    create = ['DROP DATABASE IF EXISTS "app__carabase_restoring";',
              'CREATE DATABASE "app__carabase_restoring" WITH TEMPLATE template0;']

    tasks.apply_dump(context, plaintext, DumpFacts(clean_section=False), fresh, "restore",
                     create=create, server=fresh.on_database("postgres"), jobs=3)

    [make, command] = [call.args[0] for call in context.run.call_args_list]
    # The sessions only connect: the database is made first, each statement on its own.
    psql = shlex.split(make)
    assert psql[psql.index("--dbname") + 1:] == [
        "postgresql://u@h/postgres", "--command", create[0], "--command", create[1]]
    # fd 3, the lifeline, is the shell's stdin: the pipe invoke holds.
    assert command.startswith("exec 3<&0; set -o pipefail; ")
    apply = shlex.split(command.rsplit("|", 1)[1])
    assert apply[1:] == ["-m", "helpers.parallel_apply", "--jobs", "3",
                         "--dbname", "postgresql://u@h/app__carabase_restoring",
                         "--lifeline", "3"]
    assert "pw" not in make + command.replace("pipefail", "")


@pytest.mark.parametrize("jobs, clean_section", [(1, False), (4, True)],
                         ids=["one-session", "older-backup"])
def test_one_session_or_an_older_backup_applies_in_one_psql(tmp_path, jobs, clean_section):
    db = parse_database_url("postgresql://u@h/app__carabase_restoring", "V")
    plaintext = plaintext_at(tmp_path / "dump.sql.gz")
    context = MockContext(run=Result(exited=0))

    tasks.apply_dump(context, plaintext, DumpFacts(clean_section=clean_section), db,
                     "restore", jobs=jobs)

    [command] = [call.args[0] for call in context.run.call_args_list]
    assert "parallel_apply" not in command and "3<&0" not in command
    assert command.endswith("psql -X --quiet --set ON_ERROR_STOP=on --dbname"
                            " postgresql://u@h/app__carabase_restoring --file - > /dev/null")


def interrupted_swap(monkeypatch, oid_after: str):
    """replace_database with a swap that a SIGTERM cut short, and a server that says
    which database holds the target's name afterwards."""
    monkeypatch.setattr(tasks, "apply_dump", lambda *args, **kwargs: None)

    def swap_cut_short(*args, **kwargs):
        raise Interrupted(signal.SIGTERM)

    monkeypatch.setattr(tasks, "rename_databases", swap_cut_short)
    context = MockContext(run=[Result(exited=0), Result(stdout=oid_after + "\n")])
    target = parse_database_url("postgresql:///app", "CARABASE_DEV_DATABASE_URL")
    identity = DatabaseIdentity(owner="app", oid=16384)
    return lambda: tasks.replace_database(context, Path("/nonexistent"), DumpFacts(), target,
                                          identity, False, "restore into dev")


def test_interrupted_after_the_swap_committed_says_the_backup_is_in_place(monkeypatch):
    replace = interrupted_swap(monkeypatch, oid_after="24576")  # another database now

    with pytest.raises(UserError, match="interrupted by SIGTERM after the swap had committed:"
                                        " app holds the backup") as raised:
        replace()
    assert raised.value.code == 128 + signal.SIGTERM


def test_interrupted_before_the_swap_committed_stays_an_interruption(monkeypatch):
    replace = interrupted_swap(monkeypatch, oid_after="16384")  # the same database

    with pytest.raises(Interrupted):
        replace()


def test_unconfigured_prod_that_cannot_be_connected_to_is_looked_up_only_under_its_name(
        monkeypatch):
    monkeypatch.delenv("CARABASE_PROD_DATABASE_URL", raising=False)
    target = parse_database_url("postgresql:///carabase_dev", "CARABASE_DEV_DATABASE_URL")
    cluster = "7712428185212053603"

    # Another name than prod's: one failed connection to carabase_prod says enough.
    context = MockContext(run=[Result(exited=2)])
    tasks.refuse_if_reaches_prod(context, target, (cluster, "carabase_dev"), "restore",
                                 tasks.look_up_prod(context))
    assert context.run.call_count == 1

    # Prod's very name: the server's identity decides, and it is the same cluster.
    context = MockContext(run=[Result(exited=2), Result(stdout=f"{cluster}|f\n")])
    with pytest.raises(UserError, match="leads to the prod database"):
        tasks.refuse_if_reaches_prod(context, target, (cluster, "carabase_prod"), "restore",
                                     tasks.look_up_prod(context))


def test_configured_prod_whose_database_exists_but_refuses_us_is_not_guessed(monkeypatch):
    # Connection limit reached, CONNECT revoked...: its URL may be a pooler's alias of the
    # target itself, so "another name" proves nothing. Refuse.
    monkeypatch.setenv("CARABASE_PROD_DATABASE_URL", "postgresql://pooler:6432/prod_alias")
    target = parse_database_url("postgresql:///app", "CARABASE_STAGING_DATABASE_URL")
    context = MockContext(run=[Result(exited=2), Result(stdout="7712428185212053603|t\n")])
    with pytest.raises(UserError, match="cannot reach the prod database to check"):
        tasks.refuse_if_reaches_prod(context, target, ("7712428185212053603", "app"),
                                     "restore into staging", tasks.look_up_prod(context))
