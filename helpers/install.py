"""What `install-cron` writes and where: the checked inputs of a schedule, its files,
and writing them atomically. Loading them (launchctl, systemctl) is tasks.py's job.
"""
from __future__ import annotations

import os
import shutil
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

from helpers import crypto, drill, launchd, notify, offsite, schedule, systemd
from helpers.config import backup_root, database, drill_database, env_dir, lock_wait_timeout
from helpers.errors import UserError
from helpers.tree import ensure_private_dir

REPO = Path(__file__).resolve().parents[1]
PLATFORMS = ("launchd", "systemd")
# Folders macOS keeps from background jobs that were never granted access to them.
MACOS_PROTECTED = ("Desktop", "Documents", "Downloads", "Library/Mobile Documents")


@dataclass(frozen=True)
class ScheduleFile:
    path: Path
    content: bytes
    mode: int = 0o644


def check_platform(platform: str | None) -> str:
    platform = platform or ("launchd" if sys.platform == "darwin" else "systemd")
    if platform not in PLATFORMS:
        raise UserError(f"unknown platform {platform!r}: expected launchd or systemd")
    return platform


def launch_agent_path(env: str) -> Path:
    return Path.home() / "Library" / "LaunchAgents" / launchd.plist_name(env)


def systemd_user_dir() -> Path:
    configured = os.environ.get("XDG_CONFIG_HOME")
    absolute = configured and os.path.isabs(configured)
    base = Path(configured) if absolute else Path.home() / ".config"
    return base / "systemd" / "user"


def schedule_log(env: str) -> Path:
    """Where the scheduled runs of `env` write what they print."""
    return Path(os.path.abspath(env_dir(env) / "cron.log"))


def warn(message: str) -> None:
    print(message, file=sys.stderr)


def schedule_inputs(env: str, action: str, drill_schedule: str = drill.DEFAULT_SCHEDULE) -> dict:
    """The inputs of the schedule files, checked now so that no schedule is installed
    that would fail every night: a key file that loads, a database URL without a
    password, pg_dump and invoke where the job will look for them. `drill_schedule`
    (weekly, nightly, off) reaches the job as CARABASE_DRILL."""
    if os.environ.get("HOST_MASTER_KEY") and not os.environ.get("HOST_MASTER_KEY_FILE"):
        raise UserError(
            f"{action}: refusing to write HOST_MASTER_KEY into a schedule file; keep the key"
            " in a 0600 file instead: mkdir -p -m 700 ~/.carabase && (umask 077; printenv"
            " HOST_MASTER_KEY > ~/.carabase/master.key), then unset HOST_MASTER_KEY (the"
            " tools read that file by themselves) and run this again"
        )
    try:
        crypto.load_key(os.environ)
    except crypto.MasterKeyError as error:
        raise UserError(f"{action}: refusing to install a schedule that would fail: {error}") \
            from None
    key_file = os.path.abspath(crypto.key_file(os.environ))  # the file load_key read
    notify_file = notify_url_file(action)

    db = database(env)
    if db.password is not None:
        raise UserError(
            f"{action}: {db.variable} holds a password, which would be written into the"
            " schedule file: take it out of the URL and put it in ~/.pgpass (chmod 600)"
        )
    ignored = sorted(name for name in os.environ if name.startswith("PG") and name != "PGAPPNAME")
    if ignored:
        warn(f"NOTE: the nightly job will not see {', '.join(ignored)}: name the server, port"
             f" and user in {db.variable}, and keep a password in ~/.pgpass (chmod 600)")
    variables = {}
    if os.environ.get(db.variable):
        variables[db.variable] = os.environ[db.variable]
    variables["HOST_MASTER_KEY_FILE"] = key_file
    if notify_file is not None:
        variables["CARABASE_NOTIFY_URL_FILE"] = notify_file
    lock_wait_timeout()  # a bad value is refused now, rather than failing every night
    for setting in ("CARABASE_COMPRESSION", "CARABASE_COMPRESSOR", "CARABASE_COMPRESS_THREADS",
                    "CARABASE_LOCK_WAIT_TIMEOUT"):
        if os.environ.get(setting):
            variables[setting] = os.environ[setting]
    variables.update(drill_variables(drill_schedule, action))
    variables.update(offsite.schedule_variables(action))  # the rclone config's path only

    pg_dump = shutil.which("pg_dump")
    if pg_dump is None:
        raise UserError(
            f"{action}: pg_dump is not on PATH: install the PostgreSQL client tools"
            " (or add their directory to PATH) and run this again"
        )
    invoke = Path(sys.executable).parent / "invoke"
    if not os.access(invoke, os.X_OK):
        raise UserError(
            f"{action}: no invoke program next to {sys.executable}:"
            " install this project into that environment (pip install -e .)"
        )
    return {
        "env": env,
        "invoke": os.path.abspath(invoke),
        "repo": str(REPO),
        "backup_dir": os.path.abspath(backup_root()),
        "log_path": str(schedule_log(env)),
        # pigz too, when it lives elsewhere (Homebrew): else the job quietly uses gzip.
        "path": schedule.job_path(*(os.path.dirname(os.path.abspath(tool))
                                    for tool in (pg_dump, shutil.which("pigz"),
                                                 shutil.which("rclone")) if tool)),
        "variables": variables,
    }


def notify_url_file(action: str) -> str | None:
    """The absolute path of the notify URL's file for the job, None without pings. The
    URL is a secret like the key: a schedule carries the file, never the URL."""
    if os.environ.get("CARABASE_NOTIFY_URL") and not os.environ.get("CARABASE_NOTIFY_URL_FILE"):
        raise UserError(
            f"{action}: refusing to write CARABASE_NOTIFY_URL into a schedule file; keep it"
            " in a 0600 file instead: mkdir -p ~/.carabase && (umask 077; printenv"
            " CARABASE_NOTIFY_URL > ~/.carabase/notify.url), then export"
            " CARABASE_NOTIFY_URL_FILE=~/.carabase/notify.url, unset CARABASE_NOTIFY_URL"
            " and run this again"
        )
    try:
        if notify.notify_url(os.environ) is None:
            return None
    except UserError as error:
        raise UserError(f"{action}: refusing to install a schedule that could not ping:"
                        f" {error.message}") from None
    return os.path.abspath(os.path.expanduser(os.environ["CARABASE_NOTIFY_URL_FILE"]))


def drill_variables(drill_schedule: str, action: str) -> dict[str, str]:
    """CARABASE_DRILL for the job, and the scratch database it drills into if set."""
    if drill_schedule not in drill.SCHEDULES:
        raise UserError(f"{action}: --drill must be weekly, nightly or off,"
                        f" not {drill_schedule!r}")
    variables = {"CARABASE_DRILL": drill_schedule}
    scratch = drill_database()
    if drill_schedule != "off" and os.environ.get(scratch.variable):
        if scratch.password is not None:
            raise UserError(
                f"{action}: {scratch.variable} holds a password, which would be written into"
                " the schedule file: take it out of the URL and put it in ~/.pgpass"
                " (chmod 600)")
        variables[scratch.variable] = os.environ[scratch.variable]
    return variables


def schedule_files(env: str, platform: str, action: str,
                   drill_schedule: str = drill.DEFAULT_SCHEDULE) -> list[ScheduleFile]:
    inputs = schedule_inputs(env, action, drill_schedule)
    try:
        if platform == "launchd":
            warn_if_macos_protected(inputs)
            return [ScheduleFile(launch_agent_path(env), launchd.render_plist(**inputs))]
        units = systemd.render_units(**inputs)
    except schedule.UnsafeSchedule as error:
        raise UserError(f"{action}: {error}") from None
    return [ScheduleFile(systemd_user_dir() / name, text.encode()) for name, text in units.items()]


def prepare_schedule_dir(directory: Path, action: str) -> None:
    """Create `directory` and its missing parents 0700 whatever the umask (under umask
    000 mkdir would make them 0777); refuse one that another user could write to, or
    whose parents they could: they could replace the job and run code as you."""
    try:
        for folder in (*reversed(directory.parents), directory):
            if not folder.exists():
                folder.mkdir(mode=0o700)
                folder.chmod(0o700)  # the umask may have taken bits from 0700 too
        home = Path.home()
        for folder in (directory, *directory.parents):
            if folder == home:
                break
            found = folder.stat()
            if found.st_mode & stat.S_ISVTX:  # /tmp: others may not rename what is ours
                continue
            if found.st_mode & 0o022 or found.st_uid not in (os.getuid(), 0):
                raise UserError(
                    f"{action} refused: others may write to {folder} (mode"
                    f" {stat.S_IMODE(found.st_mode):04o}) and could replace the job:"
                    f" chmod go-w {folder}" + ("" if found.st_uid == os.getuid() else
                                               ", and make it yours (chown)"))
    except OSError as error:
        raise UserError(f"{action}: cannot create {directory}: {error.strerror or error}") \
            from None


def write_atomically(file: ScheduleFile, action: str) -> None:
    """Replace `file.path` in one step: a reader sees the old file or the new, whole."""
    partial = file.path.with_name(f".{file.path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, file.mode)
        try:
            os.fchmod(fd, file.mode)
            with os.fdopen(os.dup(fd), "wb") as stream:
                stream.write(file.content)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(partial, file.path)
    except OSError as error:
        try:
            partial.unlink(missing_ok=True)
        except OSError:  # its folder is what failed
            pass
        raise UserError(f"{action}: cannot write {file.path}: {error.strerror or error}") \
            from None


def prepare_log(env: str, action: str) -> Path:
    """The env's directory (0700) and its cron.log (0600): launchd and systemd create
    neither the directory nor, with our modes, the file."""
    log = schedule_log(env)
    try:
        ensure_private_dir(env_dir(env))
        os.close(os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
    except OSError as error:
        raise UserError(f"{action}: cannot create {log}: {error.strerror or error}") from None
    return log


def warn_if_macos_protected(inputs: dict) -> None:
    home = Path.home()
    variables = inputs["variables"]
    paths = [inputs["repo"], inputs["backup_dir"], variables["HOST_MASTER_KEY_FILE"],
             *filter(None, [variables.get("CARABASE_NOTIFY_URL_FILE")])]
    # An off-site folder (iCloud Drive's, say) and the rclone config are read by the job too.
    paths += [variables[name] for name in ("CARABASE_OFFSITE", "RCLONE_CONFIG")
              if variables.get(name, "").startswith("/")]
    for path in paths:
        for folder in MACOS_PROTECTED:
            if Path(path).is_relative_to(home / folder):
                warn(f"WARNING: {path} is inside ~/{folder}, which macOS may not let a"
                     " launchd job read: if cron.log shows 'Operation not permitted', move it"
                     " elsewhere or give the job's python Full Disk Access")
                break


def schedule_paths(env: str, platform: str) -> list[Path]:
    """Every file install-cron may have written for env (uninstall removes these)."""
    if platform == "launchd":
        return [launch_agent_path(env)]
    timer = systemd.unit_name(env, "timer")
    units = systemd_user_dir()
    # `enable` links the timer into timers.target.wants; `disable` unlinks it.
    return [units / systemd.unit_name(env, "timer"), units / systemd.unit_name(env, "service"),
            units / "timers.target.wants" / timer]
