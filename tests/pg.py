"""A real PostgreSQL server for the end-to-end tests.

The server the usual PG* variables name (PGHOST and/or PGPORT set) when there is one,
otherwise a throwaway cluster made with initdb and started with pg_ctl in a temporary
directory, listening on a Unix socket only; as root, the cluster runs as `postgres`.
"""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote


def _pg_bindir() -> Path:
    """Where initdb and pg_ctl live: Debian keeps them out of PATH, by major version."""
    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                    key=lambda path: int(path.split("/")[4]))
    if debian:
        return Path(debian[-1]).parent
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    raise RuntimeError("initdb not found: install the PostgreSQL server (see .ci/run)")


def _client(program: str) -> str:
    """The client program itself, for the tests' own queries: on Debian, `psql` on PATH
    is pg_wrapper, a Perl script that costs about 0.1 s a call before psql starts, and
    the tests make thousands of them. (The code under test still runs what PATH finds.)"""
    versions = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{program}"),
                      key=lambda path: int(path.split("/")[4]))
    return versions[-1] if versions else (shutil.which(program) or program)


PSQL = _client("psql")


@dataclass
class PgServer:
    host: str
    port: str
    user: str
    password: str | None = None

    def url(self, dbname: str, *, with_password: bool = True) -> str:
        auth = quote(self.user, safe="")
        if self.password and with_password:
            auth += ":" + quote(self.password, safe="")
        if self.host.startswith("/"):  # a socket directory goes in the query
            socket_dir = quote(self.host, safe="")
            return f"postgresql://{auth}@/{dbname}?host={socket_dir}&port={self.port}"
        return f"postgresql://{auth}@{self.host}:{self.port}/{dbname}"

    def libpq_env(self) -> dict[str, str]:
        environ = {"PGHOST": self.host, "PGPORT": self.port, "PGUSER": self.user}
        if self.password:
            environ["PGPASSWORD"] = self.password
        return environ

    def psql(self, dbname: str, sql: str, check: bool = True) -> str:
        """Run `sql` in `dbname`; return psql's unaligned, tuples-only output."""
        result = subprocess.run(
            [PSQL, "-X", "-At", "-v", "ON_ERROR_STOP=1", "-d", dbname, "-f", "-"],
            input=sql, env={**os.environ, **self.libpq_env()},
            capture_output=True, text=True, timeout=120,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"psql failed in {dbname}: {result.stderr.strip()}")
        return result.stdout

    def database_exists(self, dbname: str) -> bool:
        out = self.psql("postgres", f"select count(*) from pg_database where datname = '{dbname}'")
        return out.strip() == "1"

    def create_database(self, prefix: str = "carabase_test") -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        self.psql("postgres", f'create database "{name}"')
        return name

    def drop_database(self, dbname: str) -> None:
        self.psql("postgres", f'drop database if exists "{dbname}" with (force)', check=False)


def _as_postgres(command: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *command]
    return command


class ThrowawayCluster:
    """initdb + pg_ctl in a temporary directory; stop() removes everything. A second one
    (the PITR tests') takes another `port`, so that both can run at once."""

    def __init__(self, port: int = 54329) -> None:
        self.port = str(port)
        self.root = Path(tempfile.mkdtemp(prefix="carabase-pg-"))
        self.data = self.root / "data"
        self.socket_dir = self.root / "socket"
        self.log = self.root / "server.log"
        self.bindir = _pg_bindir()

    def start(self) -> PgServer:
        self.socket_dir.mkdir()
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
            shutil.chown(self.socket_dir, "postgres", "postgres")
        subprocess.run(
            _as_postgres([str(self.bindir / "initdb"), "-D", str(self.data), "-A", "trust",
                          "-U", "postgres", "-E", "UTF8", "--locale=C", "--no-sync"]),
            check=True, capture_output=True, timeout=120,
        )
        options = f"-k {self.socket_dir} -c listen_addresses='' -p {self.port} -c fsync=off"
        subprocess.run(
            _as_postgres([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l",
                          str(self.log), "-o", options, "-w", "start"]),
            check=True, capture_output=True, timeout=120,
        )
        return PgServer(host=str(self.socket_dir), port=self.port, user="postgres")

    def stop(self) -> None:
        subprocess.run(
            _as_postgres([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m",
                          "immediate", "stop"]),
            capture_output=True, timeout=120,
        )
        shutil.rmtree(self.root, ignore_errors=True)


def server_from_environment() -> PgServer | None:
    """The server the PG* variables name, if they name one."""
    if not (os.environ.get("PGHOST") or os.environ.get("PGPORT")):
        return None
    return PgServer(
        host=os.environ.get("PGHOST", "/var/run/postgresql"),
        port=os.environ.get("PGPORT", "5432"),
        user=os.environ.get("PGUSER", "postgres"),
        password=os.environ.get("PGPASSWORD"),
    )
