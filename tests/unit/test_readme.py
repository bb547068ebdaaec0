"""The README as someone who just ran scripts/setup.sh reads it: its commands must work."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPO, clean_environ

README = (REPO / "README.md").read_text()


def section(title: str) -> str:
    """The text of a `## title` section, up to the next `## ` heading."""
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start:end]


def shell_blocks(text: str) -> list[str]:
    return re.findall(r"```sh\n(.*?)```", text, flags=re.S)


@pytest.mark.parametrize("title", ["Quick start", "Commands"])
def test_section_says_how_to_reach_invoke_before_its_first_invoke_command(title):
    text = section(title)
    assert ". .venv/bin/activate" in text[:text.index("invoke backup.")]


@pytest.mark.skipif(not (REPO / ".venv" / "bin" / "activate").exists(),
                    reason="needs the .venv scripts/setup.sh makes")
def test_quick_start_commands_run_as_written_in_a_shell_without_invoke_on_path(tmp_path):
    [commands] = [block for block in shell_blocks(section("Quick start"))
                  if "invoke backup.status" in block]
    environ = clean_environ(tmp_path, tmp_path / "backups")
    venv_bin = str(Path(sys.executable).parent)
    environ["PATH"] = os.pathsep.join(entry for entry in environ["PATH"].split(os.pathsep)
                                      if entry not in (venv_bin, str(REPO / ".venv" / "bin")))
    environ.pop("VIRTUAL_ENV", None)

    result = subprocess.run(["bash", "-c", commands], cwd=REPO, env=environ,
                            capture_output=True, text=True, timeout=60)

    assert "command not found" not in result.stderr
    assert result.returncode == 2  # a fresh machine: no backups yet
    assert result.stdout.startswith("[dev    ] FAIL no backups (take one: invoke backup.dev)")
