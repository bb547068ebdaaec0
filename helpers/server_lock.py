"""The restore lock: one restore or undo-restore of a database at a time, held by the
database's own server.

Restores of one database share its fixed names (`<name>__carabase_restoring`, the undo
copy...), so two at once would wreck each other's work. What they share whatever their
environment (XDG_RUNTIME_DIR, CARABASE_BACKUP_DIR, TMPDIR, the URL's spelling, another
machine) is the server: the lock is a session-level advisory lock there, keyed by the
database's name, and nothing is written to the backup tree (it may be read-only).

A psql of our own holds it, connected to the server's maintenance database (advisory
locks belong to the database a session is connected to, and the target's own sessions
are closed by the swap). It reads its statements from a pipe only we write to, so it
ends, and the server drops the lock, the moment we are gone, SIGKILL included. It is in
a session of its own and ignores SIGTERM: a Ctrl-C or `kill` of the restore stops the
restore's other processes at once, but the lock is kept until the restore has cleaned
up after itself, and released last.

Its psql starts (in a thread) before the restore's probe and connects while the probe
runs: waiting for its answer afterwards costs a restore a few milliseconds, where a
psql started and connected in its turn would cost it 50 to 150 ms.
"""
from __future__ import annotations

import hashlib
import os
import socket
import threading

from helpers.config import Database
from helpers.errors import UserError
from helpers.lifeline import start_deaf_to_sigterm

# The first half of every Carabase advisory key ('cara'); the second is the database's.
LOCK_CLASS = 0x63617261
LOCKED = "locked"
# No idle_session_timeout (PostgreSQL 14 and later) may end the holder's session; a DO
# block, which prints nothing, as a SET would fail before 14.
KEEP_ALIVE = """do $$ begin
  if current_setting('server_version_num')::int >= 140000 then
    perform set_config('idle_session_timeout', '0', false);
  end if;
end $$;
"""


def lock_key(name: str) -> int:
    """The second half of the key of database `name`: 31 bits of a hash of the name
    (the same on every server and version, unlike hashtext)."""
    digest = hashlib.sha256(f"carabase restore {name}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def try_lock_sql(name: str) -> str:
    """One answer line: `locked`, or who holds the lock (pg_locks, pg_stat_activity:
    the application name is visible to every role, the start time only to some)."""
    key = f"{LOCK_CLASS}, {lock_key(name)}"
    return f"""select case when pg_try_advisory_lock({key}) then '{LOCKED}' else coalesce((
  select concat_ws(', ', nullif(a.application_name, ''), 'as role ' || a.usename,
                   'since ' || to_char(a.backend_start at time zone 'UTC',
                                       'YYYY-MM-DD HH24:MI:SS "UTC"'),
                   'server pid ' || l.pid)
  from pg_locks l left join pg_stat_activity a on a.pid = l.pid
  where l.locktype = 'advisory' and l.granted and l.objsubid = 2
    and l.classid = {LOCK_CLASS} and l.objid = {lock_key(name)}
    and l.database = (select oid from pg_database where datname = current_database())
  limit 1), 'a session that has just ended') end;
"""


def application_name(action: str) -> str:
    """What pg_stat_activity shows of the holder, and so what a refused restore names:
    the command, our pid and host (at most 63 bytes, as the server keeps)."""
    name = f"carabase {action} (pid {os.getpid()} on {socket.gethostname()})"
    return name.encode()[:63].decode(errors="ignore")


class RestoreLock:
    """The lock on database `name`, being taken on `server` (its maintenance database)
    from construction on, by a thread: even starting psql (a few ms) happens beside
    the caller's work. `with` waits for the answer: the body runs holding it, or a
    UserError says who holds it. One never entered is released when it is dropped, or
    when the process ends."""

    def __init__(self, server: Database, name: str, action: str):
        self.name, self.action, self.server = name, action, server
        self.process = None  # psql, once started (helpers.lifeline starts it)
        self._unstarted: OSError | None = None
        argv = ["psql", "-X", "--quiet", "--no-align", "--tuples-only", "--set",
                "ON_ERROR_STOP=on", "--dbname", server.uri]
        env = {**os.environ, **server.child_env(), "PGAPPNAME": application_name(action)}
        self._starting = threading.Thread(target=self._start, args=(argv, env), daemon=True)
        self._starting.start()

    def _start(self, argv: list[str], env: dict[str, str]) -> None:
        try:
            self.process = start_deaf_to_sigterm(argv, env)
        except OSError as error:  # no bash, no more processes
            self._unstarted = error
            return
        self._ask(KEEP_ALIVE + try_lock_sql(self.name))

    def __enter__(self) -> RestoreLock:
        self._starting.join()
        answer = self._answer() if self.process else None
        if answer == LOCKED:
            return self
        self._end()
        if answer is None:
            raise UserError(f"{self.action}: cannot take the restore lock on the server of"
                            f" {self.server.uri}: {self._why_not()}")
        raise UserError(f"{self.action} refused: another restore or undo-restore of"
                        f" {self.name} on this server is running ({answer}); try again when"
                        " it has finished")

    def __exit__(self, *exc_info) -> None:
        self.release()

    def __del__(self) -> None:  # never entered (a refusal came first): let psql end
        self._end()

    def release(self) -> None:
        """Unlock (the server has let go when the answer comes), then let psql end."""
        self._starting.join()
        if self.process and not self.process.stdin.closed and self._ask(
                f"select pg_advisory_unlock({LOCK_CLASS}, {lock_key(self.name)});\n"):
            self._answer()
        self._end()

    def _end(self) -> None:
        if self.process is None or self.process.stdin.closed:
            return
        try:
            self.process.stdin.close()
        except OSError:
            pass
        self.process.wait()

    def _ask(self, sql: str) -> bool:
        try:
            self.process.stdin.write(sql.encode())
            return True
        except OSError:  # psql has ended: the server let go of the lock with it
            return False

    def _answer(self) -> str | None:
        """psql's next line, or None if it ended instead (its stderr says why)."""
        line = self.process.stdout.readline()
        return line.decode(errors="replace").strip() if line else None

    def _why_not(self) -> str:
        if self.process is None:
            return f"cannot start psql: {self._unstarted.strerror or self._unstarted}"
        self.process.wait()
        said = self.process.stderr.read().decode(errors="replace").strip().splitlines()
        return said[0].removeprefix("psql: ") if said else \
            f"psql ended with status {self.process.returncode}"
