"""python -m helpers.parallel_apply: apply pg_dump's plain SQL to a fresh database over
several psql sessions, the way pg_restore -j spreads a directory dump.

    ... | python -m helpers.parallel_apply --jobs N --dbname URI [--lifeline FD]

It reads the inflated SQL once, on stdin (helpers.dumpsql cuts it into entries), and
starts up to N `psql --file -` sessions itself, each fed through a pipe, environment
inherited (the password travels there, never in argv), each connected to URI (the
fresh database, made beforehand). What goes where (Planner):

  - the schema, and every entry it does not know or whose order matters (triggers,
    rules, policies, grants, index attachments, materialized view data...), in the
    dump's order in one session;
  - once the schema is in, each table's COPY block, each SEQUENCE SET and the large
    objects' data in one of the sessions, the first that is free;
  - indexes and keys (INDEX, CONSTRAINT) likewise, each once its table's rows are in
    (it queues behind them in their session, or starts in a free one while other
    tables still load), those of one table one after another (a key locks its table);
  - once all data is in, the checks pg_dump adds after it (CHECK CONSTRAINT);
  - once every key is in, the foreign keys, never two at once on a table.

Between the others, a barrier: every session finishes what it was sent. A session reports
where it is by markers: a SELECT of a random token after each unit of work, which psql
prints (meta-commands would not do: after pg_dump's `\\restrict` psql refuses them).
The settings a dump makes for the rest of the script (its SETs, search_path,
`\\restrict`) reach every session before its next unit.

A failure in any session stops them all (SIGINT: psql cancels the running statement);
the one line on stderr names the entry it failed in, from its header (psql's line
numbers count per session). With --lifeline FD (a pipe whose writer is the controlling
process), the sessions are stopped as soon as that process is gone. Memory is bounded
whatever the dump's size: at most 64 MiB queued for the sessions (QUEUE_BYTES), what
the reader holds (about 1 MiB), and the entries of the schema not yet applied.
"""
from __future__ import annotations

import argparse
import fcntl
import io
import os
import re
import secrets
import signal
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Union

from helpers.dumpsql import COPY_STATEMENT, Header, Piece, code_start, read_dump, statements
from helpers.lifeline import start_with_pipes, watch_lifeline

ORDERED, DATA, BUILD, CHECKS, FOREIGN_KEYS = (
    "ordered", "data", "build", "checks", "foreign keys")
STAGES = {
    "TABLE DATA": DATA, "SEQUENCE SET": DATA, "BLOBS": DATA,
    "INDEX": BUILD, "CONSTRAINT": BUILD,
    # A check pg_dump adds after the data (NOT VALID) must not see a row arrive later,
    # even one a COPY into a partitioned table's root routes: after every table's rows.
    "CHECK CONSTRAINT": CHECKS,
    "FK CONSTRAINT": FOREIGN_KEYS,
}
# A table's indexes and keys need only its own rows: no barrier between the two stages.
# They queue behind the table's COPY in its session (pick_session), or start at once in
# a free one when the rows are in, while other tables still load.
PHASE = {BUILD: DATA}
# pg_dump writes an object's comment (or label) right after the object.
FOLLOWERS = ("COMMENT", "SECURITY LABEL")

NAME = rb'(?:"(?:[^"]|"")*"|[A-Za-z0-9_$\x80-\xff]+)'
QUALIFIED = rb"(" + NAME + rb"(?:\." + NAME + rb")?)"
TABLE_OF = re.compile(rb"^(?:ALTER TABLE|CREATE (?:UNIQUE )?INDEX " + NAME
                      + rb" ON)(?: ONLY)? " + QUALIFIED, re.MULTILINE)
ROWS_OF = re.compile(rb"^COPY " + QUALIFIED, re.MULTILINE)
REFERENCED = re.compile(rb"\bREFERENCES " + QUALIFIED)
# Statements that set something for the rest of the script.
MAY_SET = re.compile(rb"^(?:SET |SELECT pg_catalog\.set_config\(|\\restrict )", re.MULTILINE)
SETTING = re.compile(rb"SET (?!LOCAL |SESSION |TRANSACTION )(\w+)"
                     rb"|SELECT pg_catalog\.set_config\('(\w+)'.*, false\)"
                     rb"|(\\restrict) ", re.DOTALL)
# What may wait for the sessions, all together: enough for the reader to be well into
# the next table while a session is still loading the end of a big one.
QUEUE_BYTES = 64 * 1024 * 1024
PIPE_SIZE = 1024 * 1024
# Entries a session remembers (to name the one that fails) before it asks for a marker.
ENTRIES_KEPT = 1000
ERROR_LINE = re.compile(r"psql:<stdin>:(\d+): (?=(?:ERROR|FATAL|PANIC):)")


# --- what goes where (pure) -------------------------------------------------------------


@dataclass(frozen=True)
class Unit:
    """Work for one session: an entry (and its followers), or a run of ordered entries."""

    stage: str
    tables: frozenset[bytes] = frozenset()  # what it locks: never two such at once


@dataclass(frozen=True)
class Barrier:
    """Wait until every session has finished what it was sent."""


@dataclass(frozen=True)
class Start:
    unit: Unit


@dataclass(frozen=True)
class Send:
    piece: Piece


@dataclass(frozen=True)
class End:
    """The current unit is complete: its session reports when it gets there."""


Action = Union[Barrier, Start, Send, End]  # (not `|`: Python 3.9 evaluates this line)


def stage_of(header: Header, text: bytes) -> Unit:
    stage = STAGES.get(header.type, ORDERED)
    if stage == ORDERED:
        return Unit(stage)
    if stage == DATA:  # a table's rows: its indexes and keys queue behind them
        return Unit(stage, frozenset(ROWS_OF.findall(text)))
    tables = frozenset(TABLE_OF.findall(text) + REFERENCED.findall(text))
    if stage == FOREIGN_KEYS and not tables:
        return Unit(ORDERED)  # cannot tell what it locks: on its own
    return Unit(stage, tables)


class Planner:
    """Turns the dump's pieces into actions for the sessions, in order."""

    def __init__(self) -> None:
        self.unit: Unit | None = None  # the unit pieces go to now
        self.running = ORDERED  # the stage the sessions may be in without a barrier

    def route(self, piece: Piece) -> list[Action]:
        if self.unit is not None and not piece.starts_entry:
            return [Send(piece)]
        header = piece.header
        if self.unit is None or header is None:  # the preamble, before any entry
            self.unit = Unit(ORDERED)
            return [Start(self.unit), Send(piece)]
        if header.type in FOLLOWERS and self.unit.stage != ORDERED:
            return [Send(piece)]  # with its object, in the same session
        unit = stage_of(header, piece.text)
        if unit.stage == ORDERED and self.unit.stage == ORDERED:
            return [Send(piece)]
        actions: list[Action] = [End()]
        if PHASE.get(unit.stage, unit.stage) != PHASE.get(self.running, self.running):
            actions.append(Barrier())
        self.running = unit.stage
        self.unit = unit
        return [*actions, Start(unit), Send(piece)]

    def finish(self) -> list[Action]:
        return [End()] if self.unit is not None else []


def pick_session(in_flight: list[frozenset[bytes] | None], tables: frozenset[bytes],
                 jobs: int) -> int | None:
    """Which session takes a unit locking `tables`: the one already working on one of
    them (it queues there); else the first idle one; else a new one, while fewer than
    `jobs` run (returns the next index); None: wait. in_flight[i] holds the tables of
    session i's unfinished units, None when it is idle."""
    sharing = [i for i, held in enumerate(in_flight) if held and held & tables]
    if len(sharing) == 1:
        return sharing[0]
    if sharing:
        return None
    idle = [i for i, held in enumerate(in_flight) if held is None]
    if idle:
        return idle[0]
    return len(in_flight) if len(in_flight) < jobs else None


def settings_in(text: bytes) -> list[tuple[bytes, bytes]]:
    """The statements in an "sql" piece that set something for the rest of the script,
    as (what they set, the statement)."""
    if not MAY_SET.search(text):  # most pieces: no need to lex them
        return []
    found = []
    for statement in statements(text):
        start = code_start(statement)
        match = SETTING.match(statement, start)
        if match:
            key = next(group for group in match.groups() if group)
            found.append((key.lower(), statement[start:].rstrip() + b"\n"))
    return found


def ends_cleanly(piece: Piece) -> bool:
    """Whether the dump may end after `piece`: not inside a COPY block's rows, nor inside
    a statement (a marker after either would never be reached)."""
    if piece.kind == "data":
        return piece.ends_copy
    said = [statement[code_start(statement):]  # after blank lines and comments
            for statement in statements(piece.text)]
    last = next((statement for statement in reversed(said) if statement), b"")
    if not last or last.startswith(b"\\"):  # nothing, or a meta-command line
        return True
    return last.endswith(b";") and not COPY_STATEMENT.match(last)  # cut after its `;`


def describe(header: Header) -> str:
    name = f"{header.schema}.{header.name}" if header.schema else header.name
    return f"{header.type} {name}"


def explain_failure(errors: list[str], entries: list[tuple[int, Header]],
                    status: int | None) -> str:
    """The line that says why a session failed (then psql's DETAIL and HINT lines), the
    entry named from `entries` ((first line, header) of each entry, as sent to it)."""
    lines = [line for line in errors if line.strip()]
    for at, line in enumerate(lines):
        error = ERROR_LINE.match(line)
        if error:
            number = int(error.group(1))
            entry = next((header for start, header in reversed(entries) if start <= number),
                         None)
            where = f" in {describe(entry)}" if entry else ""
            following = [extra for extra in lines[at + 1:at + 4]
                         if extra.startswith(("DETAIL:", "HINT:"))]
            return "\n".join([f"psql: failed{where}: {line[error.end():]}", *following])
    if not lines:
        return f"psql: a session ended early (exit status {status})"
    first = lines[0] if lines[0].startswith("psql:") else f"psql: {lines[0]}"
    return "\n".join([first, *(extra for extra in lines[1:3]
                               if extra.startswith(("DETAIL:", "HINT:")))])


# --- the sessions -----------------------------------------------------------------------


def grow_pipe(fd: int) -> None:
    """Linux: a bigger pipe to a session, fewer wake-ups of psql and of its writer."""
    try:
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    except (AttributeError, OSError):
        pass


class SessionFailed(Exception):
    pass


class DumpCut(Exception):
    """The dump ends inside a statement or a COPY block (its inflater was stopped)."""


class Budget:
    """The bytes queued for all sessions together, and the lock their queues share."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.queued = 0
        self.room = threading.Condition()
        self.broken = False  # a session ended: what is queued for it will never drain


@dataclass
class Session:
    """One psql, fed through a queue by a writer thread; a reader thread watches its
    output for markers."""

    index: int
    process: object
    token: bytes
    changed: threading.Condition  # shared: notified on every marker and every end
    budget: Budget
    sent: int = 0  # markers sent
    reached: int = 0  # markers psql has printed
    ended: bool = False
    lines: int = 0  # lines written so far (psql's error messages count them)
    # (first line, header) of the entries written since the last marker psql reached
    entries: deque[tuple[int, Header]] = field(default_factory=deque)
    marks: deque[tuple[int, int]] = field(default_factory=deque)  # (marker, its line)
    in_flight: dict[int, frozenset[bytes]] = field(default_factory=dict)
    settings: dict[bytes, bytes] = field(default_factory=dict)
    errors: deque[str] = field(default_factory=lambda: deque(maxlen=200))

    def __post_init__(self) -> None:
        self.queue: deque[bytes | None] = deque()
        self.room = self.budget.room
        self.threads = [threading.Thread(target=target, daemon=True)
                        for target in (self._write, self._read_markers, self._read_errors)]
        for thread in self.threads:
            thread.start()

    # -- the router's side --

    def write(self, data: bytes, header: Header | None = None) -> None:
        if header is not None:
            self.forget_done()
            self.entries.append((self.lines + 1, header))
        self.lines += data.count(b"\n")
        with self.room:
            while self.budget.queued > self.budget.limit and not self.budget.broken:
                self.room.wait()
            if self.budget.broken:
                raise SessionFailed
            self.queue.append(data)
            self.budget.queued += len(data)
            self.room.notify_all()

    def mark(self, tables: frozenset[bytes]) -> None:
        self.sent += 1
        self.in_flight[self.sent] = tables
        self.marks.append((self.sent, self.lines + 2))
        self.write(b"\nSELECT '" + self.token + b" %d';\n" % self.sent)

    def forget_done(self) -> None:
        """Drop the entries before the last marker psql reached: none can fail now."""
        done = 0
        while self.marks and self.marks[0][0] <= self.reached:
            done = self.marks.popleft()[1]
        while self.entries and self.entries[0][0] < done:
            self.entries.popleft()

    def close(self) -> None:
        with self.room:
            self.queue.append(None)
            self.room.notify_all()

    def holds(self) -> frozenset[bytes] | None:
        """The tables of its unfinished units; None when it has finished them all."""
        for done in [seq for seq in self.in_flight if seq <= self.reached]:
            del self.in_flight[done]
        if not self.in_flight:
            return None
        return frozenset().union(*self.in_flight.values())

    # -- its threads --

    def _write(self) -> None:
        pipe = self.process.stdin
        grow_pipe(pipe.fileno())
        try:
            while True:
                with self.room:
                    while not self.queue:
                        self.room.wait()
                    data = self.queue.popleft()
                if data is None:
                    break
                view = memoryview(data)
                while view:
                    view = view[pipe.write(view):]
                with self.room:
                    self.budget.queued -= len(data)
                    self.room.notify_all()
        except OSError:  # psql is gone: its reader says so
            pass
        finally:
            try:
                pipe.close()
            except OSError:
                pass

    def _read_markers(self) -> None:
        prefix = self.token + b" "
        for line in io.BufferedReader(self.process.stdout):
            if line.startswith(prefix):
                with self.changed:
                    self.reached = int(line[len(prefix):])
                    self.changed.notify_all()
        self.process.wait()
        with self.room:
            self.ended = self.budget.broken = True
            self.room.notify_all()
        with self.changed:
            self.changed.notify_all()

    def _read_errors(self) -> None:
        for line in io.BufferedReader(self.process.stderr):  # the last lines: psql stops
            self.errors.append(line.decode(errors="replace").rstrip("\n"))  # at its error

    def failure(self) -> str:
        self.threads[2].join(timeout=5)  # psql has ended: read the rest of what it said
        return explain_failure(list(self.errors), list(self.entries),
                               self.process.returncode)


# --- the router -------------------------------------------------------------------------


class Applier:
    def __init__(self, jobs: int, command: list[str]) -> None:
        self.jobs = jobs
        self.command = command
        self.sessions: list[Session] = []
        self.changed = threading.Condition()
        self.token = b"carabase-apply-" + secrets.token_hex(8).encode()
        self.settings: dict[bytes, bytes] = {}
        self.current: Session | None = None
        self.unit: Unit | None = None
        self.budget = Budget(QUEUE_BYTES)

    def run(self, pieces: Iterable[Piece], sql_filter: Callable[[bytes], bytes] | None) -> None:
        planner = Planner()
        piece = None
        for piece in pieces:
            if sql_filter is not None and piece.kind == "sql":
                piece = Piece(piece.kind, piece.header, sql_filter(piece.text),
                              piece.starts_entry, piece.ends_copy)
            for action in planner.route(piece):
                self.act(action)
        if piece is not None and not ends_cleanly(piece):
            raise DumpCut(describe(piece.header) if piece.header else "its first statements")
        for action in planner.finish():
            self.act(action)
        # No last barrier: psql runs to the end of its input and stops, even should the
        # dump leave a marker inside a string; then each must have printed its last one.
        for session in self.sessions:
            session.close()
        for session in self.sessions:
            session.process.wait()
            session.threads[1].join(timeout=5)  # its last lines of output
            if session.process.returncode != 0:
                raise SessionFailed
            if session.reached != session.sent:
                raise DumpCut("its last statement")

    def act(self, action: Action) -> None:
        if isinstance(action, Send):
            self.send(action.piece)
        elif isinstance(action, Start):
            self.start(action.unit)
        elif isinstance(action, End):
            self.current.mark(self.unit.tables)
        else:
            self.wait(lambda: all(s.holds() is None for s in self.sessions))

    def start(self, unit: Unit) -> None:
        chosen: list[int] = []

        def free() -> bool:
            index = pick_session([s.holds() for s in self.sessions], unit.tables, self.jobs)
            chosen[:] = [] if index is None else [index]
            return index is not None

        self.wait(free)
        if chosen[0] == len(self.sessions):
            self.sessions.append(self.launch(len(self.sessions)))
        session = self.sessions[chosen[0]]
        stale = [statement for key, statement in self.settings.items()
                 if session.settings.get(key) != statement]
        if stale:
            session.write(b"".join(stale))
            session.settings.update(self.settings)
        self.current, self.unit = session, unit

    def send(self, piece: Piece) -> None:
        session = self.current
        if piece.starts_entry and len(session.entries) >= ENTRIES_KEPT:
            session.mark(frozenset())  # in a long run of the schema: what is done, is done
        if piece.kind == "sql":
            for key, statement in settings_in(piece.text):
                self.settings[key] = session.settings[key] = statement
        session.write(piece.text, piece.header if piece.starts_entry else None)

    def launch(self, index: int) -> Session:
        return Session(index, start_with_pipes(self.command), self.token, self.changed,
                       self.budget)

    def wait(self, ready: Callable[[], bool]) -> None:
        with self.changed:
            while True:
                if any(s.ended for s in self.sessions):
                    raise SessionFailed
                if ready():
                    return
                self.changed.wait()

    def stop(self) -> None:
        """Stop every session: SIGINT makes psql cancel its statement and end."""
        for session in self.sessions:
            if session.process.poll() is None:
                try:
                    session.process.send_signal(signal.SIGINT)
                except ProcessLookupError:
                    pass
            session.close()
        for session in self.sessions:
            try:
                session.process.wait(timeout=10)
            except Exception:  # psql ignored SIGINT (TimeoutExpired): make sure
                session.process.kill()

    def failed(self) -> list[Session]:
        """The sessions that ended on their own (before stop()): the cause."""
        ended = [s for s in self.sessions if s.process.poll() is not None]
        return [s for s in ended if s.process.returncode != 0] or ended


# --- the command ------------------------------------------------------------------------


PSQL = ["psql", "-X", "--quiet", "--set", "ON_ERROR_STOP=on", "--no-align", "--tuples-only"]


def psql_command(dbname: str) -> list[str]:
    """A session's psql: the dump's SQL on its stdin, markers on its stdout."""
    return [*PSQL, "--dbname", dbname, "--file", "-"]


def apply(stream, jobs: int, command: list[str], lifeline: int | None = None,
          sql_filter: Callable[[bytes], bytes] | None = None) -> int:
    """Apply the dump read from `stream` (binary); 0, or 1 with the reason on stderr."""
    applier = Applier(jobs, command)
    if lifeline is not None:
        def cut() -> None:  # nobody waits for us any more: stop at once
            applier.stop()
            os._exit(1)
        watch_lifeline(lifeline, cut)
    try:
        applier.run(read_dump(stream), sql_filter)
        return 0
    except SessionFailed:
        culprits = applier.failed()
        applier.stop()
        print(culprits[0].failure() if culprits else "psql: a session failed",
              file=sys.stderr)
        return 1
    except DumpCut as cut:
        applier.stop()
        print(f"psql: the SQL stops in the middle of {cut}", file=sys.stderr)
        return 1
    except BaseException:
        applier.stop()
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers.parallel_apply")
    parser.add_argument("--jobs", type=int, required=True)
    parser.add_argument("--dbname", required=True, help="the database to apply the dump to")
    parser.add_argument("--lifeline", type=int, help="a file descriptor: stop at its end")
    args = parser.parse_args(argv)
    try:
        return apply(sys.stdin.buffer, max(1, args.jobs), psql_command(args.dbname),
                     args.lifeline)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
