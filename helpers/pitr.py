"""Point-in-time recovery handed to pgBackRest: the pure parts.

The repository passphrase (derived from the master key), the env's pgBackRest config,
where the env's PITR files live, reading `pgbackrest info --output=json` and `verify`,
the window a `--to` time must fall in, and status's judgement. tasks.py runs
pgbackrest, psql and pg_ctl; nothing here runs a program.

An env's PITR directory (`CARABASE_PITR_REPO/<env>`, else `<backup dir>/<env>/pitr`),
owned by the server's OS user, 0700:

    pgbackrest.conf   0600: repository, cipher passphrase, the server's data directory
    repo/             the pgBackRest repository (encrypted; what goes off-site)
    spool/ log/ lock/ pgBackRest's async queue, logs and locks

and `<backup dir>/<env>/pitr.json` (0600) says where that directory is and whose it is:
its presence is what "PITR is set up for this env" means to status and the nightly job.
"""
from __future__ import annotations

import hmac
import json
import os
import re
import shlex
import socket
from dataclasses import dataclass, fields
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import quote, urlencode

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from helpers.config import build_uri, env_dir
from helpers.errors import UserError
from helpers.freshness import SEVERITY
from helpers.offsite import WithOffsite
from helpers.settings import write_private

# HKDF-SHA256 of the master key, no salt, this info label, 32 bytes, as lowercase hex:
# the master key alone gives the repository's passphrase (README: the derivation).
PASSPHRASE_LABEL = b"carabase pgbackrest repo1-cipher-pass v1"
CIPHER = "aes-256-cbc"
DAYS_DEFAULT = 14
# How long archive-push waits for the async process, and `check` for a segment: short,
# so that a dead repository fails archiving (and shows in status) instead of stalling it.
ARCHIVE_TIMEOUT = 30
# A WAL switch at least this often when there were writes (only where the server has
# none set): the window of writes that exist only in pg_wal stays minutes, not a segment.
ARCHIVE_TIMEOUT_SERVER = "5min"
BEHIND_AFTER = timedelta(hours=1)  # WARN: the oldest unarchived segment is older
BASE_STALE_AFTER = timedelta(days=8)  # WARN: the newest base backup is older
POINTER_NAME = "pitr.json"
DRILL_RECORD = ".pitr-drill.json"
INSTALL_HINT = ("install pgBackRest: apt-get install pgbackrest (Debian, Ubuntu),"
                " brew install pgbackrest (macOS)")


def cipher_passphrase(key: bytes) -> str:
    """The repository's cipher passphrase: HKDF-SHA256(master key, info=PASSPHRASE_LABEL)."""
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                   info=PASSPHRASE_LABEL).derive(key)
    return derived.hex()


def retention_days() -> int:
    configured = os.environ.get("CARABASE_PITR_DAYS", "").strip()
    if not configured:
        return DAYS_DEFAULT
    if not (configured.isascii() and configured.isdigit()) or not 1 <= int(configured) <= 9999:
        raise UserError(f"CARABASE_PITR_DAYS must be a whole number of days, 1 or more, not"
                        f" {configured!r}")
    return int(configured)


def chosen_dir(env: str) -> Path:
    """Where pitr-setup puts the env's PITR directory."""
    configured = os.environ.get("CARABASE_PITR_REPO", "").strip()
    if not configured:
        return env_dir(env) / "pitr"
    root = Path(configured).expanduser()
    if not root.is_absolute():
        raise UserError(f"CARABASE_PITR_REPO must be an absolute path, not {configured!r}")
    return root / env


@dataclass(frozen=True)
class Server:
    """What pgBackRest and pg_ctl need of the env's server, as the server reports it."""

    data_dir: Path
    port: int
    socket_dir: str
    role: str  # the superuser role pgBackRest connects as
    owner: str  # the OS user owning the data directory
    bindir: Path  # where pg_ctl is
    # (hba_file, ident_file) where the configuration lives outside the data directory
    # (Debian's /etc/postgresql): a restored data directory has none of its own.
    config_elsewhere: tuple[str, str] | None = None

    @classmethod
    def from_json(cls, data: dict) -> Server:
        elsewhere = data.get("config_elsewhere")
        return cls(Path(data["data_dir"]), int(data["port"]), data["socket_dir"], data["role"],
                   data["owner"], Path(data["bindir"]), tuple(elsewhere) if elsewhere else None)

    def as_json(self) -> dict:
        return {"data_dir": str(self.data_dir), "port": self.port,
                "socket_dir": self.socket_dir, "role": self.role, "owner": self.owner,
                "bindir": str(self.bindir), "config_elsewhere": self.config_elsewhere}


@dataclass(frozen=True)
class Setup:
    """The env's PITR set-up, as `pitr.json` records it."""

    env: str
    directory: Path
    server: Server

    @property
    def config(self) -> Path:
        return self.directory / "pgbackrest.conf"

    @property
    def repo(self) -> Path:
        return self.directory / "repo"

    def subdirectories(self) -> list[Path]:
        return [self.directory / name for name in ("repo", "spool", "log", "lock")]


def pointer_path(env: str) -> Path:
    return env_dir(env) / POINTER_NAME


def pointer_json(setup: Setup) -> str:
    return json.dumps({"schema": 1, "directory": str(setup.directory),
                       "server": setup.server.as_json()}, indent=2) + "\n"


def load_setup(env: str) -> Setup | None:
    """The env's PITR set-up, None when pitr-setup never ran for it."""
    path = pointer_path(env)
    try:
        data = json.loads(path.read_text())
        return Setup(env, Path(data["directory"]), Server.from_json(data["server"]))
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UserError(f"cannot read {path}: {getattr(error, 'strerror', None) or error};"
                        f" run invoke backup.pitr-setup {env} again") from None


def require_setup(env: str, action: str) -> Setup:
    setup = load_setup(env)
    if setup is None:
        raise UserError(f"{action}: PITR is not set up for {env}: run invoke"
                        f" backup.pitr-setup {env}")
    return setup


def render_config(setup: Setup, passphrase: str, days: int) -> str:
    """The env's pgBackRest config: one stanza named after the env."""
    server, here = setup.server, setup.directory
    return "\n".join([
        "# Written by invoke backup.pitr-setup: rerun it rather than editing this file.",
        "# repo1-cipher-pass is derived from the master key (README: PITR).",
        "[global]",
        f"repo1-path={setup.repo}",
        f"repo1-cipher-type={CIPHER}",
        f"repo1-cipher-pass={passphrase}",
        "repo1-retention-full-type=time",
        f"repo1-retention-full={days}",
        "compress-type=zst",
        "archive-async=y",
        f"archive-timeout={ARCHIVE_TIMEOUT}",
        f"spool-path={here / 'spool'}",
        f"log-path={here / 'log'}",
        f"lock-path={here / 'lock'}",
        "log-level-console=warn",
        "log-level-stderr=error",
        "log-level-file=info",
        "start-fast=y",
        "",
        f"[{setup.env}]",
        f"pg1-path={server.data_dir}",
        f"pg1-port={server.port}",
        f"pg1-socket-path={server.socket_dir}",
        f"pg1-user={server.role}",
        "",
    ])


def config_passphrase(text: str) -> str | None:
    for line in text.splitlines():
        name, equals, value = line.partition("=")
        if equals and name.strip() == "repo1-cipher-pass":
            return value.strip()
    return None


def same_passphrase(a: str | None, b: str) -> bool:
    return a is not None and hmac.compare_digest(a.encode(), b.encode())


def archive_command(setup: Setup) -> str:
    """The server's archive_command (run by the server through sh: quoted for it)."""
    return (f"pgbackrest --config={shlex.quote(str(setup.config))}"
            f" --stanza={shlex.quote(setup.env)} archive-push %p")


def settings_to_change(current: dict[str, str], command: str) -> dict[str, str]:
    """The ALTER SYSTEM settings that differ from what archiving needs (none when right)."""
    wanted = {}
    if current["wal_level"] == "minimal":
        wanted["wal_level"] = "replica"
    if current["archive_mode"] == "off":
        wanted["archive_mode"] = "on"
    if current["archive_command"] != command:
        wanted["archive_command"] = command
    if current.get("archive_library"):  # it would win over archive_command (PG 15+)
        wanted["archive_library"] = ""
    if current.get("archive_timeout") in ("0", "0s"):
        wanted["archive_timeout"] = ARCHIVE_TIMEOUT_SERVER
    return wanted


RESTART_SETTINGS = ("wal_level", "archive_mode")


# --- pgbackrest info ---------------------------------------------------------------


@dataclass(frozen=True)
class BaseBackup:
    label: str
    type: str  # full, diff, incr
    started: datetime
    stopped: datetime
    size: int = 0  # the database's size when it was taken (what a restore writes), bytes


@dataclass(frozen=True)
class Info:
    """What `pgbackrest info --output=json` says of one stanza."""

    status: int  # 0 ok, 2 no valid backups, ... (pgBackRest's codes)
    message: str
    backups: tuple[BaseBackup, ...]
    archive_max: str | None  # newest WAL segment in the repository
    archive_id: str | None = None  # the archive holding it: archive/<stanza>/<id>/

    @property
    def oldest(self) -> BaseBackup | None:
        return self.backups[0] if self.backups else None

    @property
    def newest(self) -> BaseBackup | None:
        return self.backups[-1] if self.backups else None


def parse_info(text: str, stanza: str) -> Info:
    try:
        stanzas = json.loads(text)
        entry = next(item for item in stanzas if item.get("name") == stanza)
    except (ValueError, StopIteration, AttributeError, TypeError):
        raise ValueError(f"pgbackrest info says nothing of stanza {stanza}") from None
    backups = tuple(sorted(
        (BaseBackup(b["label"], b["type"], _epoch(b["timestamp"]["start"]),
                    _epoch(b["timestamp"]["stop"]), int((b.get("info") or {}).get("size") or 0))
         for b in entry.get("backup", [])),
        key=lambda backup: backup.stopped))
    archives = [a for a in entry.get("archive", []) if a.get("max")]
    newest = max(archives, key=lambda a: a["max"][8:]) if archives else {}
    status = entry.get("status", {})
    return Info(status.get("code", -1), status.get("message", ""), backups,
                newest.get("max"), newest.get("id"))


def _epoch(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, timezone.utc)


# --- restore targets ---------------------------------------------------------------

TARGET = re.compile(r"^(\d{4}-\d{2}-\d{2})[ T](\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?)"
                    r"\s*(Z|[+-]\d{2}(?::?\d{2})?)?$")


def parse_target(text: str, local_zone=None) -> datetime | None:
    """`--to`: None for `latest`, else an aware datetime; a time without a zone is
    local time (`local_zone`, default this machine's)."""
    text = text.strip()
    if text == "latest":
        return None
    match = TARGET.match(text)
    if not match:
        raise UserError(f"--to must be latest or a time like \"2026-04-09 14:30:00\" (local)"
                        f" or \"2026-04-09 14:30:00+00\", not {text!r}")
    day, clock, zone = match.groups()
    if zone and zone != "Z" and len(zone) == 3:
        zone += ":00"
    elif zone and len(zone) == 5:
        zone = zone[:3] + ":" + zone[3:]
    try:
        stamp = datetime.fromisoformat(f"{day}T{clock}{'+00:00' if zone == 'Z' else zone or ''}")
    except ValueError as error:
        raise UserError(f"--to: {text!r} is not a valid time ({error})") from None
    try:
        if stamp.tzinfo is None:
            stamp = stamp.replace(tzinfo=local_zone) if local_zone else stamp.astimezone()
        stamp.astimezone(timezone.utc)  # year 1 at +01, or 9999 at -01: out of range in UTC
    except (OverflowError, ValueError):
        raise UserError(f"--to: {text!r} is out of range") from None
    return stamp


def target_text(stamp: datetime) -> str:
    """A time as PostgreSQL's recovery_target_time reads it, unambiguously (UTC)."""
    return stamp.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f+00")


def utc_text(stamp: datetime | None) -> str | None:
    return stamp.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ") if stamp else None


def check_target(target: datetime | None, info: Info, archived_until: datetime | None) -> None:
    """Refuse up front a time the repository cannot reach: before the end of the oldest
    base backup, or not before the newest archived commit (`archived_until`, None when
    unknown): recovery stops at the first commit after the time, and without one it ends
    in error."""
    oldest = info.oldest
    if oldest is None:
        raise UserError("no base backup in the repository yet: run invoke backup.pitr-backup"
                        " first")
    if target is None:
        return
    window = (f"the window is {utc_text(oldest.stopped)} to "
              + (utc_text(archived_until) if archived_until else "the newest archived WAL"))
    if target < oldest.stopped:
        raise UserError(f"--to {utc_text(target)} is before the oldest base backup ended:"
                        f" {window}")
    if archived_until is not None and target >= archived_until:
        raise UserError(f"--to {utc_text(target)} is after the newest archived WAL: {window}")


# How long a restore waits for the live server to archive its current WAL: healthy, it
# takes a fraction of a second; a server that cannot must not hold up the restore.
FLUSH_WAIT = 30
# How many of the newest archived segments are read for the newest commit: one with no
# commit is rare (a switch right after another); a handful more is plenty.
SEGMENTS_READ = 4
SEGMENT_FILE = re.compile(r"^([0-9A-F]{24})-[0-9a-f]{40}(?:\.\w+)?$")
# pg_waldump's Transaction records, run with TZ=UTC: "desc: COMMIT 2026-04-09 14:30:00.123456 UTC"
WALDUMP_END = re.compile(r"desc: (?:COMMIT|ABORT) (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?)"
                         r" UTC\b")


def segments_newest_first(file_names: list[str]) -> list[str]:
    """The WAL segments of an archive folder's files (`<segment>-<sha1>[.zst]`), newest
    first; .history, .backup and .partial files are not segments."""
    names = {match.group(1) for match in map(SEGMENT_FILE.match, file_names) if match}
    return sorted(names, key=lambda name: (name[8:], name[:8]), reverse=True)


def last_commit(waldump_output: str) -> datetime | None:
    """When the last commit (or abort) in pg_waldump's output was: a recovery to a time
    can stop only at such a record."""
    found = WALDUMP_END.findall(waldump_output)
    return datetime.fromisoformat(found[-1]).replace(tzinfo=timezone.utc) if found else None


def flush_state(state: dict, segment: str, since: datetime) -> str | None:
    """From PITR_ARCHIVER_QUERY's answer: "archived" once `segment` (or a later one) is,
    "failed" once an attempt since `since` failed with no success after it (an older
    segment failing blocks ours: segments are archived in order), else None."""
    if (state.get("last_archived_wal") or "")[8:] >= segment[8:]:
        return "archived"
    failed, archived = state.get("last_failed"), state.get("last_archived")
    if failed is not None and _epoch(float(failed)) >= since and \
            (archived is None or float(failed) > float(archived)):
        return "failed"
    return None


def unarchived_note(why: str, newest_commit: datetime | None, segment: str | None) -> str:
    """What a restore to `latest` says when the live server could not archive its current
    WAL: it goes ahead with what the repository holds, and says up to when."""
    reach = (f"up to {utc_text(newest_commit)} (the newest archived commit)" if newest_commit
             else f"up to the end of WAL segment {segment} (its last commit's time unknown)")
    return f"{why}: restoring what is archived, {reach}; later writes are not in it"


# --- verify --------------------------------------------------------------------------


def verify_problems(output: str) -> list[str]:
    """What `pgbackrest verify` (console at info) found wrong. It may exit 0 having
    printed `status: error` (seen with a damaged WAL file), so its text decides."""
    if not re.search(r"^\s*status: error\s*$", output, re.M):
        return []
    # "2026-... P01   INFO: invalid result 15-1/.../0000...zst: [29] ... zst error: ..."
    found = [match.group(1) for match in
             re.finditer(r"^\S+ \S+ P\d+\s+\w+: ((?:invalid|missing)\b.*)$", output, re.M)]
    return found or ["status: error"]


# --- status --------------------------------------------------------------------------


@dataclass(frozen=True)
class Facts:
    """What status reads for one env (tasks.pitr_facts): None where it could not."""

    newest_base: datetime | None
    last_archived: datetime | None
    last_archived_wal: str | None
    last_failed: datetime | None
    failed_count: int | None
    ready: int | None  # .ready segments waiting in pg_wal/archive_status
    oldest_ready: datetime | None  # when the oldest of them was written
    drill: dict | None = None
    problems: tuple[str, ...] = ()  # what could not be read
    # The server's archiving settings now, and the archive_command pitr-setup set: someone
    # may have edited postgresql.conf since (None: not read).
    archive_mode: str | None = None
    archive_command: str | None = None
    archive_library: str | None = None
    expected_command: str | None = None


def judge(facts: Facts, now: datetime) -> tuple[str, dict, list[str]]:
    """PASS or WARN, the `pitr` JSON object, and the warnings."""
    warnings = list(facts.problems)
    if facts.newest_base is None:
        warnings.append("PITR: no base backup")
    elif now - facts.newest_base > BASE_STALE_AFTER:
        warnings.append(f"PITR: newest base backup is {(now - facts.newest_base).days} days"
                        " old")
    if facts.oldest_ready is not None and now - facts.oldest_ready > BEHIND_AFTER:
        hours = (now - facts.oldest_ready) / timedelta(hours=1)
        warnings.append(f"PITR: archiving is {hours:.1f}h behind ({facts.ready} segments"
                        " waiting)")
    if facts.last_failed is not None and (facts.last_archived is None
                                          or facts.last_failed > facts.last_archived):
        warnings.append(f"PITR: archiving is failing (last failure {utc_text(facts.last_failed)};"
                        f" see the server's log)")
    warnings += settings_warnings(facts)
    drill = facts.drill
    if drill is not None and drill.get("result") != "PASS":
        warnings.append(f"PITR: last drill {drill.get('result')}")
    data = {
        "newest_base_backup": utc_text(facts.newest_base),
        "last_archived": utc_text(facts.last_archived),
        "last_archived_wal": facts.last_archived_wal,
        "ready_segments": facts.ready,
        "failed_count": facts.failed_count,
        "last_failed": utc_text(facts.last_failed),
        "drill": drill,
        "warnings": warnings,
        "status": "WARN" if warnings else "PASS",
    }
    return data["status"], data, warnings


def settings_warnings(facts: Facts) -> list[str]:
    """The server no longer archives into the repository: archive_mode off, or an
    archive_command (or archive_library, which wins over it) that is not pitr-setup's."""
    hint = "run invoke backup.pitr-setup again"
    found = []
    if facts.archive_mode == "off":
        found.append(f"PITR: archive_mode is off: nothing is archived ({hint} --restart)")
    if facts.archive_library:
        found.append(f"PITR: archive_library is set ({facts.archive_library}): WAL goes there,"
                     f" not to pgBackRest ({hint})")
    elif facts.expected_command is not None and facts.archive_command is not None \
            and facts.archive_command != facts.expected_command:
        found.append(f"PITR: archive_command is not pgBackRest's for this env any more"
                     f" ({facts.archive_command!r}): {hint}")
    return found


def status_part(data: dict) -> str:
    """` pitr=<last archived>/<newest base>` on the env's status line."""
    return (f" pitr=wal:{data.get('last_archived') or 'none'}"
            f",base:{data.get('newest_base_backup') or 'none'}")


# --- the drill -----------------------------------------------------------------------


def drill_problems(live: dict[tuple[str, str], float], restored: dict[tuple[str, str], int]
                   ) -> list[str]:
    """Every live table must exist in the restored cluster, with rows where the live one
    has rows (estimates: only 0 against more than 0 counts)."""
    problems = []
    for table, estimate in sorted(live.items()):
        name = ".".join(table)
        if table not in restored:
            problems.append(f"{name} is missing")
        elif estimate > 0 and restored[table] == 0:
            problems.append(f"{name} is empty (live: about {int(estimate)} rows)")
    return problems


# Beyond the database's size, room for the WAL a drill replays and the server's own files.
DRILL_MARGIN = 64 * 1024 * 1024


def drill_parent(setup: Setup) -> Path:
    """Where the PITR drill makes its cluster's directory: CARABASE_PITR_DRILL_DIR, else
    the env's PITR directory (beside the repository: TMPDIR may be a small tmpfs)."""
    configured = os.environ.get("CARABASE_PITR_DRILL_DIR", "").strip()
    if not configured:
        return setup.directory
    chosen = Path(configured).expanduser()
    if not chosen.is_absolute():
        raise UserError(f"CARABASE_PITR_DRILL_DIR must be an absolute path, not {configured!r}")
    return chosen


def drill_room_problem(where: Path, free: int, info: Info) -> str | None:
    """Why `where` is too small for a restore of the newest base backup (None: room
    enough): its database's size, a tenth more and DRILL_MARGIN for replayed WAL."""
    size = info.newest.size if info.newest else 0
    needed = size + size // 10 + DRILL_MARGIN
    if free >= needed:
        return None
    return (f"not enough room in {where} for the drill's cluster: {_mib(free)} free, the"
            f" restore needs about {_mib(needed)} (the database was {_mib(size)}); free some"
            " or set CARABASE_PITR_DRILL_DIR to a roomier directory")


def _mib(size: int) -> str:
    return f"{size / 2**20:.0f} MiB"


def drill_record_path(env: str) -> Path:
    return env_dir(env) / DRILL_RECORD


def write_drill_record(env: str, result: str, target: datetime, finished: datetime,
                       seconds: float, problems: list[str]) -> None:
    path = drill_record_path(env)
    data = {"schema": 1, "result": result, "target": utc_text(target),
            "finished": utc_text(finished), "seconds": round(seconds, 1), "problems": problems}
    try:
        write_private(path, json.dumps(data, indent=2) + "\n")
    except UserError as error:
        raise UserError(f"pitr-drill {env}: {error.message}") from None


def last_drill(env: str) -> dict | None:
    try:
        data = json.loads(drill_record_path(env).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {"result": "FAIL", "problems": [f"cannot read {drill_record_path(env)}"]}
    return data if isinstance(data, dict) else None


def nightly_type(newest_full: datetime | None, now: datetime) -> str:
    """The nightly job's base backup: full when the newest full is a week old (or there
    is none), diff otherwise."""
    if newest_full is None or now - newest_full >= timedelta(days=7) - timedelta(hours=2):
        return "full"
    return "diff"


# --- the off-site copy --------------------------------------------------------------

# A base backup's folder in backup/<stanza>/: 20260409-031700F, or a diff/incr on it.
BACKUP_LABEL = re.compile(r"^\d{8}-\d{6}F(?:_\d{8}-\d{6}[DI])?$")


def unknown_backups(remote_entries: list[str], local_entries: list[str]) -> list[str]:
    """The base backups the off-site copy holds that the local repository has no record
    of, oldest first. `remote_entries`: the remote's backup/<stanza>/ folder names;
    `local_entries`: the local one's, and the names in its backup.history/<year>/
    (pgBackRest keeps there a manifest of every backup, expired or not, as
    <label>.manifest.gz). A backup expired here is recorded: its remote copy may go."""
    def labels(entries):
        names = (entry.rstrip("/").removesuffix(".manifest.gz") for entry in entries)
        return {name for name in names if BACKUP_LABEL.match(name)}

    return sorted(labels(remote_entries) - labels(local_entries))


def unknown_history_note(remote: str, unknown: list[str]) -> str:
    """What the off-site copy says when the remote holds backups unknown here (the local
    repository was lost and set up again, or another machine writes there)."""
    return (f"{remote} holds {len(unknown)} base backup(s) this repository has no record of"
            f" ({unknown[0]}{' to ' + unknown[-1] if len(unknown) > 1 else ''}): copying"
            " only, deleting nothing there; remove that history by hand once it is not"
            " needed")


# --- the restored cluster ----------------------------------------------------------


def check_port(port) -> int:
    text = str(port).strip()
    if not (text.isascii() and text.isdigit()) or not 1024 <= int(text) <= 65535:
        raise UserError(f"--port must be a port number from 1024 to 65535, not {text!r}")
    return int(text)


def spare_port() -> int:
    """A port nothing listens on right now (the kernel's pick)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def cluster_url(server: Server, port: int, name: str) -> str:
    """The restored cluster's URL: the live server's socket directory, another port."""
    return build_uri("postgresql", quote(server.role, safe="") + "@", name,
                     urlencode({"host": server.socket_dir, "port": port}, quote_via=quote))


# What libpq says when the server refuses a login (not when it is only starting up).
REFUSED = re.compile(r"(?:FATAL:\s+|fe_sendauth: )(.*(?:authentication failed|pg_hba\.conf"
                     r"|no password supplied|role \".*\" does not exist).*)$", re.M)


def login_refused(stderr: str) -> str | None:
    """The server's refusal line when psql was refused a login; None when it was not
    (the cluster may still be starting: that is worth waiting for, a refusal is not)."""
    match = REFUSED.search(stderr)
    return match.group(1).strip() if match else None


# --- status, continued ----------------------------------------------------------------


def facts_from(newest_base: datetime | None, state: dict, drill: dict | None,
               problems: list[str], expected_command: str | None = None) -> Facts:
    """Facts from PITR_ARCHIVER_QUERY's answer (epoch seconds, or null)."""
    def when(name: str) -> datetime | None:
        value = state.get(name)
        return None if value is None else _epoch(float(value))

    return Facts(newest_base, when("last_archived"), state.get("last_archived_wal"),
                 when("last_failed"), state.get("failed_count"), state.get("ready"),
                 when("oldest_ready"), drill, tuple(problems), state.get("archive_mode"),
                 state.get("archive_command"), state.get("archive_library"),
                 expected_command if state else None)


@dataclass(frozen=True)
class WithPitr(WithOffsite):
    """An env's status with its PITR part: ` pitr=...` on the line, `pitr` in the JSON."""

    pitr: dict | None = None

    def line(self) -> str:
        text = super().line()
        return text + status_part(self.pitr) if self.pitr else text

    def as_json(self) -> dict:
        return {**super().as_json(), "pitr": self.pitr}


def with_pitr(report: WithOffsite, verdict: str, data: dict | None) -> WithPitr:
    """`report` with its PITR part (None: PITR is not set up for the env)."""
    values = {item.name: getattr(report, item.name) for item in fields(report)}
    if SEVERITY[verdict] > SEVERITY[report.status]:
        values["status"] = verdict
    if data and data["warnings"]:
        values["warning"] = "; ".join(filter(None, [report.warning, *data["warnings"]]))
    return WithPitr(**values, pitr=data)
