"""The README's quick start on a new machine, as written: scripts/setup.sh, then a new
shell with the virtualenv active and no export line. Status is green, and the key the
set-up made is the one every command then finds by itself."""
from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

from tests.sample_db import snapshot
from tests.support import REPO
from tests.unit.test_readme import section, shell_blocks


def quick_start_block(containing: str) -> str:
    [block] = [block for block in shell_blocks(section("Quick start")) if containing in block]
    return block


def new_shell(commands: str, environ: dict[str, str]) -> subprocess.CompletedProcess:
    """`commands` in bash from the repository root, invoke not on PATH (a new terminal)."""
    venv_bins = (str(Path(sys.executable).parent), str(REPO / ".venv" / "bin"))
    path = os.pathsep.join(entry for entry in environ["PATH"].split(os.pathsep)
                           if entry not in venv_bins)
    environ = {name: value for name, value in environ.items() if name != "VIRTUAL_ENV"}
    return subprocess.run(["bash", "-c", commands], cwd=REPO, env={**environ, "PATH": path},
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)


def test_quick_start_ends_in_a_green_status_and_a_working_restore_with_no_export_line(
        environ, home, backup_dir, pg, source_db, database_factory):
    environ = {**environ, "CARABASE_DEV_DATABASE_URL": pg.url(source_db)}
    assert not any(name.startswith(("HOST_MASTER_KEY", "CARABASE_ENVS")) for name in environ)

    set_up = new_shell(quick_start_block("scripts/setup.sh"), environ)

    assert set_up.returncode == 0, set_up.stderr
    key = home / ".carabase" / "master.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert (home / ".carabase" / "env").read_text() == "CARABASE_ENVS=dev\n"
    assert "export " not in set_up.stdout  # nothing left to remember

    status = new_shell(quick_start_block("invoke backup.status"), environ)

    assert status.returncode == 0, status.stdout + status.stderr
    [line] = status.stdout.splitlines()
    assert line.startswith("[dev    ] PASS latest=") and line.endswith(" age=0.0h ago")

    [backup] = sorted((backup_dir / "dev").glob("*/*.sql.gz.enc"))
    target = database_factory()
    restore = new_shell(f". .venv/bin/activate && invoke backup.restore staging {backup} --yes",
                        {**environ, "CARABASE_STAGING_DATABASE_URL": pg.url(target)})

    assert restore.returncode == 0, restore.stderr
    assert snapshot(pg, target) == snapshot(pg, source_db)
