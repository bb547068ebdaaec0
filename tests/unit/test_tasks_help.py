"""What `invoke --list` and `invoke --help <task>` show a newcomer: whole sentences, and
every option under its own flags."""
from __future__ import annotations

import functools
import json
import re
import subprocess
import sys

import pytest

from tests.support import REPO

import tasks


# Runs invoke's Program (what the `invoke` script runs) once per command, all in one
# Python started for the purpose: fifteen `invoke` processes took 12 s, and loading
# tasks.py again inside the test process would replace the module other tests use.
OUTPUTS_SCRIPT = """
import contextlib, io, json, sys
from invoke import Program
outputs = {}
for args in json.loads(sys.argv[2]):
    with contextlib.redirect_stdout(io.StringIO()) as out:
        Program().run(["invoke", "--search-root", sys.argv[1], *args], exit=False)
    outputs["\\0".join(args)] = out.getvalue()
print(json.dumps(outputs))
"""


@functools.cache
def all_outputs() -> dict[str, str]:
    commands = [["--list"], *(["--help", name] for name in TASK_NAMES)]
    result = subprocess.run([sys.executable, "-c", OUTPUTS_SCRIPT, str(REPO),
                             json.dumps(commands)], capture_output=True, text=True,
                            timeout=120, check=True, stdin=subprocess.DEVNULL)
    return json.loads(result.stdout)


def invoke_output(*args: str) -> str:
    """What `invoke --search-root REPO <args>` prints."""
    return all_outputs()["\0".join(args)]


def listed_summaries() -> dict[str, str]:
    """Each task of `invoke --list` with its summary, wrapped lines joined again."""
    summaries: dict[str, str] = {}
    name = None
    for line in invoke_output("--list").splitlines()[2:]:
        if match := re.match(r"  (\S+)\s+(.*)", line):
            name, text = match.groups()
            summaries[name] = text
        elif line.strip() and name:
            joint = "" if summaries[name].endswith("-") else " "
            summaries[name] += joint + line.strip()
    return summaries


TASK_NAMES = sorted(f"backup.{name}" for name in tasks.backup_tasks.tasks)


def test_invoke_list_shows_every_task():
    assert sorted(listed_summaries()) == TASK_NAMES


@pytest.mark.parametrize("name", TASK_NAMES)
def test_invoke_list_shows_a_whole_sentence_for_each_task(name):
    summary = listed_summaries()[name]

    assert summary.endswith("."), summary
    body = tasks.backup_tasks.tasks[name.removeprefix("backup.")].body
    assert summary == body.__doc__.strip().splitlines()[0]


@pytest.mark.parametrize("name", TASK_NAMES)
def test_task_help_gives_each_option_a_letter_and_its_long_name(name):
    options = invoke_output("--help", name).split("Options:", 1)[-1]
    flags = re.findall(r"^  (-\S.*?)(?:\s{2,}|$)", options, flags=re.M)
    assert flags or options.strip() == "none"

    for flag in flags:
        assert re.fullmatch(r"(-[a-z](?: \S+)?, )?--[a-z][a-z-]*(=\S+)?", flag), flag


def test_restore_help_shows_in_place_under_its_own_short_flag():
    options = invoke_output("--help", "backup.restore").split("Options:", 1)[1]

    assert "  -p, --in-place " in options and "--, " not in options
