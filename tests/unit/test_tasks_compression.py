"""Which compressor the backup runs, how restore checks the gzip stream, and when a
progress stage joins the pipeline. MockContext shows the commands; the end-to-end tests
(tests/e2e/test_performance_paths.py) run them for real."""
from __future__ import annotations

import os
import sys

import pytest
from invoke import Exit, MockContext, Result

import tasks
from helpers.errors import UserError
from tests.support import pipeline_on_lifeline


@pytest.fixture
def bin_dir(tmp_path, monkeypatch):
    """PATH is just this directory: it holds exactly the programs a test puts there."""
    directory = tmp_path / "bin"
    directory.mkdir()
    monkeypatch.setenv("PATH", str(directory))
    monkeypatch.delenv("CARABASE_COMPRESSOR", raising=False)
    monkeypatch.delenv("CARABASE_COMPRESS_THREADS", raising=False)
    monkeypatch.delenv("CARABASE_COMPRESSION", raising=False)
    return directory


@pytest.fixture
def pigz_installed(bin_dir):
    pigz = bin_dir / "pigz"
    pigz.write_text("#!/bin/sh\n")
    pigz.chmod(0o755)
    return pigz


def test_pigz_on_path_compresses_at_level_9_on_every_core(pigz_installed):
    assert tasks.compressor() == f"pigz -9 -p {os.cpu_count()}"


def test_without_pigz_gzip_compresses(bin_dir):
    assert tasks.compressor() == "gzip -9"


def test_gzip_can_be_forced_when_pigz_is_installed(pigz_installed, monkeypatch):
    monkeypatch.setenv("CARABASE_COMPRESSOR", "gzip")

    assert tasks.compressor() == "gzip -9"


def test_pigz_requested_but_missing_is_a_clear_error(bin_dir, monkeypatch):
    monkeypatch.setenv("CARABASE_COMPRESSOR", "pigz")

    with pytest.raises(UserError, match="CARABASE_COMPRESSOR=pigz but pigz is not on PATH"):
        tasks.compressor()


def test_unknown_compressor_is_refused(pigz_installed, monkeypatch):
    monkeypatch.setenv("CARABASE_COMPRESSOR", "bzip2")

    with pytest.raises(UserError, match="must be pigz or gzip, not 'bzip2'"):
        tasks.compressor()


def test_thread_count_is_passed_to_pigz(pigz_installed, monkeypatch):
    monkeypatch.setenv("CARABASE_COMPRESS_THREADS", "3")

    assert tasks.compressor() == "pigz -9 -p 3"


@pytest.mark.parametrize("threads", ["0", "-2", "two", "1.5", "4 cores", "²", "٣"])
@pytest.mark.parametrize("forced", ["", "gzip"])
def test_bad_thread_count_is_refused_even_for_gzip(pigz_installed, monkeypatch, threads,
                                                   forced):
    monkeypatch.setenv("CARABASE_COMPRESS_THREADS", threads)
    monkeypatch.setenv("CARABASE_COMPRESSOR", forced)

    with pytest.raises(UserError, match=f"CARABASE_COMPRESS_THREADS must be .* not '{threads}'"):
        tasks.compressor()


def test_fast_profile_compresses_with_isal_at_level_2(bin_dir, monkeypatch):
    monkeypatch.setenv("CARABASE_COMPRESSION", "fast")

    assert tasks.compressor() == f"{sys.executable} -m isal.igzip -2 -n"


@pytest.mark.parametrize("program, stage", [("pigz", "pigz -1 -p 2"), ("gzip", "gzip -1")])
def test_fast_profile_without_isal_falls_back_to_level_1(pigz_installed, monkeypatch,
                                                         program, stage):
    monkeypatch.setenv("CARABASE_COMPRESSION", "fast")
    monkeypatch.setenv("CARABASE_COMPRESSOR", program)
    monkeypatch.setenv("CARABASE_COMPRESS_THREADS", "2")
    monkeypatch.setattr(tasks, "isal_loads", lambda: False)

    assert tasks.compressor() == stage


def test_unknown_compression_profile_is_refused(bin_dir, monkeypatch):
    monkeypatch.setenv("CARABASE_COMPRESSION", "max")

    with pytest.raises(UserError, match="CARABASE_COMPRESSION must be best or fast, not 'max'"):
        tasks.compressor()


# --- progress ---------------------------------------------------------------------------


def test_pipeline_leaves_out_absent_stages():
    assert tasks.pipeline("a", None, "b") == "set -o pipefail; a | b"


def test_no_progress_stage_when_nobody_watches(monkeypatch):
    monkeypatch.setattr(tasks, "watching_terminal", lambda: None)

    assert tasks.progress_stage("backup dev: wrote") is None


def test_progress_stage_draws_on_the_watching_terminal(monkeypatch):
    monkeypatch.setattr(tasks, "watching_terminal", lambda: "/dev/pts/7")

    stage = tasks.progress_stage("restore into dev: read", total=1234)

    assert stage.endswith("-m helpers.progress --label 'restore into dev: read'"
                          " --total 1234 --to /dev/pts/7")


@pytest.mark.parametrize("watched", [True, False])
def test_backup_counts_its_output_only_when_watched(monkeypatch, tmp_path, bin_dir, watched):
    monkeypatch.setenv("CARABASE_BACKUP_DIR", str(tmp_path / "backups"))
    monkeypatch.setenv("HOST_MASTER_KEY", "ab" * 32)
    monkeypatch.setattr(tasks, "watching_terminal", lambda: "/dev/pts/7" if watched else None)
    context = MockContext(run=Result(exited=0), repeat=True)

    tasks.run_backup(context, "dev")

    (guarded,), _ = context.run.call_args
    command = pipeline_on_lifeline(guarded)
    stages = command.split(" | ")
    assert stages[0].startswith("set -o pipefail; pg_dump ")
    assert stages[1] == "gzip -9"
    if watched:  # it counts the compressed bytes, the file as it grows
        assert "-m helpers.progress --label 'backup dev: wrote' --to /dev/pts/7" in stages[2]
        assert "-m helpers.crypto encrypt" in stages[3]
    else:
        assert "helpers.progress" not in command and "helpers.crypto encrypt" in stages[2]


def test_backup_with_a_bad_compressor_setting_stops_before_running_anything(
        monkeypatch, tmp_path, bin_dir):
    monkeypatch.setenv("CARABASE_BACKUP_DIR", str(tmp_path / "backups"))
    monkeypatch.setenv("HOST_MASTER_KEY", "ab" * 32)
    monkeypatch.setenv("CARABASE_COMPRESSOR", "pigz")
    context = MockContext()  # any run() call would raise

    with pytest.raises(Exit, match="pigz is not on PATH"):
        tasks.backup_dev(context)

    assert not (tmp_path / "backups").exists()
