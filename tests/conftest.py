"""Fixtures shared by every test: a scratch HOME and backup directory."""
from __future__ import annotations

import pytest

from tests.support import clean_environ


@pytest.fixture
def home(tmp_path):
    path = tmp_path / "home"
    path.mkdir()
    return path


@pytest.fixture
def backup_dir(tmp_path):
    return tmp_path / "backups"


@pytest.fixture
def environ(home, backup_dir):
    """A subprocess environment with no key, no Carabase setting, HOME in tmp."""
    return clean_environ(home, backup_dir)
